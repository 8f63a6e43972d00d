"""Opening the connection to an account's server: TCP, implicit TLS or STARTTLS, the greeting.

Every failure is a `ConnectionFailure` (a `ConfigError` for an unusable tls_ca) that names the account and
the server and says what to change: a certificate that is expired or names another host, a plain-text
port where TLS was asked (or the other way round), a greeting that is not IMAP.
"""

from __future__ import annotations

import contextlib
import functools
import imaplib
import socket
import ssl
from typing import TYPE_CHECKING

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from mailmirror.errors import ConfigError, ConnectionFailure
from mailmirror.imap.channel import server_text
from mailmirror.imap.wire import LeanIMAPClient

if TYPE_CHECKING:
    from mailmirror.config.account import Account

#: A server sends its greeting at once; when none came within this long (or the account's timeout, if
#: shorter), mailmirror looks whether the port speaks TLS from the first byte (a tls: starttls/none account
#: pointed at an IMAPS port waits for a greeting that never comes), then waits the full timeout.
GREETING_PROBE_SECONDS = 5.0
#: TLS alerts and errors meaning "what came back was not TLS": a plain-text port.
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE")
CERT_NOT_YET_VALID, CERT_EXPIRED = 9, 10  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def connect_client(account: Account, what: str) -> IMAPClient:
    timeout = account.timeout.total_seconds()
    context = _checked_ssl_context(account, what) if account.tls != "none" else None
    try:
        client = _client_with_greeting(account, context, timeout, what)
        # imapclient sets imaplib's debug level to 5, which formats every response (bodies included) for a
        # logger that discards it: half the CPU of a first pass. Nothing of ours reads it.
        client._imap.debug = 0
        if account.tls == "starttls":
            if b"STARTTLS" not in client.capabilities():
                client.shutdown()
                raise ConnectionFailure(
                    f"{what}: the server does not offer STARTTLS, and the account requires it (tls: starttls). "
                    "Use tls: implicit (port 993) if the server speaks TLS from the start."
                )
            _starttls(client, context, what)
        return client
    except ssl.SSLCertVerificationError as error:
        if error.verify_code in NAME_MISMATCH and context is not None:
            raise ConnectionFailure(_hostname_mismatch(account, context, what)) from None
        if error.verify_code in (CERT_NOT_YET_VALID, CERT_EXPIRED):
            raise ConnectionFailure(
                f"{what}: the server's TLS certificate {error.verify_message}: the server's administrator must "
                "renew it (or this machine's clock is wrong: check date); tls_ca does not help"
            ) from None
        raise ConnectionFailure(
            f"{what}: the server's TLS certificate could not be verified ({error.verify_message}). "
            "Give the CA that signed it with tls_ca: /path/ca.pem, or, for a lab server only, tls_verify: false."
        ) from None
    except ssl.SSLError as error:
        raise ConnectionFailure(_tls_failure(account, error, what)) from None
    except TimeoutError:
        raise ConnectionFailure(f"{what}: no answer within {timeout:g}s (timeout)") from None
    except ConnectionRefusedError:
        raise ConnectionFailure(f"{what}: connection refused: nothing listens on that port") from None
    except socket.gaierror as error:
        raise ConnectionFailure(f"{what}: cannot resolve host name: {error.strerror}") from None
    except OSError as error:
        raise ConnectionFailure(f"{what}: cannot connect: {error.strerror or error}") from None
    except (IMAPClientError, imaplib.IMAP4.error) as error:
        raise ConnectionFailure(_bad_greeting(account, error, what)) from None


def _starttls(client: IMAPClient, context: ssl.SSLContext | None, what: str) -> None:
    try:
        client.starttls(context)
    except (IMAPClientAbortError, ssl.SSLError, OSError):
        raise
    except IMAPClientError as error:  # NO or BAD: the server advertised STARTTLS but will not do it
        with contextlib.suppress(Exception):
            client.shutdown()
        text = server_text(error)
        raise ConnectionFailure(
            f"{what}: the server refused STARTTLS ({text[:120]}); ask its administrator, or use tls: implicit "
            "(port 993) if it offers IMAPS"
        ) from None


def _checked_ssl_context(account: Account, what: str) -> ssl.SSLContext:
    """The TLS context; a tls_ca that no longer holds a certificate (checked at load, changed since) is a
    config error naming the account and the file."""
    try:
        return _ssl_context(account)
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
        raise ConfigError(
            f"{what}: tls_ca {account.tls_ca} holds no usable CA certificate ({reason}): give a PEM file "
            "of the CA that signed the server's certificate",
            account=None,
        ) from None


