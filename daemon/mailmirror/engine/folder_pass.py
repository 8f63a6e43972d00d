"""One mapped folder in a pass: open both sides, resolve the journal, plan (read-only: the plan and the
state edits it implies), apply the plan, copy in runs, then finish (deletions, moves, the folder's
markers). FolderPreview is the dry run of it (sync --dry-run, plan): it plans and reports, nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailmirror.engine.changes import FolderReader
from mailmirror.engine.context import FolderScope
from mailmirror.engine.copier import Copier
from mailmirror.engine.deletions import apply_deletions, delete_copied_from_source, plan_deletions
from mailmirror.engine.journal import UnconfirmedAppends
from mailmirror.engine.planner import Copy, Deletions, FolderPlan, Policy, group_flag_changes, plan_folder
from mailmirror.imap.types import MailboxStatus
from mailmirror.state.records import FolderState, SyncedMessage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mailmirror.engine.context import FolderOrder, PassContext
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.engine.outcome import FolderReport
    from mailmirror.imap.interface import ImapSession

log = logging.getLogger(__name__)

UNREADABLE = "the source did not return the message's size and headers (expunged meanwhile?)"


@dataclass(frozen=True)
class PlannedFolder:
    """A folder's plan and the state edits it implies, carried out by FolderPass._apply (a dry run only
    reports them)."""

    plan: FolderPlan
    deletions: Deletions
    failures_gone: Sequence[int] = ()  # failed messages gone from the source: their failures are dropped
    forget: Sequence[int] = ()  # rows of messages gone from the source whose copies stay
    unreadable: Sequence[int] = ()  # listed, but their metadata did not come: failures
    kept_while_watched: Sequence[int] = ()  # gone from the source, rows kept while a late copy is watched for


class FolderPass(FolderScope):
    """Sync one mapped folder: resolve the journal, plan, store flags, copy in batches, record."""

    def __init__(
        self,
        ctx: PassContext,
        order: FolderOrder,
        source: ImapSession,
        destination: ImapSession,
        mapping: FolderMapping,
        report: FolderReport,
    ) -> None:
        super().__init__(ctx, mapping, report)
        self.order = order
        self.reader = FolderReader(ctx, mapping, source, destination)
        self.journal = UnconfirmedAppends(ctx, mapping, self.reader, report)
        self.moving = ctx.pair.deletions.source == "after_copy"
        # filled by prepare(), for the copy runs and finish()
        self.copier: Copier | None = None  # None: nothing to copy or finish
        self.copies: list[Copy] = []
        self.deletions = Deletions()
        self.source_status = MailboxStatus(0, 0, 0, None)
        self.destination_status = MailboxStatus(0, 0, 0, None)
        self.removed_before_plan = 0  # late duplicates removed before planning (in destination_status)
        self.kept_while_watched: Sequence[int] = ()  # expunged on the source, rows kept while a late copy is watched

    @property
    def source(self) -> ImapSession:
        return self.reader.source

    @property
    def destination(self) -> ImapSession:
        return self.reader.destination

    def bind(self, source: ImapSession, destination: ImapSession) -> None:
        """The worker's sessions for planning or finishing (never two workers at once)."""
        self.reader.source, self.reader.destination = source, destination

    def prepare(self) -> list[Copy]:
        """Open both folders, resolve the journal, list, plan, apply the plan: the copies to make."""
        # a retry (after a cut connection) starts the folder over: what the report says comes from this try
        self.report.skipped, self.report.failed = [], []
        source_status = self.source.select(self.mapping.source, readonly=not self.moving)
        self.report.source_messages = source_status.messages
        destination_status = self.destination.select(self.mapping.destination, readonly=False)
        known = self._state_to_build_on(source_status, destination_status)
        self.journal.resolve_pending(destination_status.uidnext)
        self.journal.check_late_writes(expire=False)
        self.removed_before_plan = self.report.late_duplicates_removed  # were counted in this SELECT
        planned = plan_open_folder(self.ctx, self.order, self.reader, known, source_status, destination_status)
        self._apply(planned)
        report_plan(self.ctx, self.mapping, self.report, planned)
        self.copies = list(planned.plan.copy)
        self.deletions = planned.deletions
        self.kept_while_watched = planned.kept_while_watched
        self.source_status, self.destination_status = source_status, destination_status
        self.copier = Copier(self.ctx, self.mapping, self.report, moving=self.moving, floor=destination_status.uidnext)
        self.ctx.progress.folder_started(self.pair, self.mapping, len(self.copies), planned.plan.copy_bytes)
        return self.copies

    def copy_run(self, source: ImapSession, destination: ImapSession, copies: Sequence[Copy]) -> None:
        """One run of this folder's planned copies with one worker's sessions (see Copier)."""
        assert self.copier is not None, "copy_run before prepare"
        self.copier.run(source, destination, copies)

    def finish(self, *, resume: bool = False) -> list[Copy]:
        """After the last copy run: resolve unconfirmed appends; with ``resume`` (a copy run was cut) the
        copies still to make (for new copy runs); else deletions, moves and the folder's markers."""
        copier = self.copier
        if copier is None:
            return []
        if copier.unconfirmed or resume:
            # SELECT again even when this session has the folder open: a server (Dovecot) shows another
            # session's appends only at a sync point, and a stale view would call stored messages missing
            reopened = self.destination.select(self.mapping.destination, readonly=False)
            self.journal.resolve_pending(reopened.uidnext)
            copier.unconfirmed = False
        if self.report.error is not None:
            return []  # keep the last pass's markers: the next pass looks at this folder again
        if resume:
            done = {uid for uid, m in self.store.messages(self.pair, self.mapping.source).items() if m.status == "done"}
            remaining = [c for c in self.copies if c.message.uid not in done and c.message.uid not in copier.refused]
            if remaining:
                log.info("%s: %s: resuming: %d messages left to copy", self.pair, self.mapping.source, len(remaining))
                return remaining
        self.journal.check_late_writes()  # also the watches this pass opened: it cannot claim what it cannot prove
        if self.kept_while_watched and self.ctx.pair.deletions.destination == "mirror" and not self.report.unresolved:
            self.report.unresolved = (
                f"{len(self.kept_while_watched)} messages deleted on the source kept their copy while a late write "
                "of it was watched for; the next pass deletes it"
            )
        self._complete()
        return []

    def _complete(self) -> None:
        """Deletions, moves, the counts, and the folder's markers (unless deletions were refused)."""
        deletions, source_status, destination_status = self.deletions, self.source_status, self.destination_status
        if deletions.dst_uids and not deletions.refused:
            self.destination.ensure_selected(self.mapping.destination, readonly=False)
        apply_deletions(self.ctx, self.mapping, self.destination, deletions, self.report)
        if self.moving:
            self.source.ensure_selected(self.mapping.source, readonly=False)
            source_status = delete_copied_from_source(self.ctx, self.mapping, self.source, source_status, self.report)
        self.report.source_messages = source_status.messages
        self.report.destination_messages = (
            destination_status.messages + self.report.copied - self.report.deleted - self.removed_before_plan
        )
        if deletions.refused:
            return  # keep the last pass's markers, so that the next pass looks at the expunges again
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
                source_status.messages + len(self.kept_while_watched),
                source_status.highestmodseq,
                destination_status.uidnext,
            )
        )

    def _state_to_build_on(self, source: MailboxStatus, destination: MailboxStatus) -> FolderState | None:
        """The last pass's state of the folder, or None: then a stale one is forgotten, and the UIDVALIDITYs
        are recorded before the first journal row is written."""
        known, changes = last_state(self.ctx, self.mapping, source, destination)
        if changes:
            assert known is not None
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
                new_uids=known.dst_uidvalidity != destination.uidvalidity,
            )
            known = None
        if known is None:
            # Record which UIDVALIDITYs the journal's UIDs belong to before the first row is written (the
            # markers come when the folder is done): rows left by a crash must not be read against UIDs
            # a later UIDVALIDITY reset gave to other messages.
            self.store.save_folder(
                FolderState(
                    self.pair,
                    self.mapping.source,
                    self.mapping.destination,
                    source.uidvalidity,
                    destination.uidvalidity,
                )
            )
        return known

    def _apply(self, planned: PlannedFolder) -> None:
        """The one step that writes what a plan implies: failures, deferrals, the lag, flags, adoptions."""
        store, pair, folder, plan = self.store, self.pair, self.mapping.source, planned.plan
        store.clear_failures(pair, folder, planned.failures_gone)
        if planned.forget:
            store.forget_messages(pair, folder, planned.forget)
        for uid in planned.unreadable:
            store.record_failure(pair, folder, uid, UNREADABLE)
            self.report.failed.append((uid, UNREADABLE))
            log.warning("%s: %s: message UID %d: %s", pair, folder, uid, UNREADABLE)
        for failure in plan.fail:
            store.record_failure(pair, folder, failure.src_uid, failure.reason)
        store.clear_failures(pair, folder, [skip.src_uid for skip in plan.skip])
        deferred = [(skip.src_uid, skip.reason, skip.eligible_at) for skip in plan.skip if skip.deferred]
        store.record_deferred(pair, folder, deferred)
        # messages still to bring to the destination
        store.set_backlog(pair, folder, len(plan.copy) + len(plan.fail) + len(planned.unreadable))
        for (add, remove), dst_uids in group_flag_changes(plan.flag_changes).items():
            self.destination.store_flags(dst_uids, add, remove)
        with store.transaction():
            adopted = [
                SyncedMessage(a.message.uid, a.dst_uid, "done", a.message.fingerprint, a.message.size, a.flags)
                for a in plan.adopt
            ]
            store.mark_done(pair, folder, adopted)
            adopted_uids = {a.message.uid for a in plan.adopt}
            changed = {c.src_uid: c.flags for c in plan.flag_changes if c.src_uid not in adopted_uids}
            store.update_flags(pair, folder, changed)
        self.report.adopted = len(plan.adopt)
        self.report.flags_updated = len(plan.flag_changes)


