"""What the IMAP layer hands to the engine: folders, statuses, message records, and the two refusals
that are not errors of the connection (a missing folder, a refused message)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailmirror.errors import ConnectionFailure

SPECIAL_USE_FLAGS = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


class FolderVanished(ConnectionFailure):
    """The selected folder was deleted (by someone else) during the pass: the server closed the connection."""


class FolderMissing(Exception):
    """The folder does not exist (or is not selectable) on the server."""


class AppendRefused(Exception):
    """The server answered NO to an APPEND: the message is refused, the connection is fine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Folder:
    name: str  # Unicode, as the server names it (imapclient decodes modified UTF-7)
    delimiter: str | None
    flags: frozenset[str]

    @property
    def selectable(self) -> bool:
        lowered = {flag.lower() for flag in self.flags}
        return "\\noselect" not in lowered and "\\nonexistent" not in lowered

    @property
    def special_use(self) -> str | None:
        for flag in SPECIAL_USE_FLAGS:
            if flag in self.flags:
                return flag
        return None


@dataclass(frozen=True)
class MailboxStatus:
    uidvalidity: int
    #: Never 0 after `Session.select()` (learned when the SELECT answer lacks it, as Courier's does); 0 in a
    #: STATUS / LIST-STATUS answer that did not give it: unknown, never stored nor sent.
    uidnext: int
    messages: int
    highestmodseq: int | None
    permanent_flags: frozenset[str] | None = None  # only known after SELECT/EXAMINE


@dataclass(frozen=True)
class MessageMeta:
    """What a pass knows of a message without its body."""

    uid: int
    size: int
    flags: frozenset[str]
    internaldate: datetime
    header: bytes  # the identity header fields, as the server returned them


@dataclass(frozen=True)
class MessageDigest:
    uid: int
    sha256: str
    flags: frozenset[str]
    internaldate: datetime
    identity: str | None = None  # what `fetch_digests(identity=...)` made of the message's bytes


@dataclass(frozen=True)
class MessageToAppend:
    raw: bytes
    flags: frozenset[str]
    internaldate: datetime
