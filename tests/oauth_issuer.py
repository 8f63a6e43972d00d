"""A local OAuth2 authorization server for the tests: token endpoint (refresh-token and device-code
grants) and device authorization endpoint (RFC 8628), issuing JWT access tokens (HS256 or RS256) that
the lab Dovecot's oauth2 passdb validates locally.

Knobs a test turns: ``lifetime`` (expires_in and exp), ``exp_offset`` (makes exp earlier than
expires_in says: a token the server refuses before mailmirror expects), ``rotate`` (a new refresh
token with every refresh, the old one revoked), ``delay`` (a slow answer), ``fail_status`` (an HTTP
error page instead of JSON), ``device_pending_polls`` / ``device_outcome`` (the admin approving or
denying at the verification page), ``bad_signature`` (tokens signed with a key Dovecot does not trust).
Everything issued is recorded in ``issued`` so the secret scan knows what to look for.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass
class SigningKeys:
    """What the issuer signs with and the lab Dovecot trusts (kid "default" for HS256, "k1" for RS256)."""

    hs256_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    rs256_kid: str = "k1"

    @property
    def rs256_public_pem(self) -> str:
        return (
            self.rsa_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )


@dataclass
class Issuer:
    keys: SigningKeys
    client_id: str = "mailmirror-test"
    client_secret: str = field(default_factory=lambda: "cs-" + secrets.token_hex(16))
    algorithm: str = "HS256"
    lifetime: int = 3600
    exp_offset: int = 0
    rotate: bool = False
    delay: float = 0.0
    fail_status: int | None = None
    bad_signature: bool = False
    device_pending_polls: int = 1
    device_slow_down_polls: int = 0  # the first polls are answered slow_down
    device_outcome: str = "approve"  # or "deny"
    device_interval: float = 0.1
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    revoked: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)  # every access and refresh token handed out
    token_requests: int = 0
    device_polls: int = 0
    device_user: str = ""
    _device_codes: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def device_url(self) -> str:
        return self.url + "/device"

    def grant(self, user: str) -> str:
        """A refresh token for ``user``, as the provider's consent page would have produced."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[token] = user
            self.issued.append(token)
        return token

    def revoke_all(self) -> None:
        with self._lock:
            self.revoked.update(self.refresh_tokens)

    def access_token(self, user: str) -> str:
        now = int(time.time())
        claims = {
            "sub": user,
            "email": user,
            "iat": now,
            "exp": now + self.lifetime + self.exp_offset,
            "jti": secrets.token_hex(8),
        }
        headers = {"typ": "JWT"}
        if self.algorithm == "RS256":
            headers["kid"] = self.keys.rs256_kid
            key: Any = self.keys.rsa_key if not self.bad_signature else rsa.generate_private_key(65537, 2048)
        else:
            key = self.keys.hs256_secret if not self.bad_signature else secrets.token_hex(32)
        token = jwt.encode(claims, key, algorithm=self.algorithm, headers=headers)
        with self._lock:
            self.issued.append(token)
        return token

    # -- HTTP ------------------------------------------------------------------------------------------

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        if path == "/device":
            code = "dc-" + secrets.token_urlsafe(16)
            with self._lock:
                self._device_codes[code] = 0
            return 200, {
                "device_code": code,
                "user_code": "WDJB-MJHT",
                "verification_uri": self.url + "/verify",
                "expires_in": 60,
                "interval": self.device_interval,
            }
        if path != "/token":
            return 404, {"error": "not_found"}
        with self._lock:
            self.token_requests += 1
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            return self._refresh(form)
        if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form)
        return 400, {"error": "unsupported_grant_type"}

    def _client_ok(self, form: dict[str, str]) -> bool:
        return form.get("client_secret") == self.client_secret

    def _refresh(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if not self._client_ok(form):
            return 401, {"error": "invalid_client", "error_description": "bad client credentials"}
        token = form.get("refresh_token", "")
        user = self.refresh_tokens.get(token)
        if user is None or token in self.revoked:
            return 400, {"error": "invalid_grant", "error_description": "refresh token revoked or unknown"}
        answer: dict[str, Any] = {
            "access_token": self.access_token(user),
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        }
        if self.rotate:
            with self._lock:
                self.revoked.add(token)
            answer["refresh_token"] = self.grant(user)
        return 200, answer

    def _device_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = form.get("device_code", "")
        with self._lock:
            self.device_polls += 1
            if code not in self._device_codes:
                return 400, {"error": "expired_token"}
            self._device_codes[code] += 1
            polls = self._device_codes[code]
        if polls <= self.device_slow_down_polls:
            return 400, {"error": "slow_down"}
        if polls <= self.device_pending_polls:
            return 400, {"error": "authorization_pending"}
        if self.device_outcome == "deny":
            return 400, {"error": "access_denied"}
        with self._lock:
            del self._device_codes[code]
        user = self.device_user
        return 200, {
            "access_token": self.access_token(user),
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": self.grant(user),
        }

    def start(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                if issuer.delay:
                    time.sleep(issuer.delay)
                if issuer.fail_status is not None:
                    self._send(issuer.fail_status, b"<html>upstream error</html>", "text/html")
                    return
                status, answer = issuer.answer(self.path, form)
                self._send(status, json.dumps(answer).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                with _suppress_broken_pipe():
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet (and free of tokens)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _suppress_broken_pipe:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, BrokenPipeError | ConnectionResetError)


def running_issuer(keys: SigningKeys, **settings: Any) -> Iterator[Issuer]:
    issuer = Issuer(keys, **settings)
    issuer.start()
    try:
        yield issuer
    finally:
        issuer.stop()
