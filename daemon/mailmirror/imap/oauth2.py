"""OAuth2 access tokens obtained by mailmirror itself: an account names an OAuth2 client, not a token.

The protocol (refresh-token grant, device authorization grant RFC 8628, client authentication, error
answers) is spoken by Authlib's requests client; this module adds what a mail service needs around it:

* access tokens are cached in memory per account, shared by every connection of the process, and
  refreshed before they expire (and once more when a server refuses one, see :func:`invalidate`);
* a refresh token that the provider rotates, or that ``mailmirror oauth2 authorize`` obtained, is written
  to a token file mailmirror owns (mode 0600, in a 0700 directory next to the state database) and wins
  over the ``refresh_token`` of the config from then on, until that config value changes;
* no token, client secret or token-endpoint answer body ever reaches a log line or an error message:
  errors carry the OAuth2 error code (``invalid_grant``), its description and the endpoint URL only.

The client registration (endpoints, client id, secret references, token file) is a config model:
:class:`~mailmirror.config.oauth2_client.OAuth2Client`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailmirror.config.oauth2_client import OAuth2Client
from mailmirror.errors import AuthenticationFailure, ConfigError, ConnectionFailure

if TYPE_CHECKING:
    from authlib.integrations.requests_client import OAuth2Session

log = logging.getLogger(__name__)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Refresh an access token when less than this share of its lifetime is left (at most REFRESH_AHEAD_MAX).
REFRESH_AHEAD_SHARE = 0.25
REFRESH_AHEAD_MAX_SECONDS = 300.0
#: Lifetime assumed when the token endpoint does not say (``expires_in`` missing).
DEFAULT_LIFETIME_SECONDS = 3600.0


# ------------------------------------------------------------------------------------------ token file


def _fingerprint(value: str) -> str:
    """Tells whether the config's refresh token changed since the token file was written (not the token)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _read_token_file(client: OAuth2Client) -> dict[str, Any] | None:
    path = client.effective_token_file
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not valid JSON"
        raise ConfigError(f"account '{client.account}': OAuth2 token file {path} cannot be read: {reason}") from None
    if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
        raise ConfigError(f"account '{client.account}': OAuth2 token file {path} holds no refresh token")
    return data


