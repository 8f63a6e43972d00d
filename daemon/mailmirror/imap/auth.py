"""Logging in: which mechanism (``auth: auto`` picks the strongest the server offers and the credentials
allow), admin logins on behalf of a user, SCRAM, and OAuth2 with tokens mailmirror refreshes itself.

Mechanisms, strongest first, for a password: SCRAM-SHA-256, SCRAM-SHA-1 (the password never crosses the
wire, and the server proves it knows it too; Dovecot offers them when its passdb holds the password in
plain text or as a SCRAM hash), SASL PLAIN, the IMAP LOGIN command. For OAuth2: OAUTHBEARER (RFC 7628),
else XOAUTH2. An admin logging in on behalf of a user uses SASL PLAIN with an authorization identity,
the only mechanism here that carries one, unless ``authuser_separator`` asks for Dovecot's
``user*admin`` login name (sent with PLAIN or LOGIN: Dovecot 2.3 refuses it over SCRAM).

Every refusal becomes an :class:`AuthenticationFailure` naming the account, the server, the user, the
mechanism and the server's answer; for OAuth2 also which step failed (token endpoint, token refused,
mailbox refused). No secret ever appears in one.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

import scramp
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailmirror.errors import AuthenticationFailure, ConfigError, ConnectionFailure
from mailmirror.imap import oauth2
from mailmirror.imap.channel import server_text
from mailmirror.imap.wire import LeanIMAPClient

if TYPE_CHECKING:
    from mailmirror.config.account import Account

log = logging.getLogger(__name__)

#: ``auth:`` values and the mechanism each names (``login`` is the IMAP LOGIN command).
MECHANISMS = {
    "login": "LOGIN",
    "plain": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-1": "SCRAM-SHA-1",
    "xoauth2": "XOAUTH2",
    "oauthbearer": "OAUTHBEARER",
}
PASSWORD_PREFERENCE = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
OAUTH2_MECHANISMS = frozenset({"XOAUTH2", "OAUTHBEARER"})


class ServerProofFailed(AuthenticationFailure):
    """The server's SCRAM signature was wrong: it does not know the password (not the server meant?)."""


def uses_oauth2(account: Account) -> bool:
    return account.oauth2 is not None or account.oauth2_token is not None


def login_name(account: Account) -> str:
    """The name sent to the server: ``user*admin`` with authuser_separator, else the user."""
    if account.authuser and account.authuser_separator:
        return f"{account.username}{account.authuser_separator}{account.authuser}"
    return account.username


def offered(capabilities: frozenset[str]) -> frozenset[str]:
    """The SASL mechanisms announced before login (``AUTH=...``)."""
    return frozenset(c[5:].upper() for c in capabilities if c.upper().startswith("AUTH="))


def choose_mechanism(account: Account, capabilities: frozenset[str], password: str | None = None) -> str:
    """The mechanism to log in with: the configured one, or for ``auth: auto`` the strongest that fits."""
    if account.auth != "auto":
        return MECHANISMS[account.auth]
    sasl = offered(capabilities)
    if uses_oauth2(account):
        return "OAUTHBEARER" if "OAUTHBEARER" in sasl or "XOAUTH2" not in sasl else "XOAUTH2"
    if account.authuser:
        # The authorization identity needs SASL PLAIN; and Dovecot 2.3 refuses user*admin over SCRAM
        # ([AUTHORIZATIONFAILED]), so the separator form uses PLAIN too, or LOGIN where PLAIN is not offered.
        return "PLAIN" if "PLAIN" in sasl or not account.authuser_separator else "LOGIN"
    for mechanism in PASSWORD_PREFERENCE:
        if mechanism in sasl:
            return mechanism
    if password is not None and not password.isascii():
        return "PLAIN"  # LOGIN carries only ASCII; PLAIN carries UTF-8
    return "LOGIN"


