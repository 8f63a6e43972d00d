"""The OAuth2 client of an account (``accounts.NAME.oauth2``): the registration mailmirror gets access tokens
with, as the config describes it: provider endpoints, client id, secret references, token file, scope.

Only the shape lives here; getting, refreshing and storing tokens (HTTP, the device flow, the token cache)
is the IMAP layer's :mod:`mailmirror.imap.oauth2`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mailmirror.config.secrets import Secret
from mailmirror.config.units import ConfigPath, Duration


@dataclass(frozen=True)
class OAuth2Endpoints:
    """What ``oauth2.provider`` fills in (the IMAP provider presets are :mod:`mailmirror.config.providers`)."""

    token_url: str
    device_authorization_url: str
    scope: str


#: What ``provider:`` fills in. Microsoft's URLs take the tenant (``common`` unless ``tenant:`` says).
OAUTH2_PROVIDERS: dict[str, OAuth2Endpoints] = {
    "google": OAuth2Endpoints(
        token_url="https://oauth2.googleapis.com/token",
        device_authorization_url="https://oauth2.googleapis.com/device/code",
        scope="https://mail.google.com/",
    ),
    "microsoft": OAuth2Endpoints(
        token_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        device_authorization_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        scope="https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    ),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url  # a local token broker or test issuer: the token never leaves the machine
    raise ValueError("must be an https:// URL (http:// only for a loopback address: 127.0.0.1, ::1, localhost)")


class OAuth2Client(BaseModel):
    """An OAuth2 client registration that mailmirror uses to get access tokens for one account itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, coerce_numbers_to_str=True)

    provider: Literal["google", "microsoft"] | None = Field(
        default=None,
        description=(
            "Fills in token_url, device_authorization_url and scope for Google (Gmail, Workspace) or Microsoft "
            "(Exchange Online / Microsoft 365). Anything set explicitly wins."
        ),
    )
    tenant: str = Field(
        default="common",
        pattern=r"^[A-Za-z0-9.-]+$",
        description="provider: microsoft only: the Entra ID tenant (directory ID or domain), organizations or common.",
    )
    token_url: str | None = Field(
        default=None,
        description="Token endpoint (https://; http:// only for a loopback address). Required without provider.",
    )
    device_authorization_url: str | None = Field(
        default=None,
        description="Device authorization endpoint (RFC 8628) used by `mailmirror oauth2 authorize`.",
    )
    client_id: str = Field(min_length=1, description="The client (application) ID of the registration.")
    client_secret: Secret | None = Field(
        default=None,
        description="The client secret, as a secret reference; omit for a public client (e.g. Microsoft device flow).",
    )
    refresh_token: Secret | None = Field(
        default=None,
        description=(
            "A refresh token, as a secret reference. Optional: `mailmirror oauth2 authorize ACCOUNT` stores one in "
            "token_file, which then wins (also when the provider rotates it), until this value changes."
        ),
    )
    scope: str | None = Field(
        default=None,
        description="Space-separated scopes to ask for (provider's IMAP scope by default; none without provider).",
    )
    token_file: ConfigPath | None = Field(
        default=None,
        description=(
            "File where mailmirror keeps the refresh token it obtained or received rotated (mode 0600). Default: "
            "oauth2/ACCOUNT.json next to the state database."
        ),
    )
    timeout: Duration = Field(
        default=timedelta(seconds=30),
        json_schema_extra={"default": "30s"},
        description="How long to wait for the token endpoint.",
    )

    _account: str = PrivateAttr(default="?")
    _default_token_file: Path | None = PrivateAttr(default=None)

    @field_validator("token_url", "device_authorization_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _check_endpoint(value)

    @model_validator(mode="after")
    def _needs_endpoint(self) -> OAuth2Client:
        if self.provider is None and self.token_url is None:
            raise ValueError("token_url is required unless provider (google or microsoft) is given")
        return self

    def attach(self, account: str, default_token_file: Path) -> None:
        """Called by the config loader: the account's name (for messages) and the default token file."""
        self._account = account
        self._default_token_file = default_token_file
        for name in ("client_secret", "refresh_token"):
            secret = getattr(self, name)
            if isinstance(secret, Secret):
                secret.attach_label(f"accounts.{account}.oauth2.{name}")

    @property
    def account(self) -> str:
        return self._account

    def _preset(self, field: str) -> str | None:
        if self.provider is None:
            return None
        value: str = getattr(OAUTH2_PROVIDERS[self.provider], field)
        return value.replace("{tenant}", self.tenant)

    @property
    def effective_token_url(self) -> str:
        url = self.token_url or self._preset("token_url")
        assert url is not None  # checked by _needs_endpoint
        return url

    @property
    def effective_device_url(self) -> str | None:
        return self.device_authorization_url or self._preset("device_authorization_url")

    @property
    def effective_scope(self) -> str | None:
        return self.scope if self.scope is not None else self._preset("scope")

    @property
    def effective_token_file(self) -> Path:
        if self.token_file is not None:
            return self.token_file
        if self._default_token_file is not None:
            return self._default_token_file
        return Path("oauth2") / f"{self._account}.json"
