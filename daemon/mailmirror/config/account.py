"""An IMAP account of the config (``accounts.NAME``): server, TLS, login mechanism and credentials, limits.

Credentials are secret references (:mod:`mailmirror.config.secrets`), never values; an OAuth2 login names
either a client mailmirror gets tokens from (:mod:`mailmirror.config.oauth2_client`) or a ready token.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mailmirror.config.mailboxes import MailboxIdentity, mailbox_identity
from mailmirror.config.oauth2_client import OAuth2Client
from mailmirror.config.providers import ProviderName
from mailmirror.config.secrets import Secret
from mailmirror.config.section import Section, field_error
from mailmirror.config.units import Duration, Size, at_most
from mailmirror.config.values import CAFile

OAUTH_MECHANISMS = ("xoauth2", "oauthbearer")
SECRET_SHAPES = "{env: NAME}, {file: PATH} or {command: [argv, ...]}"


class Account(Section):
    """An IMAP account: where to connect and how to log in. Referenced by name from pairs."""

    provider: ProviderName | None = Field(
        default=None,
        description=(
            "A preset of the provider's known limits and folder quirks (gmail, office365, generic), applied as "
            "ordinary defaults: host, max_connections, rate limits, and for pairs using the account folders not "
            "to copy, label duplicates, message size limit, throttling retries. What the config sets wins; "
            "`mailmirror plan` shows each preset value; docs/providers.md lists them with their sources."
        ),
    )
    host: str = Field(
        min_length=1, description="IMAP server host name or IP address (with provider: gmail/office365, optional)."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="TCP port; default 993 with tls: implicit, 143 otherwise (see effective_port).",
    )
    tls: Literal["implicit", "starttls", "none"] = Field(
        default="implicit",
        description=(
            "implicit: TLS from the first byte (IMAPS); starttls: plain connection upgraded with STARTTLS, "
            "which must succeed (never silently skipped); none: no encryption at all."
        ),
    )
    tls_verify: bool = Field(
        default=True,
        description="Verify the server certificate and host name. Turn off only for a known lab server.",
    )
    tls_ca: CAFile | None = Field(
        default=None,
        description="PEM file of the CA(s) to trust instead of the system store (must exist).",
    )
    username: str = Field(min_length=1, description="The mailbox user to log in as (whose mail is synced).")
    password: Secret | None = Field(
        default=None,
        description=(
            f"Password: a secret reference, {SECRET_SHAPES}, never inline. With authuser, the admin's "
            "password. Required unless auth is xoauth2/oauthbearer."
        ),
    )
    authuser: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Admin/master user logging in on behalf of username (imapsync --authuser): with auth: plain the "
            "authentication identity, username being the authorization identity."
        ),
    )
    authuser_separator: str | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description=(
            "With authuser: log in as username + this character + authuser (Dovecot's auth_master_user_separator, "
            "e.g. '*': 'alice*admin') instead of SASL PLAIN with an authorization identity."
        ),
    )
    auth: Literal["auto", "login", "plain", "scram-sha-256", "scram-sha-1", "xoauth2", "oauthbearer"] = Field(
        default="auto",
        description=(
            "Login mechanism. auto: the strongest the server offers and the credentials allow (SCRAM-SHA-256, "
            "SCRAM-SHA-1, PLAIN, LOGIN for a password; OAUTHBEARER, XOAUTH2 for OAuth2; PLAIN for authuser); "
            "`mailmirror check` shows the choice. Or one of login (the LOGIN command), plain, scram-sha-256, "
            "scram-sha-1, xoauth2, oauthbearer."
        ),
    )
    oauth2: OAuth2Client | None = Field(
        default=None,
        description=(
            "OAuth2 client mailmirror gets access tokens from itself (refreshed before expiry; rotated refresh "
            "tokens stored in token_file). Instead of password or oauth2_token."
        ),
    )
    oauth2_token: Secret | None = Field(
        default=None,
        description=(
            f"A ready OAuth2 access token: a secret reference, {SECRET_SHAPES}, typically a command printing a "
            "fresh token. Prefer oauth2, which refreshes tokens itself."
        ),
    )
    timeout: Annotated[Duration, at_most(timedelta(hours=1))] = Field(
        default=timedelta(seconds=60),
        json_schema_extra={"default": "60s"},
        description="Network timeout for connecting and for each server response.",
    )
    max_connections: int = Field(
        default=4,
        ge=1,
        le=10000,
        description=(
            "Most simultaneous connections to this account (its mailbox), across all pairs using it; "
            "daemon.max_connections_per_server caps a server's accounts together."
        ),
    )
    max_messages_per_second: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description=(
            "Rate limit: messages fetched from / appended to this account per second, over all pairs and "
            "connections (a token bucket; for providers that throttle). null: no limit."
        ),
    )
    max_bytes_per_second: Size | None = Field(
        default=None,
        ge=1024,
        description="Rate limit: message bytes fetched from / appended to this account per second. null: no limit.",
    )

    @property
    def effective_port(self) -> int:
        """``port`` if set, else 993 for implicit TLS and 143 for STARTTLS or no TLS."""
        if self.port is not None:
            return self.port
        return 993 if self.tls == "implicit" else 143

    @property
    def identity(self) -> MailboxIdentity:
        """Which mailbox this account is, however its host and port are spelled (mailboxes.py)."""
        return mailbox_identity(self.host, self.effective_port, self.username)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: Any) -> Any:
        if not value:
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> Account:
        oauth_sources = [name for name in ("oauth2", "oauth2_token") if getattr(self, name) is not None]
        if len(oauth_sources) > 1:
            raise field_error("oauth2_token", "give either oauth2 (mailmirror gets tokens itself) or oauth2_token")
        if self.auth in OAUTH_MECHANISMS or (self.auth == "auto" and oauth_sources):
            if not oauth_sources:
                raise field_error(
                    "oauth2_token",
                    f"required with auth: {self.auth} (a secret: {SECRET_SHAPES}), or oauth2 (an OAuth2 client)",
                )
            if self.password is not None:
                raise field_error("password", f"not used with {oauth_sources[0]}, which logs in with OAuth2 tokens")
            if self.authuser is not None:
                raise field_error("authuser", "not used with OAuth2: the token names the user")
        else:
            if self.password is None and self.auth == "auto":
                raise field_error("password", f"required (a secret: {SECRET_SHAPES}), or oauth2 for OAuth2 logins")
            if self.password is None:
                raise field_error("password", f"required with auth: {self.auth} (a secret: {SECRET_SHAPES})")
            if oauth_sources:
                raise field_error(oauth_sources[0], "only used with auth: auto, xoauth2 or oauthbearer")
        if self.authuser_separator is not None and self.authuser is None:
            raise field_error("authuser_separator", "only used with authuser")
        if self.tls == "none" and self.tls_ca is not None:
            raise field_error("tls_ca", "has no effect with tls: none")
        return self