def login(client: IMAPClient, account_name: str, account: Account, what: str) -> str:
    """Log ``client`` in as ``account``; return the mechanism used."""
    capabilities = frozenset(server_text(c).upper() for c in client.capabilities())
    if uses_oauth2(account):
        mechanism = choose_mechanism(account, capabilities)
        if mechanism not in OAUTH2_MECHANISMS:
            raise ConfigError(f"{what}: auth {account.auth} cannot log in with an OAuth2 token; use auth: auto")
        _oauth2_login(client, account, what, mechanism)
        return mechanism
    if account.password is None:
        raise ConfigError(f"{what}: no password configured")
    password = account.password.reveal()
    mechanism = choose_mechanism(account, capabilities, password)
    try:
        _password_login_translated(client, account, mechanism, password, what)
    except AuthenticationFailure as refusal:
        fallback = _fallback_after_scram(account, mechanism, capabilities, password)
        if fallback is None or isinstance(refusal, ServerProofFailed):
            raise  # never hand the password to a server that failed SCRAM's proof
        # Dovecot offers SCRAM to every user but can check it only against a password stored in plain text
        # or as a SCRAM hash; for a crypt-style hash it answers AUTHENTICATIONFAILED. Try the next best once.
        try:
            _password_login_translated(client, account, fallback, password, what)
        except AuthenticationFailure as second:
            raise AuthenticationFailure(f"{second.message} (after {mechanism} was refused as well)") from None
        log.info(
            "%s: %s refused, %s accepted: the server offers SCRAM but cannot check it for this user "
            "(its password is stored as a hash SCRAM cannot use); auth: %s skips the try (%s)",
            what,
            mechanism,
            fallback,
            fallback.lower(),
            refusal.message.rsplit(": ", 1)[-1],
        )
        return fallback
    return mechanism


_CUT_CONNECTION = re.compile(r"(^|=> )socket error", re.IGNORECASE)


def _fallback_after_scram(account: Account, mechanism: str, capabilities: frozenset[str], password: str) -> str | None:
    if account.auth != "auto" or not mechanism.startswith("SCRAM-"):
        return None
    return "PLAIN" if "PLAIN" in offered(capabilities) or not password.isascii() else "LOGIN"


def _password_login_translated(client: IMAPClient, account: Account, mechanism: str, password: str, what: str) -> None:
    who = _who(account)
    try:
        _password_login(client, account, mechanism, password, what)
    except LoginError as error:
        if _CUT_CONNECTION.search(server_text(error)):  # imapclient wraps a cut connection into LoginError too
            raise ConnectionFailure(
                f"{what}: connection lost during login ({mechanism}): {server_text(error)}"
            ) from None
        raise _refused(account, what, mechanism, server_text(error)) from None
    except (IMAPClientAbortError, OSError) as error:
        raise ConnectionFailure(f"{what}: connection lost during login ({mechanism}): {error}") from None
    except IMAPClientError as error:
        raise _refused(account, what, mechanism, server_text(error)) from None
    except scramp.ScramException as error:  # the server failed to prove it knows the password
        raise ServerProofFailed(
            f"{what}: login as {who} with {mechanism} failed: the server's SCRAM answer did not check out "
            f"({error.__class__.__name__}): is this the right server?"
        ) from None
    except (UnicodeError, ValueError, TypeError) as error:  # never let such an error carry the secret
        raise AuthenticationFailure(f"{what}: login as {who} with {mechanism} failed: {type(error).__name__}") from None


def _password_login(client: IMAPClient, account: Account, mechanism: str, password: str, what: str) -> None:
    name = login_name(account)
    if mechanism == "LOGIN":
        _login_command(client, name, password)
    elif mechanism == "PLAIN":
        if account.authuser and not account.authuser_separator:
            _plain(client, account.authuser, password, authorization=account.username)
        else:
            _plain(client, name, password)
    elif mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        client.sasl_login(mechanism, _ScramExchange(mechanism, name, password))
    else:
        raise ConfigError(f"{what}: auth {mechanism.lower()} needs an OAuth2 token (oauth2 or oauth2_token)")


def _login_command(client: IMAPClient, name: str, password: str) -> None:
    """The IMAP LOGIN command; SASL PLAIN instead where LOGIN cannot carry the name or the password
    (LOGIN carries only ASCII, PLAIN carries UTF-8)."""
    if _fits_login(password) and _fits_login(name):
        client.login(_quoted(name), password)
    else:
        _plain(client, name, password)


def _plain(client: IMAPClient, authentication: str, password: str, authorization: str = "") -> None:
    """SASL PLAIN: in one round trip where the server takes an initial response (SASL-IR), else two."""
    if isinstance(client, LeanIMAPClient) and client.has_capability("SASL-IR"):
        client.authenticate_plain_initial(authentication, password, authorization)
    else:
        client.plain_login(authentication, password, authorization_identity=authorization or None)


def _fits_login(text: str) -> bool:
    """Whether LOGIN can carry the text as a quoted string (ASCII, no line breaks); else SASL PLAIN."""
    return text.isascii() and not any(character in text for character in "\r\n\0")


