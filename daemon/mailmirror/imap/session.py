"""The IMAP session a pass works with: one logged-in connection to one account.

`Session.open(name, account)` connects (`connect.py`), logs in (`auth.py`) and learns the server's
capabilities and namespace. Its commands come from `folders.py`, `messages.py` and `append.py`, all built on
`channel.py`, which turns every error into a `MailmirrorError` naming the account and the server; no secret
is ever part of a message. `imap/interface.py` declares what the engine may use of it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError

from mailmirror.errors import AuthenticationFailure, ConnectionFailure
from mailmirror.imap import auth
from mailmirror.imap.append import AppendCommands
from mailmirror.imap.connect import connect_client
from mailmirror.imap.folders import FolderCommands, missing
from mailmirror.imap.messages import MessageCommands

if TYPE_CHECKING:
    from mailmirror.config.account import Account

log = logging.getLogger(__name__)

#: Capabilities `mailmirror check` reports, in this order.
REPORTED_CAPABILITIES = (
    "UIDPLUS",
    "CONDSTORE",
    "QRESYNC",
    "MULTIAPPEND",
    "LITERAL+",
    "LIST-STATUS",
    "SPECIAL-USE",
    "IDLE",
    "APPENDLIMIT",
    "NAMESPACE",
)

#: Untagged answers during IDLE that mean the folder changed: new, expunged or re-flagged messages.
_CHANGE_RESPONSES = (b"EXISTS", b"EXPUNGE", b"FETCH")


class Session(FolderCommands, MessageCommands, AppendCommands):
    """One logged-in IMAP connection to one account.

    Use `Session.open(name, account)`; all methods raise MailmirrorError subclasses on connection
    problems, naming the account and server, and FolderMissing for a folder that is not there.
    """

    def __init__(self, account_name: str, account: Account, client: IMAPClient) -> None:
        super().__init__(account_name, account, client)
        self._exists_seen: tuple[str | None, Any] | None = None  # (folder, EXISTS) last seen while watching
        self.separator, self.prefix = self._namespace()

    @classmethod
    def open(cls, account_name: str, account: Account) -> Session:
        try:
            return cls._open(account_name, account)
        except (ConnectionFailure, AuthenticationFailure) as error:
            error.account = account_name
            raise

    @classmethod
    def _open(cls, account_name: str, account: Account) -> Session:
        where = f"{account.host}:{account.effective_port}"
        what = f"account '{account_name}' ({where})"
        client = connect_client(account, what)
        try:
            mechanism = auth.login(client, account_name, account, what)
            client.normalise_times = False
            session = cls(account_name, account, client)  # asks CAPABILITY and NAMESPACE
            session.mechanism = mechanism
        except (IMAPClientAbortError, OSError, EOFError) as error:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise ConnectionFailure(f"{what}: connection lost right after login: {error}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        log.debug("%s: logged in, capabilities %s", what, " ".join(sorted(session.capabilities)))
        return session

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def folder_size(self, name: str) -> tuple[int, int]:
        """(messages, bytes) of a folder: STATUS SIZE (RFC 8438) when offered, else the sum of RFC822.SIZE."""
        if self.has("STATUS=SIZE"):
            with self.talking(f"asking the size of '{name}'", missing(name)):
                result = self.client.folder_status(name, ["MESSAGES", "SIZE"])
            return int(result[b"MESSAGES"]), int(result[b"SIZE"])
        status = self.select(name, readonly=True)
        sizes = self.fetch_sizes() if status.messages else {}
        return len(sizes), sum(sizes.values())

    def wait_for_changes(self, stopping: threading.Event, renew_after: float) -> bool:
        """IDLE (RFC 2177) on the selected folder until the server reports a change, ``stopping`` is set, or
        ``renew_after`` seconds have passed (servers may end an IDLE after 30 minutes: the caller idles
        again). Returns whether a change was reported. Needs the IDLE capability."""
        with self.talking(f"waiting for changes in '{self.selected}' (IDLE)"):
            # A change made after SELECT (or after the last IDLE) but before this IDLE began is not
            # always announced in IDLE (Dovecot waits for its next check, 30 s later): a NOOP asks now.
            _text, pending = self.client.noop()
            if self._news(pending):
                return True
            self.client.idle()
            started = time.monotonic()
            changed = False
            while not changed and not stopping.is_set() and time.monotonic() - started < renew_after:
                changed = self._news(self.client.idle_check(timeout=1))
            _text, late = self.client.idle_done()
        return self._news(late) or changed

    def _news(self, responses: Iterable[Any]) -> bool:
        """Whether untagged responses report a change: EXPUNGE, FETCH (flags), or an EXISTS count other than
        the last one seen in this folder (some servers repeat an unchanged EXISTS on every NOOP: that must
        not be news, or a watcher would NOOP and push in a loop)."""
        news = False
        for response in responses:
            if len(response) < 2 or response[1] not in _CHANGE_RESPONSES:
                continue
            if response[1] == b"EXISTS":
                seen = (self.selected, response[0])
                news = news or seen != self._exists_seen
                self._exists_seen = seen
            else:
                news = True
        return news
