"""The executor: one pass of one pair, applying the planner's actions over IMAP and recording them in state.

PairPass takes the pair's locks, opens both accounts, maps the folders, hands the folders that changed to
the transfer workers (FolderPass each), deletes folders gone from the source when asked, and reports.

Safety rules enforced by the executor:
- the source is only ever EXAMINEd and read with BODY.PEEK (never modified, \\Seen never set);
- every append is journalled as pending (durably) before it is sent, and marked done only after the
  destination confirmed it; pending entries left by a crash are resolved, by fingerprint among the
  messages that arrived on the destination since, before a folder is planned again;
- nothing is deleted unless the pair asks (deletions.*).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING

from mailmirror.engine.context import FolderOrder, PassContext, utc_now
from mailmirror.engine.deletions import FolderDeletion, delete_folders, plan_missing_folders
from mailmirror.engine.folder_pass import FolderPass, FolderPreview
from mailmirror.engine.folders import FolderView, list_and_map
from mailmirror.engine.outcome import (
    DELETED_FOLDER_RULE,
    FolderReport,
    LogProgress,
    PairReport,
    Progress,
    pair_sides,
    run_outcome,
)
from mailmirror.engine.renames import follow_renames
from mailmirror.engine.workers import ExtraConnections, Transfer, Worker
from mailmirror.errors import (
    ConfigError,
    InternalError,
    LockedError,
    MailmirrorError,
    ServerRefused,
    StateStorageError,
    Stopped,
)
from mailmirror.imap.session import Session
from mailmirror.imap.types import FolderMissing
from mailmirror.state.locks import DestinationLock, PairLock, default_lock_dir
from mailmirror.state.storage_errors import state_error
from mailmirror.state.store import StateStore

if TYPE_CHECKING:
    from mailmirror.config.config_file import Config
    from mailmirror.config.pair import Pair
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.imap.interface import Connect, ImapSession

log = logging.getLogger(__name__)


class PairPass:
    """One pass of one pair: open both accounts, map folders, sync each folder, report."""

    dry_run = False  # PairPreview: plan and report, write nothing
    folder_pass: type[FolderPass] = FolderPass

    def __init__(
        self,
        name: str,
        pair: Pair,
        config: Config,
        store: StateStore,
        progress: Progress | None = None,
        *,
        full: bool = False,
        force_deletions: bool = False,
        measure: bool = False,
        only_folders: Collection[str] | None = None,
        stop: threading.Event | None = None,
        slots: ExtraConnections | None = None,
        connect: Connect = Session.open,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.ctx = PassContext(
            name,
            pair,
            config,
            store,
            progress or LogProgress(),
            connect,
            stop=stop,
            full=full,
            force_deletions=force_deletions,
            clock=clock,
        )
        self.name = name
        self.pair = pair
        self.config = config
        self.store = store
        self.slots = slots
        self.workers = 1
        self.measure = measure
        self.only_folders = set(only_folders) if only_folders is not None else None
        self.report = PairReport(name, dry_run=self.dry_run)
        self.order = FolderOrder(store, name, pair.messages.skip_cross_folder_duplicates)

    def run(self) -> PairReport:
        lock = PairLock(self.config.state.path, self.name)
        writer = self._destination_lock()
        try:
            lock.acquire()
            if not writer.acquire(self.ctx.interrupted):
                raise Stopped(f"pair '{self.name}': not started (stop requested)")
        except (LockedError, Stopped, ConfigError) as error:
            lock.release()
            self.report.error = error
            self.report.finished = time.monotonic()
            return self.report
        try:
            return self._run_recorded()
        finally:
            writer.release()
            lock.release()

    def _destination_lock(self) -> DestinationLock:
        account = self.config.accounts[self.pair.destination]
        directory = self.config.daemon.lock_dir or default_lock_dir()
        source = self.config.source_path
        holder = f"pair '{self.name}'{f' of {source}' if source else ''}, state {self.config.state.path}"
        return DestinationLock(directory, account.identity, self.pair.destination, holder)

    def wanted_workers(self) -> int:
        """transfer.workers, at most each account's max_connections; 1 when folders must go in order."""
        if self.pair.messages.skip_cross_folder_duplicates:
            return 1
        return max(
            1,
            min(
                self.pair.transfer.workers,
                self.ctx.source_account.max_connections,
                self.ctx.destination_account.max_connections,
            ),
        )

    def _run_recorded(self) -> PairReport:
        """The pass, recorded as a run in the state."""
        try:
            run_id = self.store.start_run(self.name)
        except sqlite3.Error as error:  # e.g. a full disk: nothing done yet
            self.report.error = state_error(self.store.path, error, "write")
            self.report.finished = time.monotonic()
            return self.report
        try:
            self._connected()
        finally:
            self._finish_run(run_id)
        return self.report

    def _connected(self) -> None:
        """Both accounts logged in for the pass; its error, if any, in the report."""
        try:
            with (
                self.ctx.connect(self.pair.source, self.ctx.source_account) as source,
                self.ctx.connect(self.pair.destination, self.ctx.destination_account) as destination,
            ):
                self._run(source, destination)
        except MailmirrorError as error:
            self.report.error = error
        except sqlite3.Error as error:  # the machine's fault (disk full, I/O error), not a bug
            log.debug("%s: state database error", self.name, exc_info=True)
            self.report.error = state_error(self.store.path, error, "write")
        except Exception as error:  # a bug: recorded as such, so that the daemon backs off and goes on
            log.debug("%s: internal error", self.name, exc_info=True)
            self.report.error = InternalError(
                f"pair '{self.name}': internal error ({type(error).__name__}: {error}); this is a bug, please "
                "report it (mailmirror -v shows the traceback)"
            )
        finally:
            self.report.finished = time.monotonic()

    def _finish_run(self, run_id: int) -> None:
        try:
            self.store.finish_run(
                run_id,
                outcome=run_outcome(self.report),
                copied=self.report.copied,
                failed=self.report.failed,
                bytes_copied=self.report.bytes_copied,
                error=str(self.report.error) if self.report.error else None,
                adopted=self.report.total("adopted"),
                skipped=self.report.skipped,
            )
        except sqlite3.Error as error:
            if self.report.error is None or not isinstance(self.report.error, StateStorageError):
                self.report.error = state_error(self.store.path, error, "write")

    def _run(self, source: ImapSession, destination: ImapSession) -> None:
        known = {folder.src_folder: folder.dst_folder for folder in self.store.folders(self.name)}
        source_view, destination_view, mappings = list_and_map(self.pair, source, destination, known)
        self.order.folders = [mapping.source for mapping in mappings]
        if self.only_folders is not None and self.pair.messages.skip_cross_folder_duplicates:
            # a folder's copies depend on the folders that come before it: a push pass takes them too
            # (unchanged ones cost nothing), so that a message is kept by the folder that ranks first
            last = max((self.order.folders.index(f) for f in self.only_folders if f in self.order.folders), default=-1)
            self.only_folders |= set(self.order.folders[: last + 1])
        sides = _Sides(source, destination, source_view, destination_view)
        folders = self._folders_to_pass(mappings, sides)
        first = Worker(self.ctx, 0, source, destination)
        try:
            transfer = Transfer(self.ctx, first, self.wanted_workers(), self.slots)
            try:
                transfer.run(folders)
            finally:
                self.workers = transfer.workers
            if self.pair.deletions.delete_missing_folders and self.only_folders is None:
                writer = first.sessions()[1]
                gone = plan_missing_folders(self.ctx, self.report.folders, source_view, writer, sides.existing)
                self._delete_folders(writer, gone)
        finally:
            if first.source is not source or first.destination is not destination:
                first.close()  # sessions it reopened after a cut connection (the first ones are closed by run())
        if self.only_folders is None:
            self._record_counts()

    def _delete_folders(self, destination: ImapSession, gone: list[FolderDeletion]) -> None:
        delete_folders(self.ctx, destination, gone)

    def _record_counts(self) -> None:
        """After a full pass: both sides' counts in the report and the state; the lag of folders gone."""
        mapped = [f for f in self.report.folders if f.rule != DELETED_FOLDER_RULE]
        self.report.sides = pair_sides(mapped)
        self.store.prune_backlog(self.name, self.order.folders)
        counts = [(f.source, f.destination, f.source_messages, f.destination_messages) for f in mapped]
        self.store.record_folder_counts(self.name, counts)

    def _folders_to_pass(self, mappings: list[FolderMapping], sides: _Sides) -> list[FolderPass]:
        """The folders to open in this pass (created on the destination when missing); the others are
        reported as they are."""
        renamed = follow_renames(
            self.name,
            self.store,
            sides.source,
            sides.destination,
            mappings,
            sides.source_view,
            sides.existing,
            self.pair.messages.identity_headers,
            dry_run=self.dry_run,
        )
        needs_attention = self.store.folders_needing_attention(self.name, self.ctx.clock())
        folders: list[FolderPass] = []
        for mapping in mappings:
            if not mapping.selectable:  # a \Noselect parent: its children imply it on the destination
                continue
            if self.only_folders is not None and mapping.source not in self.only_folders:
                continue
            self.ctx.check_stop()
            if self.pair.folders.skip_empty and not sides.holds_or_has_messages(mapping):
                continue
            report = FolderReport(mapping.source, mapping.destination, mapping.rule, dry_run=self.dry_run)
            report.renamed_from = renamed.get(mapping.source)
            report.merged_into = mapping.merged_into
            self.report.folders.append(report)
            try:
                self._open_folder(mapping, report, sides)
                if report.created or mapping.source in needs_attention or not self._unchanged(mapping, report, sides):
                    folder = self.folder_pass(self.ctx, self.order, sides.source, sides.destination, mapping, report)
                    folders.append(folder)
                    continue
            except (ServerRefused, FolderMissing) as error:
                report.error = str(error)
                log.error("%s: folder %s: %s", self.name, mapping.source, error)
            self.ctx.progress.folder_finished(self.name, report)
        return folders

    def _open_folder(self, mapping: FolderMapping, report: FolderReport, sides: _Sides) -> None:
        """Create the destination folder (a dry run notes it), subscribe it, measure both (plan)."""
        source, destination = sides.source, sides.destination
        if mapping.destination not in sides.existing:
            report.created = True
            self._create_folder(destination, mapping.destination)
            sides.existing.add(mapping.destination)
        if (
            self.pair.folders.subscribe
            and mapping.source in sides.source_view.subscribed(source)
            and mapping.destination not in sides.destination_view.subscribed(destination)
        ):
            self._subscribe(destination, mapping.destination)
        if self.measure:
            report.source_size = source.folder_size(mapping.source)
            if mapping.destination not in self.order.to_create:
                report.destination_size = destination.folder_size(mapping.destination)

    def _create_folder(self, destination: ImapSession, name: str) -> None:
        destination.create_folder(name)

    def _subscribe(self, destination: ImapSession, name: str) -> None:
        destination.subscribe(name)

    def _unchanged(self, mapping: FolderMapping, report: FolderReport, sides: _Sides) -> bool:
        """The fast path: a folder whose status on both sides is what the last pass left is not even
        opened. Needs HIGHESTMODSEQ (CONDSTORE) on the source to know that no flag changed."""
        if self.ctx.full or mapping.destination in self.order.to_create:  # a dry run merging into a new folder
            return False
        known = self.store.folder(self.name, mapping.source)
        if known is None:
            return False
        src = sides.source_view.status(sides.source, mapping.source)
        dst = sides.destination_view.status(sides.destination, mapping.destination)
        flags_unchanged = not self.pair.flags.sync or (
            src.highestmodseq is not None and src.highestmodseq == known.src_highestmodseq
        )
        unchanged = (
            flags_unchanged
            and src.uidnext > 0  # 0: the server's STATUS did not say (Courier-like): open the folder
            and (src.uidvalidity, src.uidnext, src.messages)
            == (known.src_uidvalidity, known.src_uidnext, known.src_messages)
            and dst.uidvalidity == known.dst_uidvalidity
            and known.dst_folder == mapping.destination
        )
        if unchanged:
            report.unchanged = True
            report.source_messages = src.messages
            report.destination_messages = dst.messages
        return unchanged


