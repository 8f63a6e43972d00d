"""The executor: one pass of one pair, applying the planner's actions over IMAP and recording them in state.

Safety rules enforced here:
- the source is only ever EXAMINEd and read with BODY.PEEK (never modified, \\Seen never set);
- every append is journalled as pending (durably) before it is sent, and marked done only after the
  destination confirmed it; pending entries left by a crash are resolved, by fingerprint among the
  messages that arrived on the destination since, before a folder is planned again;
- nothing is deleted anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol

from mailmirror.errors import (
    ConfigError,
    ConnectionFailure,
    InternalError,
    LockedError,
    MailmirrorError,
    ServerRefused,
    StateStorageError,
    Stopped,
)
from mailmirror.identity import fingerprint, header_fields_to_fetch, without_size
from mailmirror.imap import (
    AppendRefused,
    Folder,
    FolderMissing,
    FolderVanished,
    MailboxStatus,
    MessageToAppend,
    Session,
    uid_set,
)
from mailmirror.locks import DestinationLock, PairLock, default_lock_dir
from mailmirror.mapping import WELL_KNOWN_NAMES, FolderMapping, Namespace, pair_mappings, pattern_matches
from mailmirror.planner import (
    Copy,
    Deletions,
    DestinationMessage,
    FlagRules,
    FolderPlan,
    Policy,
    SourceMessage,
    group_flag_changes,
    plan_destination_deletions,
    plan_folder,
)
from mailmirror.renames import follow_renames
from mailmirror.sessions import Connect, ImapSession
from mailmirror.state import FolderState, LateWriteWatch, StateStore, SyncedMessage, state_error
from mailmirror.transfer import ByteBudget, RateLimit, backoff_delay, bound_heap, rate_limit, split_evenly

if TYPE_CHECKING:
    from mailmirror.config import Config, Pair

log = logging.getLogger(__name__)

#: Default batch bounds (transfer.batch_size / batch_messages): a batch of bodies in memory is at most
#: this many bytes (one larger message goes alone).
BATCH_BYTES = 8 * 1024 * 1024
BATCH_MESSAGES = 100
DELETED_FOLDER_RULE = "delete folder"  # the rule of a FolderReport that stands for a deleted folder


@dataclass
class FolderReport:
    source: str
    destination: str
    rule: str
    created: bool = False
    source_messages: int = 0
    destination_messages: int | None = None  # after the pass (None: not known)
    copied: int = 0
    adopted: int = 0
    flags_updated: int = 0
    bytes_copied: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None
    dropped_keywords: frozenset[str] = frozenset()
    deleted: int = 0  # on the destination (deletions.destination: mirror)
    source_deleted: int = 0  # on the source after a confirmed copy (deletions.source: after_copy)
    unchanged: bool = False  # skipped by the fast path: both sides as the last pass left them
    dry_run: bool = False
    renamed_from: str | None = None  # the source folder's previous name (renamed on the destination too)
    #: the earlier source folder whose destination folder this one shares (a merge a rule asked for)
    merged_into: str | None = None
    #: copies the destination stored with other bytes than it was sent: (source UID, what differs)
    altered: list[tuple[int, str]] = field(default_factory=list)
    #: measured for `mailmirror plan`: (messages, bytes) on each side; None when not measured or absent
    source_size: tuple[int, int] | None = None
    destination_size: tuple[int, int] | None = None
    #: exactly once not proven yet: appends of a lost connection may still execute late (the reason)
    unresolved: str | None = None
    late_duplicates_removed: int = 0  # late copies of our own lost appends, removed from the destination

    @property
    def complete(self) -> bool:
        return self.error is None and not self.failed and self.unresolved is None


@dataclass
class PairReport:
    pair: str
    dry_run: bool = False
    folders: list[FolderReport] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: MailmirrorError | None = None
    #: after a full pass: side ("source", "destination") -> (folders, messages) of the mapped folders
    sides: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def total(self, attribute: str) -> int:
        return sum(int(getattr(folder, attribute)) for folder in self.folders)

    @property
    def copied(self) -> int:
        return self.total("copied")

    @property
    def bytes_copied(self) -> int:
        return self.total("bytes_copied")

    @property
    def failed(self) -> int:
        return sum(len(folder.failed) for folder in self.folders)

    @property
    def skipped(self) -> int:
        return sum(len(folder.skipped) for folder in self.folders)

    @property
    def altered(self) -> int:
        return sum(len(folder.altered) for folder in self.folders)

    @property
    def complete(self) -> bool:
        return self.error is None and all(folder.complete for folder in self.folders)


class Progress(Protocol):
    """Told of each folder's copies. Several folders (transfer workers) and several pairs (`sync` of many
    pairs) may be under way at once, so every call names its pair and source folder."""

    def folder_started(self, pair: str, mapping: FolderMapping, messages: int, size: int) -> None: ...
    def advance(self, pair: str, folder: str, messages: int, size: int) -> None: ...
    def folder_finished(self, pair: str, report: FolderReport) -> None: ...


class LogProgress:
    """Plain log lines: for systemd, pipes and files."""

    def folder_started(self, pair: str, mapping: FolderMapping, messages: int, size: int) -> None:
        if messages:
            log.info(
                "%s: %s -> %s: copying %d messages (%s)",
                pair,
                mapping.source,
                mapping.destination,
                messages,
                human_bytes(size),
            )

    def advance(self, pair: str, folder: str, messages: int, size: int) -> None:
        pass

    def folder_finished(self, pair: str, report: FolderReport) -> None:
        log.log(
            logging.DEBUG if report.unchanged else logging.INFO,
            "%s: %s -> %s: %d %s, %d already there, %d flags updated, %d deleted, %d skipped, %d failed%s%s",
            pair,
            report.source,
            report.destination,
            report.copied,
            "to copy (dry run)" if report.dry_run else "copied",
            report.adopted,
            report.flags_updated,
            report.deleted,
            len(report.skipped),
            len(report.failed),
            f", {len(report.altered)} altered by the destination server" if report.altered else "",
            f" (error: {report.error})" if report.error else "",
        )


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _batches(copies: Sequence[Copy], max_bytes: int, max_count: int) -> Iterator[list[Copy]]:
    batch: list[Copy] = []
    size = 0
    for action in copies:
        if batch and (size + action.message.size > max_bytes or len(batch) >= max_count):
            yield batch
            batch, size = [], 0
        batch.append(action)
        size += action.message.size
    if batch:
        yield batch


class PairPass:
    """One pass of one pair: open both accounts, map folders, sync each folder, report."""

    def __init__(
        self,
        name: str,
        pair: Pair,
        config: Config,
        store: StateStore,
        progress: Progress | None = None,
        *,
        dry_run: bool = False,
        full: bool = False,
        force_deletions: bool = False,
        measure: bool = False,
        only_folders: Collection[str] | None = None,
        stop: threading.Event | None = None,
        slots: ExtraConnections | None = None,
        connect: Connect = Session.open,
    ) -> None:
        self.name = name
        self.connect = connect  # how sessions are opened: the real IMAP client unless a test models one
        self.slots = slots
        self.lock = threading.RLock()  # the report and progress, shared by the workers
        self.abort = threading.Event()  # a worker failed for good: the others stop between batches
        self.workers = 1
        self.budget = ByteBudget(pair.transfer.memory)  # message bytes in memory, over all workers
        self.measure = measure
        self.only_folders = set(only_folders) if only_folders is not None else None
        self.stop = stop
        self.full = full
        self.force_deletions = force_deletions
        self.pair = pair
        self.config = config
        self.store = store
        self.progress: Progress = progress or LogProgress()
        self.dry_run = dry_run
        self.header_fields = header_fields_to_fetch(pair.messages.identity_headers)
        self.report = PairReport(name, dry_run=dry_run)
        self.flag_rules = FlagRules(tuple(re.compile(p) for p in pair.flags.drop), dict(pair.flags.rename))
        self.order: list[str] = []  # every mapped source folder, in the order a full pass takes them
        self.to_create: set[str] = set()  # dry run: destination folders a pass would create
        #: dry run: fingerprints each source folder would copy or adopt (kept_before of the folders after it)
        self.dry_kept: dict[str, frozenset[str]] = {}

    def kept_before(self, src_folder: str) -> frozenset[str]:
        """skip_cross_folder_duplicates: fingerprints copied from the folders processed before this one."""
        if not self.pair.messages.skip_cross_folder_duplicates or src_folder not in self.order:
            return frozenset()
        before = self.order[: self.order.index(src_folder)]
        planned = frozenset().union(*(self.dry_kept.get(folder, frozenset()) for folder in before))
        return self.store.fingerprints(self.name, before) | planned

    def run(self) -> PairReport:
        lock = None if self.dry_run else PairLock(self.config.state.path, self.name)
        writer = None if self.dry_run else self._destination_lock()
        try:
            if lock is not None:
                lock.acquire()
            if writer is not None and not writer.acquire(self.interrupted):
                raise Stopped(f"pair '{self.name}': not started (stop requested)")
        except (LockedError, Stopped, ConfigError) as error:
            if lock is not None:
                lock.release()
            self.report.error = error
            self.report.finished = time.monotonic()
            return self.report
        try:
            return self._run_locked()
        finally:
            if writer is not None:
                writer.release()
            if lock is not None:
                lock.release()

    def _destination_lock(self) -> DestinationLock:
        account = self.config.accounts[self.pair.destination]
        directory = self.config.daemon.lock_dir or default_lock_dir()
        source = self.config.source_path
        holder = f"pair '{self.name}'{f' of {source}' if source else ''}, state {self.config.state.path}"
        return DestinationLock(directory, account.identity, self.pair.destination, holder)

    def interrupted(self) -> bool:
        """A stop request, or another worker failed: what check_stop raises on."""
        return (self.stop is not None and self.stop.is_set()) or self.abort.is_set()

    def check_stop(self) -> None:
        """Between batches and folders: a stop request (SIGTERM) ends the pass here, state consistent."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped(f"pair '{self.name}': pass stopped (shutdown requested); the next pass goes on")
        if self.abort.is_set():
            raise Stopped(f"pair '{self.name}': pass stopped (another worker failed)")

    def wanted_workers(self) -> int:
        """transfer.workers, at most each account's max_connections; 1 when folders must go in order."""
        if self.dry_run or self.pair.messages.skip_cross_folder_duplicates:
            return 1
        accounts = self.config.accounts
        return max(
            1,
            min(
                self.pair.transfer.workers,
                accounts[self.pair.source].max_connections,
                accounts[self.pair.destination].max_connections,
            ),
        )

    def _run_locked(self) -> PairReport:
        try:
            run_id = None if self.dry_run else self.store.start_run(self.name)
        except sqlite3.Error as error:  # e.g. a full disk: nothing done yet
            self.report.error = state_error(self.store.path, error, "write")
            self.report.finished = time.monotonic()
            return self.report
        try:
            source_account = self.config.accounts[self.pair.source]
            destination_account = self.config.accounts[self.pair.destination]
            with (
                self.connect(self.pair.source, source_account) as source,
                self.connect(self.pair.destination, destination_account) as destination,
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
            if run_id is not None:
                self._finish_run(run_id)
        return self.report

    def _finish_run(self, run_id: int) -> None:
        try:
            self.store.finish_run(
                run_id,
                outcome=_outcome(self.report),
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
        rules = self.pair.folders
        known = {folder.src_folder: folder.dst_folder for folder in self.store.folders(self.name)}
        source_view, destination_view, mappings = list_and_map(self.pair, source, destination, known)
        self.order = [mapping.source for mapping in mappings]
        if self.only_folders is not None and self.pair.messages.skip_cross_folder_duplicates:
            # a folder's copies depend on the folders that come before it: a push pass takes them too
            # (unchanged ones cost nothing), so that a message is kept by the folder that ranks first
            last = max((self.order.index(f) for f in self.only_folders if f in self.order), default=-1)
            self.only_folders |= set(self.order[: last + 1])
        existing = {folder.name for folder in destination_view.folders}
        renamed = follow_renames(
            self.name,
            self.store,
            source,
            destination,
            mappings,
            source_view,
            existing,
            self.pair.messages.identity_headers,
            dry_run=self.dry_run,
        )
        needs_attention = self.store.folders_needing_attention(self.name)
        jobs: list[FolderPass] = []
        for mapping in mappings:
            if not mapping.selectable:  # a \Noselect parent: its children imply it on the destination
                continue
            if self.only_folders is not None and mapping.source not in self.only_folders:
                continue
            self.check_stop()
            if (
                rules.skip_empty
                and mapping.destination not in existing
                and not self._has_messages(source_view, source, mapping)
            ):
                continue
            report = FolderReport(mapping.source, mapping.destination, mapping.rule, dry_run=self.dry_run)
            report.renamed_from = renamed.get(mapping.source)
            report.merged_into = mapping.merged_into
            self.report.folders.append(report)
            try:
                if mapping.destination not in existing:
                    report.created = True
                    if not self.dry_run:
                        destination.create_folder(mapping.destination)
                    else:
                        self.to_create.add(mapping.destination)
                    existing.add(mapping.destination)
                if (
                    rules.subscribe
                    and mapping.source in source_view.subscribed(source)
                    and mapping.destination not in destination_view.subscribed(destination)
                    and not self.dry_run
                ):
                    destination.subscribe(mapping.destination)
                if self.measure:
                    report.source_size = source.folder_size(mapping.source)
                    if mapping.destination not in self.to_create:
                        report.destination_size = destination.folder_size(mapping.destination)
                if (
                    report.created
                    or mapping.destination in self.to_create  # a dry run merging into a folder to create
                    or mapping.source in needs_attention
                    or not self._unchanged(mapping, report, source, destination, source_view, destination_view)
                ):
                    jobs.append(FolderPass(self, source, destination, mapping, report))
                    continue
            except (ServerRefused, FolderMissing) as error:
                report.error = str(error)
                log.error("%s: folder %s: %s", self.name, mapping.source, error)
            self.progress.folder_finished(self.name, report)
        first = _Worker(self, 0, source, destination)
        try:
            Transfer(self, first).run(jobs)
            if self.pair.deletions.delete_missing_folders and self.only_folders is None:
                self._delete_missing_folders(source_view, first.sessions()[1], existing)
        finally:
            if first.source is not source or first.destination is not destination:
                first.close()  # sessions it reopened after a cut connection (the first ones are closed by run())
        if self.only_folders is None and not self.dry_run:
            mapped = [f for f in self.report.folders if f.rule != DELETED_FOLDER_RULE]
            self.report.sides = _sides(mapped)
            self.store.prune_pending(self.name, self.order)
            counts = [(f.source, f.destination, f.source_messages, f.destination_messages) for f in mapped]
            self.store.record_folder_counts(self.name, counts)

    def _delete_missing_folders(self, source_view: FolderView, destination: ImapSession, existing: set[str]) -> None:
        """deletions.delete_missing_folders: destination folders whose source folder is gone.

        Only folders this pair synced (known to the state), never INBOX, never one holding messages
        mailmirror did not copy; and not more than deletions.max_share of the pair's folders at once
        unless forced: a source that suddenly lists nothing must not empty the destination.
        """
        if any(report.error for report in self.report.folders):
            log.warning("%s: destination folders of deleted source folders are kept: this pass had errors", self.name)
            return
        listed = {folder.name for folder in source_view.folders}
        known = self.store.folders(self.name)
        gone = [f for f in known if f.src_folder not in listed and f.dst_folder.upper() != "INBOX"]
        gone = [f for f in gone if f.dst_folder in existing]
        if not gone:
            return
        rules = self.pair.deletions
        if len(gone) > rules.max_share * len(known) and not (rules.force or self.force_deletions):
            report = FolderReport(gone[0].src_folder, gone[0].dst_folder, DELETED_FOLDER_RULE)
            report.error = (
                f"refusing to delete {len(gone)} of {len(known)} destination folders whose source folder is gone: "
                f"more than deletions.max_share ({rules.max_share:.0%}); check the source account, then use "
                "--force-deletions"
            )
            log.error("%s: %s", self.name, report.error)
            self.report.folders.append(report)
            return
        for state in gone:
            report = FolderReport(state.src_folder, state.dst_folder, DELETED_FOLDER_RULE)
            self.report.folders.append(report)
            ours = {m.dst_uid for m in self.store.messages(self.name, state.src_folder).values() if m.dst_uid}
            destination.select(state.dst_folder, readonly=True)
            held = destination.all_uids()
            others = set(held) - ours
            if others:
                report.error = (
                    f"not deleting destination folder '{state.dst_folder}': it holds {len(others)} messages "
                    "mailmirror did not copy"
                )
                log.warning("%s: %s", self.name, report.error)
                continue
            if not self.dry_run:
                destination.delete_folder(state.dst_folder)
                self.store.forget_folder(self.name, state.src_folder)
                log.warning(
                    "%s: deleted destination folder '%s' (its source folder '%s' is gone)",
                    self.name,
                    state.dst_folder,
                    state.src_folder,
                )
            report.deleted = len(held)

    @staticmethod
    def _has_messages(view: FolderView, session: ImapSession, mapping: FolderMapping) -> bool:
        try:
            return view.status(session, mapping.source).messages > 0
        except FolderMissing:
            return False

    def _unchanged(
        self,
        mapping: FolderMapping,
        report: FolderReport,
        source: ImapSession,
        destination: ImapSession,
        source_view: FolderView,
        destination_view: FolderView,
    ) -> bool:
        """The fast path: a folder whose status on both sides is what the last pass left is not even
        opened. Needs HIGHESTMODSEQ (CONDSTORE) on the source to know that no flag changed."""
        if self.full:
            return False
        known = self.store.folder(self.name, mapping.source)
        if known is None:
            return False
        src = source_view.status(source, mapping.source)
        dst = destination_view.status(destination, mapping.destination)
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


class ExtraConnections(Protocol):
    """Connection slots beyond a pass's first connection per side (the daemon's limits): taken without
    waiting, so that passes never wait on each other for them."""

    def try_acquire(self) -> bool: ...
    def release(self) -> None: ...


class _Worker:
    """One connection per side. Worker 0 starts with the pass's sessions; the others log in on their
    first task. After a cut connection or a throttling answer a worker logs in again on its next task."""

    def __init__(
        self, owner: PairPass, index: int, source: ImapSession | None = None, destination: ImapSession | None = None
    ) -> None:
        self.owner = owner
        self.index = index
        self.source = source
        self.destination = destination

    def sessions(self) -> tuple[ImapSession, ImapSession]:
        config, pair = self.owner.config, self.owner.pair
        if self.source is None:
            self.source = self.owner.connect(pair.source, config.accounts[pair.source])
            self.source.enable_condstore()
        if self.destination is None:
            self.destination = self.owner.connect(pair.destination, config.accounts[pair.destination])
            self.destination.enable_condstore()
        return self.source, self.destination

    def close(self) -> None:
        for session in (self.source, self.destination):
            if session is not None:
                session.close()
        self.source = self.destination = None


TaskKind = Literal["finish", "copy", "plan"]
_PRIORITY: dict[str, int] = {"finish": 0, "copy": 1, "plan": 2}


@dataclass
class _Task:
    kind: TaskKind
    folder: FolderPass
    copies: list[Copy] = field(default_factory=list)
    not_before: float = 0.0
    seq: int = 0


class Transfer:
    """The folders of one pass over `workers` connection pairs.

    Tasks: *plan* a folder (list, plan, flags, adoptions), *copy* a run of its messages (a large folder's
    copies are split into UID ranges for several workers), *finish* it (resolve unconfirmed appends,
    deletions, save the markers) once its last copy task is done. Finishing goes first, then copying,
    then planning more folders, so that a folder's plan is not held longer than needed.

    A throttling answer or a cut connection interrupts the task: the worker logs out, and the task (or,
    for a copy, the folder's remaining messages, once none of its copies is in flight and its journal
    is resolved) is retried after an exponential backoff, up to transfer.retries times per folder.
    """

    def __init__(self, owner: PairPass, first: _Worker) -> None:
        self.owner = owner
        self.first = first
        self.cond = threading.Condition()
        self.tasks: list[_Task] = []
        self.running = 0
        self.seq = 0
        self.failure: BaseException | None = None

    def run(self, jobs: Sequence[FolderPass]) -> None:
        if not jobs:
            return
        bound_heap()
        for job in jobs:
            self.put(_Task("plan", job))
        wanted = self.owner.wanted_workers()
        extra: list[threading.Thread] = []
        taken = 0
        for index in range(1, wanted):
            if self.owner.slots is not None:
                if not self.owner.slots.try_acquire():
                    break
                taken += 1
            worker = _Worker(self.owner, index)
            thread = threading.Thread(
                target=self._work, args=(worker,), name=f"{self.owner.name}-worker-{index}", daemon=True
            )
            extra.append(thread)
        self.owner.workers = 1 + len(extra)
        try:
            for thread in extra:
                thread.start()
            self._work(self.first)
            for thread in extra:
                thread.join()
        finally:
            if self.owner.slots is not None:
                for _ in range(taken):
                    self.owner.slots.release()
        if self.failure is not None:
            raise self.failure

    # -- the queue -----------------------------------------------------------------------------------

    def put(self, task: _Task) -> None:
        with self.cond:
            self.seq += 1
            task.seq = self.seq
            self.tasks.append(task)
            self.cond.notify_all()

    def _get(self) -> _Task | None:
        with self.cond:
            while True:
                if self.failure is None and self.owner.stop is not None and self.owner.stop.is_set():
                    try:  # a stop request ends the pass also while tasks wait for their backoff
                        self.owner.check_stop()
                    except Stopped as stopped:
                        self.failure = stopped
                        self.owner.abort.set()
                        self.cond.notify_all()
                if self.failure is not None:
                    return None
                now = time.monotonic()
                due = [t for t in self.tasks if t.not_before <= now]
                if due:
                    task = min(due, key=lambda t: (_PRIORITY[t.kind], t.seq))
                    self.tasks.remove(task)
                    self.running += 1
                    return task
                if not self.tasks and self.running == 0:
                    self.cond.notify_all()
                    return None
                timeout = min(t.not_before for t in self.tasks) - now if self.tasks else 0.5
                self.cond.wait(min(timeout, 0.5))  # and look at the stop request twice a second

    def _done(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self.cond:
            if self.failure is None:
                self.failure = error
            self.owner.abort.set()
            self.cond.notify_all()

    # -- the workers ---------------------------------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        try:
            while (task := self._get()) is not None:
                try:
                    self._do(worker, task)
                except FolderVanished as error:  # not a network problem: that folder is gone, the others go on
                    worker.close()
                    self._folder_error(task, str(error))
                except ConnectionFailure as error:  # Throttled too: retried after a backoff
                    worker.close()
                    self._interrupted(task, error)
                except (ServerRefused, FolderMissing) as error:
                    self._folder_error(task, str(error))
                except BaseException as error:  # Stopped, a bug: the pass ends
                    self._fail(error)
                finally:
                    self._done()
        finally:
            if worker is not self.first:
                worker.close()

    def _do(self, worker: _Worker, task: _Task) -> None:
        folder = task.folder
        if folder.report.error is not None and task.kind == "copy":
            self._copy_done(folder)  # the folder failed meanwhile: its other copies are not attempted
            return
        source, destination = worker.sessions()
        self.owner.check_stop()
        if task.kind == "plan":
            folder.bind(source, destination)
            copies = folder.prepare()
            if copies:
                self._put_copies(folder, copies)
            else:
                self.put(_Task("finish", folder))
        elif task.kind == "copy":
            folder.copy_run(source, destination, task.copies)
            self._copy_done(folder)
        else:
            folder.bind(source, destination)
            remaining = folder.finish()
            if remaining:
                self._put_copies(folder, remaining)
            else:
                with self.owner.lock:
                    self.owner.progress.folder_finished(self.owner.name, folder.report)

    def _put_copies(self, folder: FolderPass, copies: list[Copy]) -> None:
        rules = self.owner.pair.transfer
        if len(copies) > rules.split_above:
            runs = split_evenly(copies, self.owner.wanted_workers(), max(1, rules.split_above // 2))
        else:
            runs = [copies]
        log.debug(
            "%s: %s: copying %d messages in %d runs", self.owner.name, folder.mapping.source, len(copies), len(runs)
        )
        with self.cond:
            folder.outstanding += len(runs)
        for run in runs:
            self.put(_Task("copy", folder, run))

    def _copy_done(self, folder: FolderPass) -> None:
        with self.cond:
            folder.outstanding -= 1
            last = folder.outstanding == 0
        if last:  # after the backoff of any of its runs that was cut, not only of the last one
            self.put(_Task("finish", folder, not_before=folder.resume_after))

    def _interrupted(self, task: _Task, error: ConnectionFailure) -> None:
        folder = task.folder
        rules = self.owner.pair.transfer
        with self.cond:
            now = time.monotonic()
            if now >= folder.resume_after:  # workers of one folder cut by the same event count one retry
                folder.attempts += 1
            attempts = folder.attempts
            folder.resume_after = max(folder.resume_after, now + backoff_delay(attempts, rules.backoff.total_seconds()))
            delay = folder.resume_after - now
        if attempts > rules.retries:
            if task.kind == "copy":
                folder.interrupted = True
            self._fail(error)
            return
        log.warning(
            "%s: %s: %s; %s again in %.1fs (retry %d of %d)",
            self.owner.name,
            folder.mapping.source,
            error,
            "resuming" if task.kind == "copy" else "trying",
            delay,
            attempts,
            rules.retries,
        )
        if task.kind == "copy":
            folder.interrupted = True
            self._copy_done(folder)
        else:
            task.not_before = folder.resume_after
            self.put(task)

    def _folder_error(self, task: _Task, error: str) -> None:
        folder = task.folder
        with self.owner.lock:
            if folder.report.error is None:
                folder.report.error = error
        log.error("%s: folder %s: %s", self.owner.name, folder.mapping.source, error)
        if task.kind == "copy":
            self._copy_done(folder)  # its finish resolves what is in flight, keeps the old markers
        else:
            with self.owner.lock:
                self.owner.progress.folder_finished(self.owner.name, folder.report)


def duplicate_priority_order(
    mappings: Sequence[FolderMapping],
    source_folders: Sequence[Folder],
    priority: Sequence[str],
    source_ns: Namespace,
) -> list[FolderMapping]:
    """skip_cross_folder_duplicates: the folders named in duplicate_priority first (in that order), then the
    others in the usual order, and the All Mail folder (\\All, else by its well-known name) last: its copy of a
    message loses."""
    all_mail = {folder.name for folder in source_folders if folder.special_use == "\\All"}
    if not all_mail:  # a server that does not announce \All (or a listing without SPECIAL-USE)
        known = {name.casefold() for name in WELL_KNOWN_NAMES["\\All"]}
        all_mail = {f.name for f in source_folders if source_ns.to_neutral(f.name).casefold() in known}

    def rank(mapping: FolderMapping) -> tuple[int, int]:
        if mapping.source in all_mail:
            return (2, 0)
        for index, pattern in enumerate(priority):
            if pattern_matches(pattern, source_ns.to_neutral(mapping.source)):
                return (0, index)
        return (1, 0)

    return sorted(mappings, key=rank)  # stable: ties keep INBOX-first, alphabetical order


def _sides(folders: Sequence[FolderReport]) -> dict[str, tuple[int, int]]:
    """Folders and messages on each side; the destination's only when every folder's count is known."""
    sides = {"source": (len(folders), sum(f.source_messages for f in folders))}
    destination = [f.destination_messages for f in folders]
    if all(count is not None for count in destination):
        sides["destination"] = (len(folders), sum(count or 0 for count in destination))
    return sides


def _outcome(report: PairReport) -> str:
    if isinstance(report.error, Stopped):
        return "stopped"
    if report.error is not None:
        return "error"
    return "ok" if report.complete else "partial"


@dataclass
class FolderView:
    """One account's folder list, with statuses and subscriptions when the LIST answered them, else asked
    for on demand (STATUS per folder, LSUB once)."""

    folders: list[Folder]
    statuses: dict[str, MailboxStatus]
    subscriptions: set[str] | None

    def status(self, session: ImapSession, name: str) -> MailboxStatus:
        if name not in self.statuses:
            self.statuses[name] = session.status(name)
        return self.statuses[name]

    def subscribed(self, session: ImapSession) -> set[str]:
        if self.subscriptions is None:
            self.subscriptions = session.subscribed_folders()
        return self.subscriptions


def list_and_map(
    pair: Pair, source: ImapSession, destination: ImapSession, known: Mapping[str, str] | None = None
) -> tuple[FolderView, FolderView, list[FolderMapping]]:
    """Both accounts' folders (one LIST-STATUS each, special-use attributes asked for) and the pair's
    folder mapping, in the order a pass takes the folders. The one way sync, plan and verify map folders:
    they must never disagree about where a source folder goes. ``known``: source folder -> the destination
    folder the state syncs it into (a guessed mapping sticks to it: mapping.map_folders)."""
    rules = pair.folders
    source_view = FolderView(*source.list_folders_with_status())
    destination_view = FolderView(*destination.list_folders_with_status())
    mappings = pair_mappings(
        rules,
        source,
        destination,
        source_view.folders,
        destination_view.folders,
        subscribed=source_view.subscribed(source) if rules.subscribed_only else None,
        known=known,
    )
    if pair.messages.skip_cross_folder_duplicates:
        mappings = duplicate_priority_order(
            mappings,
            source_view.folders,
            pair.messages.duplicate_priority,
            Namespace(source.separator, source.prefix),
        )
    return source_view, destination_view, mappings


@dataclass(frozen=True)
class SourceListing:
    new_uids: list[int]  # source messages to plan as new (metadata to fetch)
    flags: dict[int, frozenset[str]]  # current flags of known messages that may have changed
    present: set[int] | None  # every UID now in the folder, when it was listed (None: nothing vanished)


class FolderPass:
    """Sync one mapped folder: resolve the journal, plan, store flags, copy in batches, record."""

    def __init__(
        self,
        owner: PairPass,
        source: ImapSession,
        destination: ImapSession,
        mapping: FolderMapping,
        report: FolderReport,
    ) -> None:
        self.owner = owner
        self.pair = owner.name
        self.store = owner.store
        self.source = source
        self.destination = destination
        self.mapping = mapping
        self.report = report
        self._search_cache: frozenset[int] | None = None
        # filled by prepare(), for the copy runs and finish()
        self.moving = owner.pair.deletions.source == "after_copy" and not owner.dry_run
        self.planned = False  # False: nothing to copy or finish (dry run)
        self.copies: list[Copy] = []
        self.deletions = Deletions()
        self.source_status = MailboxStatus(0, 0, 0, None)
        self.destination_status = MailboxStatus(0, 0, 0, None)
        # shared by the workers copying this folder (under the owner's lock)
        self.outstanding = 0  # copy runs queued or in flight
        self.attempts = 0  # retries after throttling / cut connections
        self.resume_after = 0.0  # time.monotonic() before which the folder's next try waits (backoff)
        self.unconfirmed = False  # some appends await confirmation (no UIDPLUS)
        self.interrupted = False  # a copy run was cut: resume the rest once the journal is resolved
        self.refused: set[int] = set()  # source UIDs that failed during this pass's copies
        self.removed_before_plan = 0  # late duplicates removed before planning (in destination_status)
        self.vanished_watched: list[int] = []  # expunged on the source, rows kept while a late copy is watched for

    def bind(self, source: ImapSession, destination: ImapSession) -> None:
        """The worker's sessions for planning or finishing (never two workers at once)."""
        self.source, self.destination = source, destination

    def run(self) -> None:
        """The whole folder with this pass's sessions, in one go (one worker)."""
        copies = self.prepare()
        while copies:
            self.copy_run(self.source, self.destination, copies)
            copies = self.finish()

    def prepare(self) -> list[Copy]:
        """Open both folders, resolve the journal, list, plan, apply flags and adoptions: the copies to make."""
        moving = self.moving
        # a retry (after a cut connection) starts the folder over: what the report says comes from this try
        self.report.skipped, self.report.failed = [], []
        source_status = self.source.select(self.mapping.source, readonly=not moving)
        self.report.source_messages = source_status.messages
        if self.owner.dry_run and self.mapping.destination in self.owner.to_create:
            self._plan_dry_into_new_folder()
            return []
        destination_status = self.destination.select(self.mapping.destination, readonly=self.owner.dry_run)
        known = self._known_state(source_status.uidvalidity, destination_status.uidvalidity)
        if known is None and not self.owner.dry_run:
            # Record which UIDVALIDITYs the journal's UIDs belong to before the first row is written (the
            # markers come when the folder is done): rows left by a crash must not be read against UIDs
            # a later UIDVALIDITY reset gave to other messages.
            self.store.save_folder(
                FolderState(
                    self.pair,
                    self.mapping.source,
                    self.mapping.destination,
                    source_status.uidvalidity,
                    destination_status.uidvalidity,
                )
            )
        self._resolve_pending(destination_status.uidnext)
        if not self.owner.dry_run:
            self._check_late_writes(expire=False)
            self.removed_before_plan = self.report.late_duplicates_removed  # were counted in this SELECT
        synced = {
            uid: m for uid, m in self.store.messages(self.pair, self.mapping.source).items() if m.status == "done"
        }
        listing = self._list_source(known, source_status, synced)
        new_messages = self._source_messages(listing.new_uids)
        for uid in sorted(set(listing.new_uids) - {m.uid for m in new_messages}):
            if not self.owner.dry_run:
                self._failed(uid, "the source did not return the message's size and headers (expunged meanwhile?)")
        destination_listing = (
            self._destination_candidates(known, synced) if new_messages and destination_status.messages else None
        )
        plan = plan_folder(
            new_messages,
            listing.flags,
            synced,
            destination_listing,
            self._policy(destination_status.permanent_flags),
        )
        deletions = self._plan_deletions(listing, synced, destination_status.messages)
        self._report_plan(plan, deletions)
        if self.owner.dry_run:
            self._report_dry(plan, deletions)
            return []
        self._record_failures(plan, listing)
        unreadable = len(self.report.failed) - len(plan.fail)  # listed, but their metadata did not come
        wanted = len(plan.copy) + len(plan.fail) + unreadable  # messages still to bring to the destination
        self.store.set_pending(self.pair, self.mapping.source, wanted)
        self._apply_flags_and_adoptions(plan)
        self.planned = True
        self.copies = list(plan.copy)
        self.deletions = deletions
        self.source_status, self.destination_status = source_status, destination_status
        self.owner.progress.folder_started(self.pair, self.mapping, len(plan.copy), plan.copy_bytes)
        return self.copies

    def finish(self) -> list[Copy]:
        """After the last copy run: resolve unconfirmed appends; resume the copies a cut run left (returned,
        for new copy runs); else deletions, moves and the folder's markers."""
        if not self.planned:
            return []
        if self.unconfirmed or self.interrupted:
            # SELECT again even when this session has the folder open: a server (Dovecot) shows another
            # session's appends only at a sync point, and a stale view would call stored messages missing
            reopened = self.destination.select(self.mapping.destination, readonly=False)
            self._resolve_pending(reopened.uidnext)
            self.unconfirmed = False
        if self.report.error is not None:
            return []  # keep the last pass's markers: the next pass looks at this folder again
        if self.interrupted:
            self.interrupted = False
            done = {uid for uid, m in self.store.messages(self.pair, self.mapping.source).items() if m.status == "done"}
            remaining = [c for c in self.copies if c.message.uid not in done and c.message.uid not in self.refused]
            if remaining:
                log.info("%s: %s: resuming: %d messages left to copy", self.pair, self.mapping.source, len(remaining))
                return remaining
        self._check_late_writes()  # also the watches this pass opened: it cannot claim what it cannot prove
        if self.vanished_watched and self.owner.pair.deletions.destination == "mirror" and not self.report.unresolved:
            self.report.unresolved = (
                f"{len(self.vanished_watched)} messages deleted on the source kept their copy while a late write "
                "of it was watched for; the next pass deletes it"
            )
        deletions, source_status, destination_status = self.deletions, self.source_status, self.destination_status
        if deletions.dst_uids and not deletions.refused:
            self.destination.ensure_selected(self.mapping.destination, readonly=False)
        self._apply_deletions(deletions)
        if self.moving:
            self.source.ensure_selected(self.mapping.source, readonly=False)
            source_status = self._delete_copied_from_source(source_status)
        self.report.source_messages = source_status.messages
        self.report.destination_messages = (
            destination_status.messages + self.report.copied - self.report.deleted - self.removed_before_plan
        )
        if deletions.refused:
            return []  # keep the last pass's markers, so that the next pass looks at the expunges again
        self.store.save_folder(
            FolderState(
                self.pair,
                self.mapping.source,
                self.mapping.destination,
                source_status.uidvalidity,
                destination_status.uidvalidity,
                source_status.uidnext,
                # the kept rows of expunged messages count as there: the next pass misses them, lists the folder
                # in full and forgets (mirror: deletes) them once their watch ended
                source_status.messages + len(self.vanished_watched),
                source_status.highestmodseq,
                destination_status.uidnext,
            )
        )
        return []

    # -- listing what changed ------------------------------------------------------------------------

    def _list_source(
        self, known: FolderState | None, status: MailboxStatus, synced: dict[int, SyncedMessage]
    ) -> SourceListing:
        """What is new, which flags may have changed, and (when it can have changed) which UIDs exist.

        First pass of a folder, `--full`, or unusable state: every UID and its flags (the slow path).
        Otherwise the incremental path: new messages are the UID range above the last pass's UIDNEXT;
        flags come from CONDSTORE ``CHANGEDSINCE`` when offered; expunges are looked for (UID SEARCH)
        only when the message count says something vanished.
        """
        waiting_for_search, old_enough = self.store.deferred_uids(self.pair, self.mapping.source)
        matches = self._search_matches() or frozenset()
        retry = [
            uid for uid in (*self.store.failed_uids(self.pair, self.mapping.source), *old_enough) if uid not in synced
        ] + [uid for uid in waiting_for_search if uid in matches and uid not in synced]
        if (
            known is None
            or not known.src_uidnext
            or known.src_messages is None
            or not status.uidnext
            or self.owner.full
        ):
            last = status.uidnext - 1 if status.uidnext else None
            everything = self.source.fetch_flags_changed(last, None) if status.messages else {}
            # a failure of a message gone since (refused, then deleted by the user) is not retried for ever;
            # never by a dry run: it takes no pair lock, and a real pass may have failed a message newer
            # than this listing
            if not self.owner.dry_run:
                gone = [uid for uid in retry if uid not in everything]
                self.store.clear_failures(self.pair, self.mapping.source, gone)
            return SourceListing(sorted(uid for uid in everything if uid not in synced), everything, set(everything))
        # Every UID above the last pass's UIDNEXT: new ones, and ones an interrupted pass already copied
        # (those have 'done' rows, are not new, but are present: never count them as expunged).
        in_range = self.source.uids_between(known.src_uidnext, status.uidnext - 1)
        fresh = [uid for uid in in_range if uid not in synced]
        flags: dict[int, frozenset[str]] = {}
        present: set[int] | None = None
        if self.owner.pair.flags.sync:
            condstore = self.source.has("CONDSTORE") and known.src_highestmodseq and status.highestmodseq
            if not condstore:
                flags = self.source.fetch_flags_changed(status.uidnext - 1, None)
                present = set(flags) | set(in_range)
            elif status.highestmodseq != known.src_highestmodseq:
                flags = self.source.fetch_flags_changed(status.uidnext - 1, known.src_highestmodseq)
        if present is None and known.src_messages + len(in_range) != status.messages:
            present = set(self.source.all_uids())
        existing = present
        if existing is None and retry:
            # a failed message expunged before the markers counted it leaves the count as it was: ask
            existing = set(self.source.uids_between(min(retry), max(retry)))
        if existing is not None:
            gone = [uid for uid in retry if uid not in existing]
            if not self.owner.dry_run:
                self.store.clear_failures(self.pair, self.mapping.source, gone)
            retry = [uid for uid in retry if uid in existing]
        return SourceListing(sorted({*fresh, *retry}), flags, present)

    def _destination_candidates(
        self, known: FolderState | None, synced: dict[int, SyncedMessage]
    ) -> list[DestinationMessage]:
        """Destination messages a new source message could already be (copied by another tool, or before
        the state was lost): all unclaimed ones on a folder's first pass, afterwards only those that
        arrived since the last pass."""
        claimed = {m.dst_uid for m in synced.values() if m.dst_uid}
        if known is not None and known.dst_uidnext and not self.owner.full:  # 0 (older passes): unknown
            uids = self.destination.uids_from(known.dst_uidnext)
        else:
            uids = self.destination.all_uids()
        return self._destination_messages_for([uid for uid in uids if uid not in claimed])

    def _plan_deletions(
        self, listing: SourceListing, synced: dict[int, SyncedMessage], destination_messages: int
    ) -> Deletions:
        rules = self.owner.pair.deletions
        if listing.present is None:
            return Deletions()
        vanished = [uid for uid in synced if uid not in listing.present]
        # a message whose late copy is still watched for keeps its row (and, mirroring, its copy) until the
        # watch ends: the watch recognises a late copy by comparing it with ours
        watched = {w.src_uid for w in self.store.late_write_watches(self.pair, self.mapping.source)}
        self.vanished_watched = [uid for uid in vanished if uid in watched]
        vanished = [uid for uid in vanished if uid not in watched]
        if rules.destination != "mirror":
            if vanished and not self.owner.dry_run:
                self.store.forget_messages(self.pair, self.mapping.source, vanished)
            return Deletions()
        return plan_destination_deletions(
            vanished,
            synced,
            destination_messages,
            max_share=rules.max_share,
            force=rules.force or self.owner.force_deletions,
        )

    def _report_plan(self, plan: FolderPlan, deletions: Deletions) -> None:
        self.report.skipped += [(s.src_uid, s.reason) for s in plan.skip]
        self.report.failed += [(f.src_uid, f.reason) for f in plan.fail]
        self.report.dropped_keywords = plan.dropped_keywords
        if plan.dropped_keywords:
            log.warning(
                "%s: %s: the destination does not keep the keywords %s; they are dropped",
                self.pair,
                self.mapping.destination,
                " ".join(sorted(plan.dropped_keywords)),
            )
        if deletions.refused:
            self.report.error = deletions.refused
            log.error("%s: %s: %s", self.pair, self.mapping.destination, deletions.refused)

    def _record_failures(self, plan: FolderPlan, listing: SourceListing) -> None:
        for failure in plan.fail:
            self.store.record_failure(self.pair, self.mapping.source, failure.src_uid, failure.reason)
        self.store.clear_failures(self.pair, self.mapping.source, [skip.src_uid for skip in plan.skip])
        self.store.record_deferred(
            self.pair,
            self.mapping.source,
            [(skip.src_uid, skip.reason, skip.eligible_at) for skip in plan.skip if skip.deferred],
        )

    # -- deleting (opt-in) ---------------------------------------------------------------------------

    def _apply_deletions(self, deletions: Deletions) -> None:
        if deletions.refused or not deletions.dst_uids:
            return
        if not self.destination.delete_messages(deletions.dst_uids):
            log.warning(
                "%s: %s: the destination lacks UIDPLUS and other messages are marked \\Deleted there: the %d "
                "copies to delete are marked \\Deleted but not expunged",
                self.pair,
                self.mapping.destination,
                len(deletions.dst_uids),
            )
        self.store.forget_messages(self.pair, self.mapping.source, deletions.src_uids)
        self.report.deleted = len(deletions.dst_uids)
        log.info(
            "%s: %s: deleted %d messages expunged on the source",
            self.pair,
            self.mapping.destination,
            len(deletions.dst_uids),
        )

    def _delete_copied_from_source(self, status: MailboxStatus) -> MailboxStatus:
        """Move semantics: delete from the source what the destination confirmed (status done)."""
        # a message whose late copy is still watched for stays: the watch compares with its row; so does one
        # with a failure row after its copy was confirmed (the destination altered it: _check_stored)
        watched = {w.src_uid for w in self.store.late_write_watches(self.pair, self.mapping.source)}
        watched |= set(self.store.failed_uids(self.pair, self.mapping.source))
        done = [
            uid
            for uid, m in self.store.messages(self.pair, self.mapping.source).items()
            if m.status == "done" and uid not in watched
        ]
        if not done:
            return status
        if not self.source.delete_messages(done):
            log.warning(
                "%s: %s: the source lacks UIDPLUS and other messages are marked \\Deleted there: %d copied "
                "messages are marked \\Deleted but not expunged",
                self.pair,
                self.mapping.source,
                len(done),
            )
            return status
        self.store.forget_messages(self.pair, self.mapping.source, done)
        self.report.source_deleted = len(done)
        # The markers stay those of when the folder was opened, less what we deleted: mail that arrived
        # during the pass is above that UIDNEXT and is picked up by the next pass.
        return MailboxStatus(status.uidvalidity, status.uidnext, max(0, status.messages - len(done)), None)

    # -- state ---------------------------------------------------------------------------------------

    def _known_state(self, source_uidvalidity: int, destination_uidvalidity: int) -> FolderState | None:
        """The folder's state from the last pass, or None when there is none or it no longer applies."""
        known = self.store.folder(self.pair, self.mapping.source)
        if known is None:
            return None
        changes = []
        if known.src_uidvalidity != source_uidvalidity:
            changes.append(f"source UIDVALIDITY {known.src_uidvalidity} -> {source_uidvalidity}")
        if known.dst_uidvalidity != destination_uidvalidity:
            changes.append(f"destination UIDVALIDITY {known.dst_uidvalidity} -> {destination_uidvalidity}")
        if known.dst_folder != self.mapping.destination:
            changes.append(f"destination folder {known.dst_folder} -> {self.mapping.destination}")
        if not changes:
            return known
        if not self.owner.dry_run:
            log.warning(
                "%s: %s: %s; rebuilding the message map by fingerprint (nothing is copied twice)",
                self.pair,
                self.mapping.source,
                ", ".join(changes),
            )
            # a late write of a lost APPEND can still land in the same destination folder: its watch stays
            self.store.forget_folder(
                self.pair,
                self.mapping.source,
                keep_late_writes=known.dst_folder == self.mapping.destination,
                new_uids=known.dst_uidvalidity != destination_uidvalidity,
            )
        return None

    def _resolve_pending(self, uidnext: int) -> None:
        """Appends journalled but not confirmed (a crash, a cut connection, no UIDPLUS): look for them.

        Run right after a fresh SELECT whose UIDNEXT is ``uidnext``. Those not found are copied again; the
        old connection may still deliver them late (a stalled server), above ``uidnext``: they are
        watched for (_check_late_writes) until transfer.late_write_window has passed.
        """
        entries = self.store.messages(self.pair, self.mapping.source)
        pending = sorted((m for m in entries.values() if m.status == "pending"), key=lambda m: m.src_uid)
        if not pending or self.owner.dry_run:
            return
        claimed = {m.dst_uid for m in entries.values() if m.status == "done" and m.dst_uid}
        floor = min((m.dst_uid_floor or 1) for m in pending)
        arrived = [uid for uid in self.destination.uids_from(floor) if uid not in claimed]
        candidates = self._destination_messages_for(arrived)
        found, missing = match_pending(pending, candidates, loose=self.owner.pair.deletions.source == "keep")
        window = self.owner.pair.transfer.late_write_window
        with self.store.transaction():
            self.store.mark_done(self.pair, self.mapping.source, found)
            self.store.drop_pending(self.pair, self.mapping.source, [m.src_uid for m in missing])
            if missing and window:
                self.store.watch_late_writes(
                    self.pair, self.mapping.source, missing, uidnext or floor, datetime.now(UTC) + window
                )
        if found or missing:
            log.info(
                "%s: %s: resolved %d unconfirmed appends: %d found on the destination, %d to copy again",
                self.pair,
                self.mapping.source,
                len(pending),
                len(found),
                len(missing),
            )

    def _check_late_writes(self, *, expire: bool = True) -> None:
        """Open late-write watches of this folder: remove late copies of our own, close expired watches, and
        say so (report.unresolved: exit 75) while some stay open.

        ``expire=False`` before the plan: after a UIDVALIDITY change the map is rebuilt by fingerprint only
        then, and until it is a watch has no copy of ours to compare with; closing it as expired would leave
        a late copy that landed within the window for good."""
        self.report.unresolved = None
        watches = self.store.late_write_watches(self.pair, self.mapping.source)
        if not watches:
            return
        self.destination.ensure_selected(self.mapping.destination, readonly=False)
        floor = min(w.dst_uid_floor for w in watches)
        # The order matters with folders merged into one destination folder: a message the search sees was
        # journalled by its folder before it was appended, so it is either still pending when read next
        # (skipped by fingerprint) or already done, and then in the claimed set read after that.
        present = self.destination.uids_from(floor)
        pending_elsewhere = {
            without_size(fp)
            for fp in self.store.pending_fingerprints(self.mapping.destination, self.pair, self.mapping.source)
        }
        ours = self.store.messages(self.pair, self.mapping.source)
        claimed = self.store.claimed_dst_uids(self.mapping.destination)
        claimed |= {m.dst_uid for m in ours.values() if m.dst_uid}
        arrived = [uid for uid in present if uid not in claimed]
        candidates = [
            m for m in self._destination_messages_for(arrived) if without_size(m.fingerprint) not in pending_elsewhere
        ]
        late = LateCopies(self.destination, candidates)
        found: dict[int, int] = {}  # watch id -> the late copy's UID
        for watch in watches:
            own = _own_copy(watch, ours)
            if own is not None and own.dst_uid:
                uid = late.take(watch, own.dst_uid)
                if uid is not None:
                    found[watch.id] = uid
        if found:
            self._remove_late_copies(found)
        now = datetime.now(UTC)
        expired = [w.id for w in watches if expire and w.id not in found and w.deadline <= now]
        self.store.close_late_write_watches(expired)
        left = [w for w in watches if w.id not in found and w.id not in expired]
        if left and self.report.unresolved is None:
            until = max(w.deadline for w in left).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
            self.report.unresolved = (
                f"{len(left)} appends of a lost connection were copied again; the server may still execute the "
                f"old ones late, so exactly once is proven only when the watch ends at {until} "
                "(transfer.late_write_window): the passes until then remove late copies of our own"
            )
            log.warning("%s: %s: %s", self.pair, self.mapping.source, self.report.unresolved)

    def _remove_late_copies(self, found: dict[int, int]) -> None:
        uids = sorted(found.values())
        if not self.destination.has("UIDPLUS"):  # a plain EXPUNGE could take messages others marked \Deleted
            self.report.unresolved = (
                f"late duplicates of our own are in '{self.mapping.destination}' (UIDs "
                f"{uid_set(uids)}) and the destination lacks UIDPLUS, so mailmirror does not expunge "
                "them: delete them by hand"
            )
            log.warning("%s: %s: %s", self.pair, self.mapping.source, self.report.unresolved)
            return
        self.destination.delete_messages(uids)
        self.store.close_late_write_watches(found.keys())
        self.report.late_duplicates_removed += len(uids)
        log.warning(
            "%s: %s: removed %d late duplicates of our own (appends of a lost connection the server executed "
            "after they were copied again): UIDs %s",
            self.pair,
            self.mapping.destination,
            len(uids),
            uid_set(uids),
        )

    # -- listings ------------------------------------------------------------------------------------

    def _source_messages(self, uids: list[int]) -> list[SourceMessage]:
        headers = self.owner.pair.messages.identity_headers
        return [
            SourceMessage(
                meta.uid,
                meta.size,
                meta.flags,
                meta.internaldate,
                fingerprint(meta.header, meta.size, headers),
            )
            for meta in self.source.fetch_meta(uids, self.owner.header_fields)
        ]

    def _destination_messages(self, exclude: set[int]) -> list[DestinationMessage]:
        uids = [uid for uid in self.destination.all_uids() if uid not in exclude]
        return self._destination_messages_for(uids)

    def _destination_messages_for(self, uids: list[int]) -> list[DestinationMessage]:
        headers = self.owner.pair.messages.identity_headers
        return [
            DestinationMessage(meta.uid, fingerprint(meta.header, meta.size, headers), meta.flags)
            for meta in self.destination.fetch_meta(uids, self.owner.header_fields)
        ]

    def _policy(self, permanent_flags: frozenset[str] | None) -> Policy:
        rules = self.owner.pair.messages
        return Policy(
            sync_flags=self.owner.pair.flags.sync,
            append_limit=self.destination.append_limit,
            max_size=rules.max_size,
            min_size=rules.min_size,
            destination_permanent_flags=permanent_flags,
            now=datetime.now(UTC),
            max_age=rules.max_age,
            min_age=rules.min_age,
            search_matches=self._search_matches(),
            kept_elsewhere=self.owner.kept_before(self.mapping.source),
            flag_rules=self.owner.flag_rules,
        )

    def _search_matches(self) -> frozenset[int] | None:
        """UIDs matching messages.search in the (selected) source folder: one UID SEARCH, cached."""
        criteria = self.owner.pair.messages.search
        if criteria is None:
            return None
        if self._search_cache is None:
            self._search_cache = frozenset(self.source.search(criteria))
        return self._search_cache

    # -- dry run -------------------------------------------------------------------------------------

    def _plan_dry_into_new_folder(self) -> None:
        new_messages = self._source_messages(self.source.all_uids()) if self.report.source_messages else []
        plan = plan_folder(new_messages, {}, {}, None, self._policy(None))
        self._report_plan(plan, Deletions())
        self._report_dry(plan, Deletions())

    def _report_dry(self, plan: FolderPlan, deletions: Deletions) -> None:
        kept = {copy.message.fingerprint for copy in plan.copy} | {adopt.message.fingerprint for adopt in plan.adopt}
        self.owner.dry_kept[self.mapping.source] = frozenset(kept)
        self.report.deleted = 0 if deletions.refused else len(deletions.dst_uids)
        self.report.copied = len(plan.copy)
        self.report.bytes_copied = plan.copy_bytes
        self.report.adopted = len(plan.adopt)
        self.report.flags_updated = len(plan.flag_changes)

    # -- writing -------------------------------------------------------------------------------------

    def _apply_flags_and_adoptions(self, plan: FolderPlan) -> None:
        for (add, remove), dst_uids in group_flag_changes(plan.flag_changes).items():
            self.destination.store_flags(dst_uids, add, remove)
        with self.store.transaction():
            self.store.mark_done(
                self.pair,
                self.mapping.source,
                [
                    SyncedMessage(a.message.uid, a.dst_uid, "done", a.message.fingerprint, a.message.size, a.flags)
                    for a in plan.adopt
                ],
            )
            adopted = {a.message.uid for a in plan.adopt}
            self.store.update_flags(
                self.pair,
                self.mapping.source,
                {c.src_uid: c.flags for c in plan.flag_changes if c.src_uid not in adopted},
            )
        self.report.adopted = len(plan.adopt)
        self.report.flags_updated = len(plan.flag_changes)

    def copy_run(self, source: ImapSession, destination: ImapSession, copies: Sequence[Copy]) -> None:
        """Copy a run of this folder's planned messages with one worker's sessions, in batches bounded by
        bytes: a fetch thread reads batch N+1 from the source (at most transfer.prefetch batches ahead)
        while this thread journals and appends batch N. Several runs of one folder may go at once."""
        rules = self.owner.pair.transfer
        config = self.owner.config
        source_limit = rate_limit(config.accounts[self.owner.pair.source])
        destination_limit = rate_limit(config.accounts[self.owner.pair.destination])
        if source.selected != self.mapping.source:  # already open (read-write when moving) is as good
            source.select(self.mapping.source, readonly=True)
        destination.ensure_selected(self.mapping.destination, readonly=False)
        floor = self.destination_status.uidnext
        batches = _batches(copies, rules.batch_size, rules.batch_messages)
        budget = self.owner.budget
        if rules.prefetch == 0:
            for batch in batches:
                self.owner.check_stop()
                size = sum(a.message.size for a in batch)
                if not budget.acquire(size, self.owner.abort.is_set):
                    self.owner.check_stop()
                try:
                    bodies = self._fetch_batch(source, batch, source_limit)
                    self._copy_batch(destination, batch, bodies, floor, destination_limit)
                finally:
                    budget.release(size)
            return
        fetched: queue.Queue[tuple[list[Copy], dict[int, bytes], int] | BaseException | None] = queue.Queue(
            maxsize=rules.prefetch
        )
        halt = threading.Event()

        def fetch() -> None:
            try:
                for batch in batches:
                    size = sum(a.message.size for a in batch)
                    if halt.is_set() or not budget.acquire(size, halt.is_set):
                        return
                    try:
                        bodies = self._fetch_batch(source, batch, source_limit, halt.is_set)
                    except BaseException:
                        budget.release(size)
                        raise
                    fetched.put((batch, bodies, size))
                fetched.put(None)
            except BaseException as error:  # handed to the appending thread, which raises it
                fetched.put(error)

        fetcher = threading.Thread(target=fetch, name=f"{self.pair}-fetch", daemon=True)
        fetcher.start()
        try:
            while (item := fetched.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, bodies, size = item
                try:
                    self.owner.check_stop()
                    self._copy_batch(destination, batch, bodies, floor, destination_limit)
                finally:
                    budget.release(size)
        finally:
            halt.set()
            while fetcher.is_alive() or not fetched.empty():  # let a blocked put() through; give back
                with contextlib.suppress(queue.Empty):
                    left = fetched.get(timeout=0.05)
                    if isinstance(left, tuple):
                        budget.release(left[2])
            fetcher.join()

    def _fetch_batch(
        self,
        source: ImapSession,
        batch: list[Copy],
        limit: RateLimit | None,
        halted: Callable[[], bool] = lambda: False,
    ) -> dict[int, bytes]:
        if limit is not None:
            size = sum(a.message.size for a in batch)
            if not limit.take(len(batch), size, lambda: halted() or self.owner.interrupted()):
                self.owner.check_stop()
                raise Stopped(f"pair '{self.pair}': fetching stopped (the copy run ended)")
        return source.fetch_bodies([action.message.uid for action in batch])

    def _copy_batch(
        self,
        destination: ImapSession,
        batch: list[Copy],
        bodies: dict[int, bytes],
        floor: int,
        limit: RateLimit | None = None,
    ) -> None:
        """Journal, append, confirm one fetched batch."""
        ready = []
        for action in batch:
            if action.message.uid in bodies:
                ready.append(action)
            else:  # expunged meanwhile, or unreadable: a failure, retried (and cleared once it is gone)
                self._failed(action.message.uid, "the source did not return the message (expunged meanwhile?)")
        if not ready:
            return
        if limit is not None and not limit.take(len(ready), sum(a.message.size for a in ready), self.owner.interrupted):
            self.owner.check_stop()
        entries = {
            a.message.uid: SyncedMessage(
                a.message.uid, None, "pending", a.message.fingerprint, a.message.size, a.flags, floor
            )
            for a in ready
        }
        self.store.journal_pending(self.pair, self.mapping.source, entries.values())
        messages = [MessageToAppend(bodies[a.message.uid], a.flags, a.message.internaldate) for a in ready]
        if destination.has("MULTIAPPEND"):
            # MULTIAPPEND is atomic, so a whole batch can go in one command; a NO refuses it all: then
            # message by message, to find and record the refused one.
            try:
                uids = destination.append(self.mapping.destination, messages)
            except AppendRefused as refusal:
                if len(ready) == 1:
                    self._refused(ready[0], refusal.reason)
                    return
                results = destination.append_each(self.mapping.destination, messages)
                self._check_stored(destination, *self._confirm_each(ready, results), bodies)
                return
            self._confirm(ready, uids)
            self._check_stored(destination, ready, uids, bodies)
            return
        # One APPEND per message, pipelined with LITERAL+: a refusal in the middle must not hide the UIDs
        # of the others.
        results = destination.append_each(self.mapping.destination, messages)
        self._check_stored(destination, *self._confirm_each(ready, results), bodies)

    def _confirm_each(
        self, ready: list[Copy], results: list[int | AppendRefused | None]
    ) -> tuple[list[Copy], list[int | None]]:
        appended: list[Copy] = []
        uids: list[int | None] = []
        for action, result in zip(ready, results, strict=True):
            if isinstance(result, AppendRefused):
                self._refused(action, result.reason)
            else:
                appended.append(action)
                uids.append(result)
        self._confirm(appended, uids)
        return appended, uids

    def _check_stored(
        self, destination: ImapSession, group: list[Copy], uids: Sequence[int | None], bodies: dict[int, bytes]
    ) -> None:
        """Did the destination store the bytes it was sent? One FETCH per appended batch: RFC822.SIZE of each
        copy, and the header section of those whose header has 8-bit bytes (what Cyrus's munge8bit turns
        into "X", keeping the size). A copy that differs is counted as altered by the destination server."""
        sent = {dst_uid: bodies[a.message.uid] for a, dst_uid in zip(group, uids, strict=True) if dst_uid is not None}
        if not sent:
            return
        eight_bit = [uid for uid, raw in sent.items() if _EIGHT_BIT.search(header_section(raw))]
        stored = destination.fetch_stored(sorted(sent), eight_bit)
        source_uid = {dst_uid: a.message.uid for a, dst_uid in zip(group, uids, strict=True)}
        for dst_uid, (size, header) in sorted(stored.items()):
            raw = sent.get(dst_uid)
            if raw is None:
                continue
            if size != len(raw):
                why = f"stored as {size} bytes, sent {len(raw)} (destination UID {dst_uid})"
            elif header is not None and header != header_section(raw):
                why = (
                    f"header stored with other bytes than sent: 8-bit characters replaced? (destination UID {dst_uid})"
                )
            else:
                continue
            with self.owner.lock:
                self.report.altered.append((source_uid[dst_uid], why))
            if self.moving:  # the source holds the only original: a move must not delete it (recorded)
                self.store.record_failure(self.pair, self.mapping.source, source_uid[dst_uid], _KEPT_ALTERED + why)
            log.warning(
                "%s: %s: message UID %d altered by the destination server: %s",
                self.pair,
                self.mapping.source,
                source_uid[dst_uid],
                why,
            )

    def _failed(self, uid: int, reason: str) -> None:
        self.store.record_failure(self.pair, self.mapping.source, uid, reason)
        with self.owner.lock:
            self.report.failed.append((uid, reason))
            self.refused.add(uid)
        log.warning("%s: %s: message UID %d: %s", self.pair, self.mapping.source, uid, reason)

    def _refused(self, action: Copy, reason: str) -> None:
        uid = action.message.uid
        with self.store.transaction():
            self.store.drop_pending(self.pair, self.mapping.source, [uid])
            self.store.record_failure(self.pair, self.mapping.source, uid, f"destination refused: {reason}")
        with self.owner.lock:
            self.report.failed.append((uid, f"destination refused: {reason}"))
            self.refused.add(uid)
        log.warning(
            "%s: %s: message UID %d (%d bytes) refused by the destination: %s",
            self.pair,
            self.mapping.source,
            uid,
            action.message.size,
            reason,
        )

    def _confirm(self, group: list[Copy], uids: Sequence[int | None]) -> None:
        """Appended: done with the APPENDUID; without one the rows stay pending, resolved in finish()."""
        if not group:
            return
        confirmed = [
            SyncedMessage(a.message.uid, dst_uid, "done", a.message.fingerprint, a.message.size, a.flags)
            for a, dst_uid in zip(group, uids, strict=True)
            if dst_uid is not None
        ]
        with self.store.transaction():  # the lag goes down with the copies, at no extra disk sync
            self.store.mark_done(self.pair, self.mapping.source, confirmed)
            self.store.reduce_pending(self.pair, self.mapping.source, len(group))
        size = sum(a.message.size for a in group)
        with self.owner.lock:
            self.report.copied += len(group)
            self.report.bytes_copied += size
            if len(confirmed) < len(group):
                self.unconfirmed = True
            self.owner.progress.advance(self.pair, self.mapping.source, len(group), size)


def _own_copy(watch: LateWriteWatch, ours: dict[int, SyncedMessage]) -> SyncedMessage | None:
    """The copy of ours a watch compares bytes with: its source UID's, or (after a UIDVALIDITY change
    rebuilt the folder's map by fingerprint) one with its fingerprint."""
    own = ours.get(watch.src_uid)
    if own is not None and own.status == "done" and own.fingerprint == watch.fingerprint:
        return own
    return next((m for m in ours.values() if m.status == "done" and m.fingerprint == watch.fingerprint), None)


class LateCopies:
    """Unclaimed destination messages that may be late copies of lost appends, matched to watches by
    fingerprint (size aside) and then by the hash of their bytes against the copy we own."""

    def __init__(self, destination: ImapSession, candidates: Sequence[DestinationMessage]) -> None:
        self.destination = destination
        self.by_headers: dict[str, list[int]] = {}
        for candidate in sorted(candidates, key=lambda m: m.uid):
            self.by_headers.setdefault(without_size(candidate.fingerprint), []).append(candidate.uid)
        self.hashes: dict[int, str | None] = {}
        self.taken: set[int] = set()

    def take(self, watch: LateWriteWatch, own_uid: int) -> int | None:
        """The UID of a late copy of ``watch``'s message, byte-identical to ours at ``own_uid``."""
        uids = [
            uid
            for uid in self.by_headers.get(without_size(watch.fingerprint), [])
            if uid >= watch.dst_uid_floor and uid not in self.taken and uid != own_uid
        ]
        if not uids:
            return None
        own = self._hash(own_uid)
        for uid in uids:
            if own is not None and self._hash(uid) == own:
                self.taken.add(uid)
                return uid
        return None

    def _hash(self, uid: int) -> str | None:
        if uid not in self.hashes:
            body = self.destination.fetch_bodies([uid]).get(uid)
            self.hashes[uid] = None if body is None else hashlib.sha256(body).hexdigest()
        return self.hashes[uid]


_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_KEPT_ALTERED = "kept on the source (move): the destination altered its copy: "


def header_section(raw: bytes) -> bytes:
    """A message's header section with the empty line that ends it (RFC 3501 BODY[HEADER])."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 4]


def match_pending(
    pending: Sequence[SyncedMessage], candidates: Sequence[DestinationMessage], *, loose: bool = True
) -> tuple[list[SyncedMessage], list[SyncedMessage]]:
    """Pending appends found among destination messages: exact fingerprint first, then (loose) without the
    size, for servers that change a message when storing it. Never loose in move mode: a wrong match there
    would delete a source message that was not copied."""
    exact: dict[str, list[int]] = {}
    by_headers: dict[str, list[int]] = {}
    for candidate in sorted(candidates, key=lambda m: m.uid):
        exact.setdefault(candidate.fingerprint, []).append(candidate.uid)
        by_headers.setdefault(without_size(candidate.fingerprint), []).append(candidate.uid)
    taken: set[int] = set()

    def take(pool: dict[str, list[int]], key: str) -> int | None:
        uids = pool.get(key, [])
        while uids:
            uid = uids.pop(0)
            if uid not in taken:
                taken.add(uid)
                return uid
        return None

    found: list[SyncedMessage] = []
    remaining: list[SyncedMessage] = []
    for entry in pending:
        uid = take(exact, entry.fingerprint)
        if uid is None:
            remaining.append(entry)
        else:
            found.append(_done(entry, uid))
    missing: list[SyncedMessage] = []
    if not loose:
        return found, remaining
    for entry in remaining:
        uid = take(by_headers, without_size(entry.fingerprint))
        if uid is None:
            missing.append(entry)
        else:
            found.append(_done(entry, uid))
    return found, missing


def _done(entry: SyncedMessage, dst_uid: int) -> SyncedMessage:
    return SyncedMessage(entry.src_uid, dst_uid, "done", entry.fingerprint, entry.size, entry.flags)


__all__ = ["Folder", "FolderReport", "PairPass", "PairReport", "Progress"]