class FolderPreview(FolderPass):
    """The dry run of one folder (sync --dry-run, plan): both folders only EXAMINEd, the plan reported,
    nothing written anywhere. Its finish() has nothing to do."""

    def prepare(self) -> list[Copy]:
        self.report.skipped, self.report.failed = [], []
        source_status = self.source.select(self.mapping.source, readonly=True)
        self.report.source_messages = source_status.messages
        if self.mapping.destination in self.order.to_create:  # a folder the pass would create: all is new
            new_messages = self.reader.source_messages(self.source.all_uids()) if source_status.messages else []
            plan = plan_folder(new_messages, {}, {}, None, folder_policy(self.ctx, self.order, self.reader, None))
            planned = PlannedFolder(plan, Deletions())
        else:
            destination_status = self.destination.select(self.mapping.destination, readonly=True)
            known, changes = last_state(self.ctx, self.mapping, source_status, destination_status)
            known = None if changes else known
            planned = plan_open_folder(self.ctx, self.order, self.reader, known, source_status, destination_status)
        report_plan(self.ctx, self.mapping, self.report, planned)
        plan, deletions = planned.plan, planned.deletions
        kept = {copy.message.fingerprint for copy in plan.copy} | {adopt.message.fingerprint for adopt in plan.adopt}
        self.order.planned[self.mapping.source] = frozenset(kept)
        self.report.deleted = 0 if deletions.refused else len(deletions.dst_uids)
        self.report.copied = len(plan.copy)
        self.report.bytes_copied = plan.copy_bytes
        self.report.adopted = len(plan.adopt)
        self.report.flags_updated = len(plan.flag_changes)
        return []


