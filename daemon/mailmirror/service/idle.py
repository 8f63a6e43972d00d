"""Push: an IDLE watcher per folder in a pair's `schedule.idle`.

A watcher keeps an IDLE connection (RFC 2177) on one source folder, re-issues IDLE before the 29-minute
limit, reconnects with backoff, and calls back when the server reports news (EXISTS, EXPUNGE, FETCH), so
that the daemon runs a pass of that folder. It speaks to the server only through `Session`: every error it
sees is mailmirror's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mailmirror.config.config_file import Config
from mailmirror.config.pair import Pair
from mailmirror.errors import MailmirrorError
from mailmirror.imap.session import Session
from mailmirror.imap.types import FolderMissing

log = logging.getLogger(__name__)

IDLE_RENEW_SECONDS = 25 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
MISSING_FOLDER_RETRY_SECONDS = 300.0  # an IDLE folder that does not exist (yet): looked for again this often
MAX_BACKOFF_SECONDS = 300.0


class IdleWatcher(threading.Thread):
    """Keeps an IDLE connection on one source folder and calls `changed` when the server reports news."""

    def __init__(
        self,
        pair_name: str,
        pair: Pair,
        config: Config,
        folder: str,
        changed: Callable[[], None],
        failed: Callable[[MailmirrorError], None] = lambda error: None,
    ) -> None:
        super().__init__(name=f"idle:{pair_name}:{folder}", daemon=True)
        self.failed = failed
        self.pair_name = pair_name
        self.account_name = pair.source
        self.account = config.accounts[pair.source]
        self.folder = folder
        self.changed = changed
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._watch()
                backoff = 1.0
            except FolderMissing:
                backoff = max(backoff, MISSING_FOLDER_RETRY_SECONDS)
                log.warning(
                    "%s: schedule.idle names '%s', which the source account '%s' does not have (or cannot "
                    "open): fix schedule.idle; looking again in %.0f s (the scheduled passes go on)",
                    self.pair_name,
                    self.folder,
                    self.account_name,
                    backoff,
                )
                self.stopping.wait(backoff)
            except MailmirrorError as error:
                self.failed(error)
                log.warning(
                    "%s: IDLE on %s interrupted (%s); reconnecting in %.0f s",
                    self.pair_name,
                    self.folder,
                    error,
                    backoff,
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception as error:  # a bug: never a dead watcher (nor a thread traceback on stderr)
                log.error(
                    "%s: IDLE watcher on %s failed (%s: %s; a bug, please report it); restarting in %.0f s",
                    self.pair_name,
                    self.folder,
                    type(error).__name__,
                    error,
                    backoff,
                )
                log.debug("IDLE watcher failure", exc_info=True)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _watch(self) -> None:
        with Session.open(self.account_name, self.account) as session:
            if not session.has("IDLE"):
                log.warning(
                    "%s: the source server does not offer IDLE; %s is synced on schedule only",
                    self.pair_name,
                    self.folder,
                )
                self.stopping.wait()
                return
            session.select(self.folder, readonly=True)
            log.info("%s: watching %s with IDLE", self.pair_name, self.folder)
            self.changed()  # mail may have arrived while this watcher was (re)connecting
            while not self.stopping.is_set():
                if session.wait_for_changes(self.stopping, IDLE_RENEW_SECONDS):
                    self.changed()
