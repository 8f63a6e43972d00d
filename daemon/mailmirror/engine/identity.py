"""Message identity: a fingerprint that recognises the same message on two servers without its body.

The default fingerprint is the normalised Message-ID plus Date plus RFC822.SIZE (DESIGN.md, "Message
identity"). A message without a Message-ID falls back to From, To, Cc, Subject and Date. The header list
is configurable per pair (`messages.identity_headers`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

FALLBACK_HEADERS = ("From", "To", "Cc", "Subject", "Date")
_FOLDING = re.compile(rb"\r?\n[ \t]+")
_SPACES = re.compile(rb"\s+")


def header_fields_to_fetch(identity_headers: Sequence[str]) -> list[str]:
    """Every header a fingerprint may need, so that one FETCH serves both the normal and fallback case."""
    wanted: list[str] = []
    for name in [*identity_headers, "Message-ID", *FALLBACK_HEADERS]:
        if name.lower() not in (w.lower() for w in wanted):
            wanted.append(name)
    return wanted


def parse_headers(block: bytes) -> dict[str, list[bytes]]:
    """Header block → lowercase name → values (unfolded, whitespace collapsed, raw bytes kept)."""
    fields: dict[str, list[bytes]] = {}
    unfolded = _FOLDING.sub(b" ", block)
    for line in unfolded.splitlines():
        name, colon, value = line.partition(b":")
        if not colon or not name or name[:1] in b" \t":
            continue
        key = name.strip().decode("ascii", "replace").lower()
        fields.setdefault(key, []).append(_SPACES.sub(b" ", value).strip())
    return fields


def _normal_message_id(value: bytes) -> bytes:
    return value.strip().strip(b"<>").strip()


def _normal_date(value: bytes) -> bytes:
    try:
        parsed = parsedate_to_datetime(value.decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        return value
    return parsed.astimezone(UTC).isoformat().encode()


def _normal(name: str, value: bytes) -> bytes:
    if name == "message-id":
        return _normal_message_id(value)
    if name == "date":
        return _normal_date(value)
    return value


def fingerprint(header_block: bytes, size: int, identity_headers: Sequence[str] = ("Message-ID", "Date")) -> str:
    """``<digest of the identity headers>/<RFC822.SIZE>``: equal on source and destination for one message."""
    fields = parse_headers(header_block)
    names = [name.lower() for name in identity_headers]
    if "message-id" in names and not any(_normal_message_id(v) for v in fields.get("message-id", [])):
        names = [name.lower() for name in FALLBACK_HEADERS]
    digest = hashlib.sha256()
    for name in names:
        values = b"\x1f".join(_normal(name, value) for value in fields.get(name, []))
        digest.update(name.encode() + b"\x1e" + values + b"\x1d")
    return f"{digest.hexdigest()[:32]}/{size}"


def without_size(fingerprint_key: str) -> str:
    """The header part of a fingerprint: for servers that change a message's size when storing it."""
    return fingerprint_key.split("/", 1)[0]


_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


def loose_identity(raw: bytes, identity_headers: Sequence[str] = ("Message-ID", "Date")) -> str:
    """The identity of a whole message regardless of bytes a server may rewrite when storing it: the
    fingerprint of its identity headers without the size, every 8-bit byte of the header read as "X" (what
    Cyrus's munge8bit stores). Equal for a message and its altered copy; `verify` pairs them by it."""
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[:end]
    return without_size(fingerprint(_EIGHT_BIT.sub(b"X", header), 0, identity_headers))