def _quoted(text: str) -> str:
    """An IMAP quoted string (imaplib sends LOGIN's user name as it is: a space or a quote broke it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _ScramExchange:
    """SCRAM (RFC 5802 / 7677) steps for imapclient's sasl_login, spoken by scramp."""

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        self._client = scramp.ScramClient([mechanism], username, password)
        self._step = 0

    def __call__(self, challenge: bytes) -> bytes:
        self._step += 1
        if self._step == 1:
            first: str = self._client.get_client_first()
            return first.encode()
        if self._step == 2:
            self._client.set_server_first(challenge.decode())
            final: str = self._client.get_client_final()
            return final.encode()
        self._client.set_server_final(challenge.decode())  # raises unless the server proved itself
        return b""


def _unrepr(answer: str) -> str:
    """imapclient words some refusals as a bytes repr (b'[AUTHENTICATIONFAILED] ...'): show the text."""
    if len(answer) >= 3 and answer[0] == "b" and answer[1] in "'\"" and answer[-1] == answer[1]:
        return answer[2:-1]
    return answer


def _who(account: Account) -> str:
    return f"'{account.username}'" + (f" (as admin '{account.authuser}')" if account.authuser else "")


def _refused(account: Account, what: str, mechanism: str, answer: str) -> AuthenticationFailure:
    who = _who(account)
    answer = _unrepr(answer.strip())
    if "AUTHORIZATIONFAILED" in answer.upper() and account.authuser:
        return AuthenticationFailure(
            f"{what}: admin '{account.authuser}' may not log in as '{account.username}' ({mechanism}): the "
            f"server answered {answer}. Check that user '{account.username}' exists on this server and that "
            f"'{account.authuser}' is a master/admin user allowed to act for it"
        )
    return AuthenticationFailure(f"{what}: login as {who} with {mechanism} refused: {answer}")


# -------------------------------------------------------------------------------------------------- OAuth2


class _OAuth2Exchange:
    """XOAUTH2 / OAUTHBEARER steps: the token, then, when the server refuses it with a JSON challenge, the
    dummy answer the mechanism wants (empty for XOAUTH2, ^A for OAUTHBEARER) so that the server ends the
    exchange with NO; the challenge is kept to say why."""

    def __init__(self, mechanism: str, username: str, token: str) -> None:
        if mechanism == "XOAUTH2":
            self._first = f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
            self._dummy = b""
        else:
            self._first = f"n,a={_gs2_name(username)},\x01auth=Bearer {token}\x01\x01".encode()
            self._dummy = b"\x01"
        self.challenge: dict[str, object] | None = None
        self._step = 0

    def __call__(self, challenge: bytes) -> bytes:
        self._step += 1
        if self._step == 1:
            return self._first
        try:
            parsed = json.loads(challenge.decode("utf-8", "replace"))
        except ValueError:
            parsed = {}
        # Keep only the documented fields: an odd server must not make us log something else.
        self.challenge = (
            {k: parsed[k] for k in ("status", "schemes", "scope") if k in parsed} if isinstance(parsed, dict) else {}
        )
        return self._dummy


def _gs2_name(username: str) -> str:
    return username.replace("=", "=3D").replace(",", "=2C")


def _oauth2_login(client: IMAPClient, account: Account, what: str, mechanism: str) -> None:
    who = f"'{account.username}'"
    refreshed = False
    while True:
        token = _access_token(account)
        exchange = _OAuth2Exchange(mechanism, account.username, token)
        try:
            client.sasl_login(mechanism, exchange)
            return
        except (IMAPClientAbortError, OSError) as error:
            raise ConnectionFailure(f"{what}: connection lost during login ({mechanism}): {error}") from None
        except IMAPClientError as error:
            answer = server_text(error).strip()
        if exchange.challenge is None:
            raise AuthenticationFailure(
                f"{what}: login as {who} with {mechanism}: the server refused the mailbox login (the token "
                f"was not the problem): {answer}"
            )
        if account.oauth2 is not None and not refreshed:
            # The cached token may have been revoked or have expired early: get a new one, once.
            log.info("account '%s': OAuth2 access token refused; getting a new one", account_name(account))
            oauth2.TOKENS.invalidate(account.oauth2, token)
            refreshed = True
            continue
        status = json.dumps(exchange.challenge, sort_keys=True)
        step = (
            "even a freshly issued access token"
            if refreshed
            else ("the access token" if account.oauth2 is not None else "the access token from oauth2_token")
        )
        raise AuthenticationFailure(
            f"{what}: login as {who} with {mechanism} refused: the server rejected {step} as expired or "
            f"invalid ({status}): {answer}. Check the token's user (it must be {account.username}), "
            "scope and audience"
        )


def account_name(account: Account) -> str:
    return account.oauth2.account if account.oauth2 is not None else account.username


def _access_token(account: Account) -> str:
    if account.oauth2 is not None:
        return oauth2.TOKENS.access_token(account.oauth2)
    assert account.oauth2_token is not None
    return account.oauth2_token.reveal()
