"""A logged-in IMAP client and the translation of its errors, which every command of a session goes through.

`Channel.talking(doing)` turns what imapclient raises into mailmirror's errors, naming the account and the
server: a lost connection (`ConnectionFailure`, or `FolderVanished` when the server closed it because the
selected folder was deleted), a server asking to slow down (`Throttled`), any other NO or BAD
(`ServerRefused`). No secret is ever part of a message (imapclient's errors carry only the server's reply).
The folder, message and append commands (`folders.py`, `messages.py`, `append.py`) build on it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from imapclient.response_parser import parse_fetch_response

from mailmirror.errors import ConnectionFailure, ServerRefused, Throttled
from mailmirror.imap.types import FolderVanished

if TYPE_CHECKING:
    from mailmirror.config.account import Account

#: Answers of servers asking a client to slow down (Office 365: "Server Unavailable. 15", "Request is
#: throttled"; Gmail: "[THROTTLED]", "Account exceeded command or bandwidth limits"; RFC 5530 [UNAVAILABLE]).
_THROTTLED = re.compile(
    r"\[(THROTTLED|UNAVAILABLE)\]|throttled|server unavailable|exceeded command or bandwidth limits", re.IGNORECASE
)


def is_throttling(text: str) -> bool:
    """Whether a server's NO/BAD text asks to slow down (retry later) rather than refusing for good."""
    return _THROTTLED.search(text) is not None


#: What a command makes of the server's NO or BAD: the exception to raise, or None to let the refusal pass.
Refusal = Callable[[IMAPClientError], Exception | None]


#: BYE texts of servers closing a session whose selected mailbox was deleted (Dovecot: "Mailbox was deleted
#: under us", "Selected mailbox was deleted, have to disconnect.").
_MAILBOX_GONE = re.compile(r"mailbox (was|has been) (deleted|removed)|deleted under us|\[NONEXISTENT\]", re.IGNORECASE)


def server_text(value: Any) -> str:
    """A server's word (bytes or str) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def server_flags(values: Iterable[Any]) -> frozenset[str]:
    return frozenset(server_text(value) for value in values)


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1:3,7,9:10"``: short commands for long UID lists."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    start = previous = ordered[0] if ordered else 0
    for uid in ordered[1:]:
        if uid == previous + 1:
            previous = uid
            continue
        ranges.append(f"{start}:{previous}" if previous > start else str(start))
        start = previous = uid
    if ordered:
        ranges.append(f"{start}:{previous}" if previous > start else str(start))
    return ",".join(ranges)


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Channel:
    """One logged-in IMAP client of one account; `talking` translates its errors."""

    def __init__(self, account_name: str, account: Account, client: IMAPClient) -> None:
        self.account_name = account_name
        self.account = account
        self.client = client
        self.capabilities = frozenset(server_text(c).upper() for c in client.capabilities())
        self.selected: str | None = None
        self.selected_readonly = True
        self.mechanism = "LOGIN"  # how it logged in (auth.login's choice)
        # Learned on the first SELECT/STATUS that lacks UIDNEXT (Courier): None until known.
        self.uidnext_in_select: bool | None = None
        self.uidnext_in_status: bool | None = None

    @property
    def server(self) -> str:
        return f"{self.account.host}:{self.account.effective_port}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.logout()
        with contextlib.suppress(Exception):
            self.client.shutdown()

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @property
    def append_limit(self) -> int | None:
        for capability in self.capabilities:
            if capability.startswith("APPENDLIMIT="):
                value = capability.split("=", 1)[1]
                return int(value) if value.isdigit() else None
        return None

    # -- error translation -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def talking(self, doing: str, refusal: Refusal | None = None) -> Iterator[None]:
        """Translate the errors of the commands in the block. A NO or BAD becomes ``refusal(error)`` when the
        command says what it means (a missing folder, a refusal to tolerate), else Throttled or ServerRefused."""
        try:
            yield
        except (IMAPClientAbortError, OSError, EOFError) as error:
            bye = self._bye_text()
            if self.selected is not None and _MAILBOX_GONE.search(f"{bye} {error}"):
                raise FolderVanished(
                    f"account '{self.account_name}' ({self.server}): folder '{self.selected}' was deleted on the "
                    f"server during the pass ({bye or error}); it is left out of this pass",
                    account=self.account_name,
                ) from None
            raise ConnectionFailure(
                f"account '{self.account_name}' ({self.server}): connection lost while {doing}: {error}",
                account=self.account_name,
            ) from None
        except IMAPClientError as error:
            if refusal is not None:
                translated = refusal(error)
                if translated is None:
                    return
                raise translated from None
            if is_throttling(server_text(error)):
                raise self.throttled(doing, server_text(error)) from None
            raise self.refused(doing, error) from None

    def _bye_text(self) -> str:
        """The server's last BYE (why it closed the connection), or ""."""
        with contextlib.suppress(Exception):
            byes = self.client._imap.untagged_responses.get("BYE") or []
            if byes:
                return server_text(byes[-1]).strip()[:200]
        return ""

    def throttled(self, doing: str, reason: str) -> Throttled:
        return Throttled(
            f"account '{self.account_name}' ({self.server}): the server asked to slow down while {doing}: "
            f"{reason.strip()}"
        )

    def refusing(self, doing: str) -> Refusal:
        """A NO or BAD as the ServerRefused "the server refused {doing}", even when it asks to slow down."""
        return lambda error: self.refused(doing, error)

    def refused(self, doing: str, error: Exception) -> ServerRefused:
        return ServerRefused(
            f"account '{self.account_name}' ({self.server}): the server refused {doing}: {server_text(error)}"
        )

    def uid_fetch(
        self, message_set: str, items: Sequence[str], modifiers: Sequence[str] = ()
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH with a message set such as ``1:*`` or ``4,7:90``.

        imapclient 4 drops every response whose UID was not listed one by one in the request, which
        rules out ranges; this sends the same command and parses with imapclient's own parser.
        """
        imap = self.client._imap
        arguments = ["UID", "FETCH", message_set, "(" + " ".join(items) + ")"]
        if modifiers:
            arguments.append("(" + " ".join(modifiers) + ")")
        tag = imap._command(*arguments)
        typ, data = imap._command_complete("FETCH", tag)
        self.client._checkok("fetch", typ, data)
        typ, data = imap._untagged_response(typ, data, "FETCH")
        parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(data, self.client.normalise_times, True)
        return parsed