def _client_with_greeting(account: Account, context: ssl.SSLContext | None, timeout: float, what: str) -> IMAPClient:
    """Connect and read the greeting; a plain-text account on an implicit-TLS port is recognised quickly."""
    implicit = account.tls == "implicit"
    probe = min(timeout / 2, GREETING_PROBE_SECONDS)
    if implicit:
        return LeanIMAPClient(
            account.host, port=account.effective_port, ssl=implicit, ssl_context=context, timeout=timeout
        )
    try:  # the greeting is read under the connect timeout
        return LeanIMAPClient(
            account.host, port=account.effective_port, ssl=False, timeout=SocketTimeout(connect=probe, read=timeout)
        )
    except TimeoutError:
        if _speaks_tls(account, probe):
            raise ConnectionFailure(
                f"{what}: the server sent no greeting but answers in TLS: this port speaks TLS from the first "
                f"byte (IMAPS, usually 993), while the account has tls: {account.tls}. Use tls: implicit, or the "
                "server's STARTTLS port (usually 143)"
            ) from None
    return LeanIMAPClient(account.host, port=account.effective_port, ssl=False, timeout=timeout)


def _speaks_tls(account: Account, timeout: float) -> bool:
    """Whether a TLS handshake succeeds right away on the account's port (certificate not checked)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((account.host, account.effective_port), timeout=timeout) as raw,
            probe.wrap_socket(raw, server_hostname=account.host),
        ):
            return True
    except (OSError, ValueError):
        return False


def _tls_failure(account: Account, error: ssl.SSLError, what: str) -> str:
    reason = str(error.reason or error)
    if account.tls == "implicit" and reason in _NOT_TLS_REASONS:
        return (
            f"{what}: TLS handshake failed: the server answered in plain text, not TLS ({reason}). This port "
            "speaks plain IMAP: use tls: starttls (usually port 143), or the server's IMAPS port (993)"
        )
    return f"{what}: TLS handshake failed: {reason}"


def _hostname_mismatch(account: Account, context: ssl.SSLContext, what: str) -> str:
    names = _certificate_names(account, context)
    listed = f" (it names {', '.join(names)})" if names else ""
    return (
        f"{what}: the server's TLS certificate is not valid for the host name '{account.host}'{listed}. "
        "Set host: to a name the certificate lists (tls_ca is not the problem: the certificate is trusted)"
    )


def _certificate_names(account: Account, context: ssl.SSLContext) -> list[str]:
    """The DNS names and addresses the server's (trusted) certificate lists, from a second connection that
    checks the chain but not the name; [] when that fails."""
    lenient = _new_ssl_context(str(account.tls_ca) if account.tls_ca else None, account.tls_verify)
    lenient.check_hostname = False
    try:
        client = IMAPClient(
            account.host,
            port=account.effective_port,
            ssl=account.tls == "implicit",
            ssl_context=lenient,
            timeout=min(account.timeout.total_seconds(), GREETING_PROBE_SECONDS),
        )
        try:
            if account.tls == "starttls":
                client.starttls(lenient)
            certificate = client._imap.sock.getpeercert() or {}
        finally:
            with contextlib.suppress(Exception):
                client.shutdown()
    except Exception:  # only a hint: the error says the essential either way
        return []
    return [str(value) for _kind, value in certificate.get("subjectAltName", ())][:8]


def _bad_greeting(account: Account, error: Exception, what: str) -> str:
    """A greeting that is not IMAP (an HTTP or SMTP server, binary noise), shown short: its first line."""
    text = server_text(error).strip()
    first = (text.splitlines() or ["nothing"])[0].removeprefix("unexpected response: ")
    first = first.removeprefix("socket error: unterminated line: ")
    shown = first if len(first) <= 80 else first[:77] + "..."
    if "BYE" in first.upper():
        return f"{what}: the server refused the connection at once: {shown}"
    if "EOF" in first:
        return f"{what}: the server closed the connection before its greeting ({shown}); is this an IMAP port?"
    looks_like_tls = any(marker in first for marker in ("\\x15\\x03", "\\x16\\x03"))
    hint = "; the server speaks TLS: use tls: implicit" if looks_like_tls and account.tls != "implicit" else ""
    return f"{what}: the server's greeting is not IMAP ({shown}): check host and port{hint}"


def _ssl_context(account: Account) -> ssl.SSLContext:
    """One context per CA file version and verification setting, not one per connection (parsing the CA
    file each time was 1.7% of a fleet's no-change round). A changed tls_ca file (new mtime or size) gets
    a new context."""
    if account.tls_ca is None:
        return _shared_ssl_context(None, 0, 0, account.tls_verify)
    version = account.tls_ca.stat()
    return _shared_ssl_context(str(account.tls_ca), version.st_mtime_ns, version.st_size, account.tls_verify)


@functools.lru_cache(maxsize=64)
def _shared_ssl_context(cafile: str | None, _mtime_ns: int, _size: int, verify: bool) -> ssl.SSLContext:
    return _new_ssl_context(cafile, verify)


def _new_ssl_context(cafile: str | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
