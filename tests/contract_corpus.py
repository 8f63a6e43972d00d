"""A small edge-case mailbox for the server contract suite (tests/test_contract.py).

Folder names are logical ("/"-separated, Unicode); the lab translates them per server.  Every header is
7-bit (Cyrus rewrites 8-bit header bytes: that case has its own test); bodies may be 8-bit.  No folder
is named like a special-use folder (Sent, Drafts, Trash, Junk, Archive...) so that automap leaves the
names alone; special-use is tested separately.
"""

from __future__ import annotations

import base64
import zlib
from datetime import UTC, datetime, timedelta

from mailmirror.lab.dovecot import SeedMessage

BASE_DATE = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)

#: Folders created subscribed, except :data:`UNSUBSCRIBED`; :data:`EMPTY` holds no message.
FOLDERS = ("INBOX", "Projects", "Projects/2024", "Données/Été", "Empty", "Unsubscribed")
EMPTY = "Empty"
UNSUBSCRIBED = "Unsubscribed"
RENAMED_FROM, RENAMED_TO = "Projects/2024", "Projects/Y2024"

FLAG_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("\\Seen",),
    ("\\Seen", "\\Flagged"),
    ("\\Answered", "\\Seen"),
    ("\\Draft",),
    ("$Forwarded", "\\Seen"),
    ("project-x", "$Label1"),
)


def message(folder: str, index: int, *, size: int = 0, body_8bit: bool = False, message_id: bool = True) -> bytes:
    """A CRLF message; ``size`` pads the body to about that many bytes."""
    headers = [
        "From: Alex Morgan <alex.morgan@example.com>",
        "To: Sam Lee <sam.lee@example.org>",
        f"Subject: =?UTF-8?B?{base64.b64encode(folder.encode()).decode()}?= message {index}",
        f"Date: {(BASE_DATE + timedelta(hours=index)).strftime('%a, %d %b %Y %H:%M:%S +0000')}",
        "MIME-Version: 1.0",
    ]
    if message_id:
        headers.append(f"Message-ID: <contract-{index}-{zlib.crc32(folder.encode())}@example.com>")
    if body_8bit:
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        body = "Grüße aus Köln, déjà vu, Привет.\r\n"
    else:
        headers.append("Content-Type: text/plain; charset=us-ascii")
        body = f"Hello from {index}.\r\n"
    body += ("x" * 76 + "\r\n") * (size // 78)
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def edge_mailbox() -> dict[str, list[SeedMessage]]:
    """logical folder -> messages: flags and keywords, an 8-bit body, a big-ish message (~300 KB), one
    without Message-ID, non-ASCII and nested folders, an empty folder."""
    mailbox: dict[str, list[SeedMessage]] = {name: [] for name in FOLDERS}
    index = 0
    for folder in FOLDERS:
        if folder == EMPTY:
            continue
        count = 7 if folder == "INBOX" else 2
        for n in range(count):
            index += 1
            raw = message(
                folder,
                index,
                size=300_000 if (folder == "INBOX" and n == 1) else 0,
                body_8bit=n == 2,
                message_id=not (folder == "INBOX" and n == 3),
            )
            flags = FLAG_SETS[n % len(FLAG_SETS)]
            mailbox[folder].append(SeedMessage(raw, flags, BASE_DATE + timedelta(days=index)))
    return mailbox


def header_8bit_message() -> bytes:
    """A message with raw UTF-8 bytes in its headers (RFC 6532 style; many clients send such mail)."""
    return (
        "From: Jürgen Müller <juergen@example.de>\r\n"
        "To: Sam Lee <sam.lee@example.org>\r\n"
        "Subject: Grüße – Übersicht für März\r\n"
        "Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n"
        "Message-ID: <contract-8bit-header@example.de>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Hallo, schöne Grüße.\r\n"
    ).encode()
