"""Which mailbox an account is: a normalised (host, port, user), whatever name or spelling the config uses.

Two account entries that differ only in how they name the server (``localhost``, ``127.0.0.1``, ``::1``;
``IMAP.Example.org`` and ``imap.example.org.``) or in a port left to its default (993 with implicit TLS,
143 otherwise) are the same mailbox; so are 143 and 993 of one host (its IMAP service, with STARTTLS or
implicit TLS). This identity keys the destination lock (locks.py: one writer per
destination mailbox) and refuses a pair whose source and destination are the same mailbox (config.py).

Host names are not resolved (validation must not depend on DNS): two different names for one server
are two identities. docs/architecture.md ("Why exactly once") states that limit.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass

LOOPBACK = "localhost"  # every loopback spelling
IMAP_PORT = 143  # the identity's port for both standard ports: 143 (STARTTLS or plain) and 993 (implicit TLS)
_STANDARD_PORTS = {143, 993}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True, order=True)
class MailboxIdentity:
    host: str
    port: int
    user: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.port == IMAP_PORT else f"{self.user}@{host}:{self.port}"

    @property
    def key(self) -> str:
        """A file name for this identity: readable, and unique through a digest of the whole identity."""
        digest = hashlib.sha256(f"{self.host}\0{self.port}\0{self.user}".encode()).hexdigest()[:16]
        readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{self.user}@{self.host}_{self.port}")
        return f"{readable[:80]}-{digest}"


@functools.lru_cache(maxsize=4096)  # a fleet names one host thousands of times
def normal_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets; every loopback spelling is one."""
    text = host.strip().strip("[]").rstrip(".").lower()
    if text in _LOOPBACK_NAMES:
        return LOOPBACK
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # 127.0.0.1 and ::1 are what "localhost" resolves to; other 127/8 addresses may be other servers
    loopback = address == ipaddress.ip_address("127.0.0.1") or address == ipaddress.ip_address("::1")
    return LOOPBACK if loopback else address.compressed


def mailbox_identity(host: str, port: int, username: str) -> MailboxIdentity:
    """The identity of the mailbox of ``username`` on ``host:port`` (``port``: the effective port).
    User names are compared without case: IMAP servers nearly always treat them so, and the cautious
    side of a wrong guess is only a lock shared by two mailboxes, or a refusal to be explained. For the
    same reason the two standard ports are one: 143 and 993 of a host are its one IMAP service, reached
    with STARTTLS or with implicit TLS (two configs that differ only in ``tls`` write into one mailbox)."""
    service = IMAP_PORT if port in _STANDARD_PORTS else port
    return MailboxIdentity(normal_host(host), service, username.strip().casefold())