def store_refresh_token(client: OAuth2Client, refresh_token: str) -> Path:
    """Write the refresh token to the account's token file: 0600 from the first byte, replaced atomically."""
    path = client.effective_token_file
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replaces = _config_refresh_token_fingerprint(client)
    record = {"client_id": client.client_id, "token_url": client.effective_token_url, "refresh_token": refresh_token}
    if replaces is not None:
        record["replaces"] = replaces
    descriptor, temporary = tempfile.mkstemp(prefix=".token-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def _config_refresh_token_fingerprint(client: OAuth2Client) -> str | None:
    if client.refresh_token is None:
        return None
    with contextlib.suppress(ConfigError):
        return _fingerprint(client.refresh_token.reveal())
    return None


def current_refresh_token(client: OAuth2Client) -> str:
    """The token file's refresh token unless the config's changed since; else the config's."""
    stored = _read_token_file(client)
    configured = client.refresh_token.reveal() if client.refresh_token is not None else None
    if stored is not None and (configured is None or stored.get("replaces") in (None, _fingerprint(configured))):
        token: str = stored["refresh_token"]
        return token
    if configured is not None:
        return configured
    raise AuthenticationFailure(
        f"account '{client.account}': no OAuth2 refresh token yet: run `mailmirror oauth2 authorize "
        f"{client.account}` (device authorization), or set oauth2.refresh_token",
        account=client.account,
    )


# ------------------------------------------------------------------------------------------- protocol


def _session(client: OAuth2Client) -> OAuth2Session:
    from authlib.integrations.requests_client import OAuth2Session  # Authlib and requests: only when used

    secret = client.client_secret.reveal() if client.client_secret is not None else None
    method = "client_secret_post" if secret is not None else "none"
    return OAuth2Session(
        client_id=client.client_id,
        client_secret=secret,
        token_endpoint_auth_method=method,
        scope=client.effective_scope,
    )


#: What was sent to the token endpoint (what it refused) and the step, for messages.
_STEPS = {
    "refresh": ("the refresh token", "while refreshing the access token"),
    "device": ("the device authorization request", "while asking for a device code"),
    "poll": ("the device code", "while waiting for the device code's approval"),
}


def _endpoint_error(client: OAuth2Client, url: str, step: str, error: Exception) -> Exception:
    """Translate what Authlib/requests raise into our errors: no token, no body, no secret in the text."""
    import requests
    from authlib.integrations.base_client.errors import OAuthError

    endpoint = "device authorization endpoint" if step == "device" else "token endpoint"
    where = f"account '{client.account}': OAuth2 {endpoint} {url}"
    sent, doing = _STEPS[step]
    if isinstance(error, OAuthError):
        description = f": {error.description}" if error.description else ""
        return AuthenticationFailure(
            f"{where} refused {sent} ({error.error}{description})" + _advice(client, error.error),
            account=client.account,
        )
    if isinstance(error, requests.Timeout):
        return ConnectionFailure(
            f"{where} did not answer within {client.timeout.total_seconds():g}s {doing}", account=client.account
        )
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return ConnectionFailure(
            f"{where} answered HTTP {error.response.status_code} {error.response.reason} {doing}",
            account=client.account,
        )
    if isinstance(error, requests.ConnectionError):
        return ConnectionFailure(f"{where} cannot be reached ({_root_cause(error)}) {doing}", account=client.account)
    if isinstance(error, requests.RequestException):
        return ConnectionFailure(f"{where} failed ({type(error).__name__}) {doing}", account=client.account)
    return ConnectionFailure(f"{where} gave an unusable answer ({_safe_text(error)}) {doing}", account=client.account)


def _root_cause(error: BaseException) -> str:
    while error.__context__ is not None or error.__cause__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def _safe_text(error: Exception) -> str:
    """Authlib's own messages (e.g. 'response is not a JSON object (HTTP 200)') hold no token; others we name."""
    return str(error) if isinstance(error, ValueError) and "Token endpoint" in str(error) else type(error).__name__


def _advice(client: OAuth2Client, code: str) -> str:
    if code == "invalid_grant":
        return (
            f". The refresh token was revoked or expired: run `mailmirror oauth2 authorize {client.account}` "
            "to obtain a new one"
        )
    if code in ("invalid_client", "unauthorized_client"):
        return ". Check oauth2.client_id and oauth2.client_secret (and that the app registration is enabled)"
    return ""


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: float  # time.monotonic()
    refresh_at: float


def _lifetime(answer: dict[str, Any]) -> float:
    try:
        return max(float(answer.get("expires_in", DEFAULT_LIFETIME_SECONDS)), 0.0)
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME_SECONDS


def _access_token_from(client: OAuth2Client, url: str, answer: dict[str, Any], started: float) -> AccessToken:
    value = answer.get("access_token")
    if not isinstance(value, str) or not value:
        raise ConnectionFailure(
            f"account '{client.account}': OAuth2 token endpoint {url} answered without an access_token",
            account=client.account,
        )
    lifetime = _lifetime(answer)
    ahead = min(lifetime * REFRESH_AHEAD_SHARE, REFRESH_AHEAD_MAX_SECONDS)
    return AccessToken(value=value, expires_at=started + lifetime, refresh_at=started + lifetime - ahead)


def refresh(client: OAuth2Client, clock: Callable[[], float] = time.monotonic) -> AccessToken:
    """One refresh-token grant; a rotated refresh token is stored before the access token is used."""
    import requests
    from authlib.integrations.base_client.errors import OAuthError

    url = client.effective_token_url
    refresh_token = current_refresh_token(client)
    started = clock()
    session = _session(client)
    try:
        answer = dict(session.refresh_token(url, refresh_token=refresh_token, timeout=client.timeout.total_seconds()))
    except (OAuthError, requests.RequestException, ValueError) as error:
        raise _endpoint_error(client, url, "refresh", error) from None
    finally:
        session.close()
    rotated = answer.get("refresh_token")
    if isinstance(rotated, str) and rotated and rotated != refresh_token:
        path = store_refresh_token(client, rotated)
        log.info("account '%s': the OAuth2 provider rotated the refresh token; stored in %s", client.account, path)
    token = _access_token_from(client, url, answer, started)
    log.debug("account '%s': new OAuth2 access token, valid %.0fs", client.account, token.expires_at - time.monotonic())
    return token


# ---------------------------------------------------------------------------------------------- cache


class TokenCache:
    """Access tokens in memory, per account and client registration, shared by every thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._tokens: dict[tuple[str, str], AccessToken] = {}

    @staticmethod
    def _key(client: OAuth2Client) -> tuple[str, str]:
        return client.account, f"{client.effective_token_url} {client.client_id}"

    def access_token(self, client: OAuth2Client) -> str:
        """A valid access token: the cached one unless it is due for refresh."""
        key = self._key(client)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one refresh per account at a time: parallel workers wait for it, then share the token
            token = self._tokens.get(key)
            if token is None or self._clock() >= token.refresh_at:
                token = refresh(client, self._clock)
                self._tokens[key] = token
            return token.value

    def invalidate(self, client: OAuth2Client, value: str) -> None:
        """Forget ``value`` (a server refused it): the next :meth:`access_token` refreshes."""
        key = self._key(client)
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.value == value:
                del self._tokens[key]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


#: The process's cache: every connection of every pass shares it.
TOKENS = TokenCache()


# ------------------------------------------------------------------------------ device authorization


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def start_device_authorization(client: OAuth2Client) -> DeviceAuthorization:
    """RFC 8628 §3.1: ask for a user code the admin types in at the provider's verification page."""
    import requests
    from authlib.integrations.base_client.errors import OAuthError

    url = client.effective_device_url
    if url is None:
        raise ConfigError(
            f"accounts.{client.account}.oauth2: device_authorization_url is needed for `mailmirror oauth2 "
            "authorize` (or provider: google | microsoft)"
        )
    session = _session(client)
    data = {"client_id": client.client_id}
    scope = client.effective_scope
    if scope:
        data["scope"] = scope
    try:
        response = session.request(
            "POST", url, data=data, timeout=client.timeout.total_seconds(), withhold_token=True, auth=None
        )
        answer = response.json() if response.content else {}
        if isinstance(answer, dict) and "error" in answer:
            raise OAuthError(error=str(answer["error"]), description=answer.get("error_description"))
        response.raise_for_status()
    except (OAuthError, requests.RequestException, ValueError) as error:
        raise _endpoint_error(client, url, "device", error) from None
    finally:
        session.close()
    try:
        return DeviceAuthorization(
            device_code=str(answer["device_code"]),
            user_code=str(answer["user_code"]),
            # Google's answer says verification_url (an older draft's name).
            verification_uri=str(answer.get("verification_uri") or answer["verification_url"]),
            verification_uri_complete=answer.get("verification_uri_complete"),
            expires_in=float(answer.get("expires_in", 600)),
            interval=float(answer.get("interval", 5)),
        )
    except (KeyError, TypeError, ValueError):
        raise ConnectionFailure(
            f"account '{client.account}': the device authorization endpoint {url} gave an incomplete answer",
            account=client.account,
        ) from None


def poll_device_authorization(
    client: OAuth2Client,
    grant: DeviceAuthorization,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, Path]:
    """RFC 8628 §3.4-3.5: poll the token endpoint until the admin approved; store the refresh token.

    Returns the refresh token and the file it is stored in."""
    import requests
    from authlib.integrations.base_client.errors import OAuthError

    url = client.effective_token_url
    interval = max(grant.interval, 0.1)
    deadline = clock() + grant.expires_in
    while True:
        sleep(interval)
        session = _session(client)
        try:
            answer = dict(
                session.fetch_token(
                    url,
                    grant_type=DEVICE_CODE_GRANT,
                    device_code=grant.device_code,
                    timeout=client.timeout.total_seconds(),
                )
            )
        except OAuthError as error:
            if error.error == "authorization_pending" and clock() < deadline:
                continue
            if error.error == "slow_down" and clock() < deadline:
                interval += 5  # RFC 8628 §3.5
                continue
            if error.error == "expired_token" or clock() >= deadline:
                raise AuthenticationFailure(
                    f"account '{client.account}': the device code expired before it was approved: run "
                    f"`mailmirror oauth2 authorize {client.account}` again",
                    account=client.account,
                ) from None
            if error.error == "access_denied":
                raise AuthenticationFailure(
                    f"account '{client.account}': the authorization was denied at the provider's page",
                    account=client.account,
                ) from None
            raise _endpoint_error(client, url, "poll", error) from None
        except (requests.RequestException, ValueError) as error:
            raise _endpoint_error(client, url, "poll", error) from None
        finally:
            session.close()
        refresh_token = answer.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise AuthenticationFailure(
                f"account '{client.account}': the token endpoint {url} granted access but no refresh token "
                "(ask for the offline_access scope, or allow refresh tokens for this client)",
                account=client.account,
            )
        return refresh_token, store_refresh_token(client, refresh_token)