# -- planning: reads both sides and the state, writes nothing ----------------------------------------


def plan_open_folder(
    ctx: PassContext,
    order: FolderOrder,
    reader: FolderReader,
    known: FolderState | None,
    source_status: MailboxStatus,
    destination_status: MailboxStatus,
) -> PlannedFolder:
    """The plan of a folder open on both sides, and the state edits it implies."""
    messages = ctx.store.messages(ctx.name, reader.mapping.source)
    synced = {uid: m for uid, m in messages.items() if m.status == "done"}
    listing = reader.list_source(known, source_status, synced)
    new_messages = reader.source_messages(listing.new_uids)
    unreadable = sorted(set(listing.new_uids) - {m.uid for m in new_messages})
    candidates = reader.destination_candidates(known, synced) if new_messages and destination_status.messages else None
    policy = folder_policy(ctx, order, reader, destination_status.permanent_flags)
    plan = plan_folder(new_messages, listing.flags, synced, candidates, policy)
    vanished = plan_deletions(ctx, reader.mapping, listing, synced, destination_status.messages)
    return PlannedFolder(
        plan, vanished.deletions, listing.gone_failures, vanished.forget, unreadable, vanished.kept_while_watched
    )


def last_state(
    ctx: PassContext, mapping: FolderMapping, source: MailboxStatus, destination: MailboxStatus
) -> tuple[FolderState | None, list[str]]:
    """The folder's state from the last pass (None: there is none), and what no longer matches it (when
    something does, the state no longer applies)."""
    known = ctx.store.folder(ctx.name, mapping.source)
    if known is None:
        return None, []
    changes = []
    if known.src_uidvalidity != source.uidvalidity:
        changes.append(f"source UIDVALIDITY {known.src_uidvalidity} -> {source.uidvalidity}")
    if known.dst_uidvalidity != destination.uidvalidity:
        changes.append(f"destination UIDVALIDITY {known.dst_uidvalidity} -> {destination.uidvalidity}")
    if known.dst_folder != mapping.destination:
        changes.append(f"destination folder {known.dst_folder} -> {mapping.destination}")
    return known, changes


def folder_policy(
    ctx: PassContext, order: FolderOrder, reader: FolderReader, permanent_flags: frozenset[str] | None
) -> Policy:
    rules = ctx.pair.messages
    return Policy(
        sync_flags=ctx.pair.flags.sync,
        append_limit=reader.destination.append_limit,
        max_size=rules.max_size,
        min_size=rules.min_size,
        destination_permanent_flags=permanent_flags,
        now=ctx.clock(),
        max_age=rules.max_age,
        min_age=rules.min_age,
        search_matches=reader.search_matches(),
        kept_elsewhere=order.kept_before(reader.mapping.source),
        flag_rules=ctx.flag_rules,
    )


def report_plan(ctx: PassContext, mapping: FolderMapping, report: FolderReport, planned: PlannedFolder) -> None:
    plan, deletions = planned.plan, planned.deletions
    report.skipped += [(s.src_uid, s.reason) for s in plan.skip]
    report.failed += [(f.src_uid, f.reason) for f in plan.fail]
    report.dropped_keywords = plan.dropped_keywords
    if plan.dropped_keywords:
        log.warning(
            "%s: %s: the destination does not keep the keywords %s; they are dropped",
            ctx.name,
            mapping.destination,
            " ".join(sorted(plan.dropped_keywords)),
        )
    if deletions.refused:
        report.error = deletions.refused
        log.error("%s: %s: %s", ctx.name, mapping.destination, deletions.refused)