class PairPreview(PairPass):
    """The dry run of a pass (sync --dry-run, plan): the same listing and planning, reported; no lock
    taken, no run recorded, nothing created, subscribed, copied or deleted anywhere."""

    dry_run = True
    folder_pass = FolderPreview

    def run(self) -> PairReport:
        self._connected()
        return self.report

    def wanted_workers(self) -> int:
        return 1  # folders in order: a dry run of skip_cross_folder_duplicates plans them one after the other

    def _create_folder(self, destination: ImapSession, name: str) -> None:
        self.order.to_create.add(name)

    def _subscribe(self, destination: ImapSession, name: str) -> None:
        pass

    def _delete_folders(self, destination: ImapSession, gone: list[FolderDeletion]) -> None:
        pass  # reported as they would be deleted

    def _record_counts(self) -> None:
        pass


class _Sides:
    """Both accounts of a pass: their sessions, folder views, and the destination folders that exist."""

    def __init__(
        self, source: ImapSession, destination: ImapSession, source_view: FolderView, destination_view: FolderView
    ) -> None:
        self.source = source
        self.destination = destination
        self.source_view = source_view
        self.destination_view = destination_view
        self.existing = {folder.name for folder in destination_view.folders}

    def holds_or_has_messages(self, mapping: FolderMapping) -> bool:
        """folders.skip_empty: a folder is passed when its destination folder exists or it holds mail."""
        if mapping.destination in self.existing:
            return True
        try:
            return self.source_view.status(self.source, mapping.source).messages > 0
        except FolderMissing:
            return False
