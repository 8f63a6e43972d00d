"""imapclient without the round trips it does not need before login.

imaplib asks CAPABILITY right after the greeting, even when the greeting already announced them
(``* OK [CAPABILITY ...]``, as Dovecot, Cyrus and most servers do), and imapclient asks again after STARTTLS
although imaplib has just asked over TLS. Each is a round trip per connection (two connections per pass):
on a WAN link of 50 ms that is 0.2 s of every pass. This client takes the greeting's list (never after
STARTTLS: what the server said before TLS is not trusted past it, RFC 3501 6.2.1) and reuses imaplib's list
after STARTTLS. `authenticate_plain_initial` sends SASL PLAIN with its initial response (RFC 4959 SASL-IR):
one round trip instead of two.
"""

from __future__ import annotations

import base64
import imaplib
import re
from typing import Any

from imapclient import IMAPClient, imap4, tls

#: The greeting's capability response code, read strictly: imaplib's own pattern for response codes is
#: greedy and would run on to the last "]" of a greeting such as ``* OK [CAPABILITY ...] mail [x] ready``.
_GREETING_CAPABILITIES = re.compile(rb"\* (?:OK|PREAUTH) \[CAPABILITY ([^\]]+)\]")


class _GreetingCapabilities:
    """Mixed into imaplib's connection classes: the capabilities of the greeting's response code."""

    untagged_responses: dict[str, list[Any]]
    capabilities: tuple[str, ...]
    welcome: bytes
    _tls_established: bool

    def _get_capabilities(self) -> None:
        self.untagged_responses.pop("CAPABILITY", None)  # asked or not, the list set here is the one kept
        announced = _GREETING_CAPABILITIES.match(getattr(self, "welcome", b"") or b"")
        if announced and not getattr(self, "_tls_established", False):
            self.capabilities = tuple(announced.group(1).decode("ascii", "replace").upper().split())
            return
        super()._get_capabilities()  # type: ignore[misc]


class _PlainConnection(_GreetingCapabilities, imap4.IMAP4WithTimeout):  # type: ignore[misc]
    pass


class _TLSConnection(_GreetingCapabilities, tls.IMAP4_TLS):  # type: ignore[misc]
    pass


class LeanIMAPClient(IMAPClient):  # type: ignore[misc]
    def _create_IMAP4(self) -> imaplib.IMAP4:
        connect_timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _TLSConnection(self.host, self.port, self.ssl_context, connect_timeout)
        return _PlainConnection(self.host, self.port, connect_timeout)

    def capabilities(self) -> tuple[bytes, ...]:
        if self._imap.state == "NONAUTH":  # imaplib's list: of the greeting, or asked again over TLS
            return tuple(c.encode("ascii") if isinstance(c, str) else c for c in self._imap.capabilities)
        return super().capabilities()  # type: ignore[no-any-return]

    def authenticate_plain_initial(self, authentication: str, password: str, authorization: str = "") -> None:
        """SASL PLAIN in one command (needs SASL-IR). A refusal raises imapclient's LoginError with the server's
        answer, like `plain_login`; the password is in no error text."""
        from imapclient.exceptions import LoginError

        credentials = f"{authorization}\0{authentication}\0{password}"
        response = base64.b64encode(credentials.encode()).decode("ascii")
        # a server that asks "+" all the same gets the credentials again, as without SASL-IR (no stall)
        self._imap.literal = imaplib._Authenticator(lambda _challenge: credentials).process
        kind, data = self._imap._simple_command("AUTHENTICATE", "PLAIN", response)
        if kind != "OK":
            answer = data[-1].decode("utf-8", "replace") if data and isinstance(data[-1], bytes) else str(data)
            raise LoginError(answer)
        self._imap.state = "AUTH"
