"""Deleting, all of it opt-in: destination copies of messages expunged on the source (deletions.destination:
mirror), source messages after a confirmed copy (deletions.source: after_copy), and destination folders
whose source folder is gone (deletions.delete_missing_folders). Each is planned first, then applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailmirror.engine.outcome import DELETED_FOLDER_RULE, FolderReport
from mailmirror.engine.planner import Deletions, plan_destination_deletions
from mailmirror.imap.types import MailboxStatus

if TYPE_CHECKING:
    from mailmirror.engine.changes import SourceListing
    from mailmirror.engine.context import PassContext
    from mailmirror.engine.folders import FolderView
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.imap.interface import ImapSession
    from mailmirror.state.records import FolderState, SyncedMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VanishedPlan:
    """What to do about messages gone from the source."""

    deletions: Deletions = field(default_factory=Deletions)  # mirror: the destination copies to delete
    forget: list[int] = field(default_factory=list)  # the other modes: rows to forget, the copies stay
    kept_while_watched: list[int] = field(default_factory=list)  # rows kept while a late copy is watched for


def plan_deletions(
    ctx: PassContext,
    mapping: FolderMapping,
    listing: SourceListing,
    synced: dict[int, SyncedMessage],
    destination_messages: int,
) -> VanishedPlan:
    """The destination copies to delete (mirror), or the source UIDs whose rows to forget without deleting
    anything (the other modes: the message is gone from the source, its copy stays).

    A message whose late copy is still watched for keeps its row (and, mirroring, its copy) until the
    watch ends: the watch recognises a late copy by comparing it with ours."""
    rules = ctx.pair.deletions
    if listing.present is None:
        return VanishedPlan()
    watched = {watch.src_uid for watch in ctx.store.late_write_watches(ctx.name, mapping.source)}
    vanished = [uid for uid in synced if uid not in listing.present]
    kept = [uid for uid in vanished if uid in watched]
    vanished = [uid for uid in vanished if uid not in watched]
    if rules.destination != "mirror":
        return VanishedPlan(forget=vanished, kept_while_watched=kept)
    deletions = plan_destination_deletions(
        vanished,
        synced,
        destination_messages,
        max_share=rules.max_share,
        force=rules.force or ctx.force_deletions,
    )
    return VanishedPlan(deletions=deletions, kept_while_watched=kept)


def apply_deletions(
    ctx: PassContext, mapping: FolderMapping, destination: ImapSession, deletions: Deletions, report: FolderReport
) -> None:
    if deletions.refused or not deletions.dst_uids:
        return
    if not destination.delete_messages(deletions.dst_uids):
        log.warning(
            "%s: %s: the destination lacks UIDPLUS and other messages are marked \\Deleted there: the %d "
            "copies to delete are marked \\Deleted but not expunged",
            ctx.name,
            mapping.destination,
            len(deletions.dst_uids),
        )
    ctx.store.forget_messages(ctx.name, mapping.source, deletions.src_uids)
    report.deleted = len(deletions.dst_uids)
    log.info("%s: %s: deleted %d messages expunged on the source", ctx.name, mapping.destination, report.deleted)


def delete_copied_from_source(
    ctx: PassContext, mapping: FolderMapping, source: ImapSession, status: MailboxStatus, report: FolderReport
) -> MailboxStatus:
    """Move semantics: delete from the source what the destination confirmed (status done)."""
    store, pair = ctx.store, ctx.name
    # a message whose late copy is still watched for stays: the watch compares with its row; so does one
    # with a failure row after its copy was confirmed (the destination altered it: Copier._check_stored)
    watched = {w.src_uid for w in store.late_write_watches(pair, mapping.source)}
    watched |= set(store.failed_uids(pair, mapping.source))
    done = [uid for uid, m in store.messages(pair, mapping.source).items() if m.status == "done" and uid not in watched]
    if not done:
        return status
    if not source.delete_messages(done):
        log.warning(
            "%s: %s: the source lacks UIDPLUS and other messages are marked \\Deleted there: %d copied "
            "messages are marked \\Deleted but not expunged",
            pair,
            mapping.source,
            len(done),
        )
        return status
    store.forget_messages(pair, mapping.source, done)
    report.source_deleted = len(done)
    # The markers stay those of when the folder was opened, less what we deleted: mail that arrived
    # during the pass is above that UIDNEXT and is picked up by the next pass.
    return MailboxStatus(status.uidvalidity, status.uidnext, max(0, status.messages - len(done)), None)


@dataclass(frozen=True)
class FolderDeletion:
    """A destination folder to delete: its source folder is gone."""

    state: FolderState
    report: FolderReport


def plan_missing_folders(
    ctx: PassContext, reports: list[FolderReport], source_view: FolderView, destination: ImapSession, existing: set[str]
) -> list[FolderDeletion]:
    """deletions.delete_missing_folders: destination folders whose source folder is gone (their reports are
    added to ``reports``; the refused ones with the reason).

    Only folders this pair synced (known to the state), never INBOX, never one holding messages
    mailmirror did not copy; and not more than deletions.max_share of the pair's folders at once
    unless forced: a source that suddenly lists nothing must not empty the destination.
    """
    if any(report.error for report in reports):
        log.warning("%s: destination folders of deleted source folders are kept: this pass had errors", ctx.name)
        return []
    listed = {folder.name for folder in source_view.folders}
    known = ctx.store.folders(ctx.name)
    gone = [f for f in known if f.src_folder not in listed and f.dst_folder.upper() != "INBOX"]
    gone = [f for f in gone if f.dst_folder in existing]
    if not gone:
        return []
    rules = ctx.pair.deletions
    if len(gone) > rules.max_share * len(known) and not (rules.force or ctx.force_deletions):
        report = FolderReport(gone[0].src_folder, gone[0].dst_folder, DELETED_FOLDER_RULE)
        report.error = (
            f"refusing to delete {len(gone)} of {len(known)} destination folders whose source folder is gone: "
            f"more than deletions.max_share ({rules.max_share:.0%}); check the source account, then use "
            "--force-deletions"
        )
        log.error("%s: %s", ctx.name, report.error)
        reports.append(report)
        return []
    return [deletion for state in gone if (deletion := _folder_deletion(ctx, reports, destination, state))]


def _folder_deletion(
    ctx: PassContext, reports: list[FolderReport], destination: ImapSession, state: FolderState
) -> FolderDeletion | None:
    report = FolderReport(state.src_folder, state.dst_folder, DELETED_FOLDER_RULE)
    reports.append(report)
    ours = {m.dst_uid for m in ctx.store.messages(ctx.name, state.src_folder).values() if m.dst_uid}
    destination.select(state.dst_folder, readonly=True)
    held = destination.all_uids()
    others = set(held) - ours
    if others:
        report.error = (
            f"not deleting destination folder '{state.dst_folder}': it holds {len(others)} messages "
            "mailmirror did not copy"
        )
        log.warning("%s: %s", ctx.name, report.error)
        return None
    report.deleted = len(held)
    return FolderDeletion(state, report)


def delete_folders(ctx: PassContext, destination: ImapSession, deletions: list[FolderDeletion]) -> None:
    for deletion in deletions:
        state = deletion.state
        destination.delete_folder(state.dst_folder)
        ctx.store.forget_folder(ctx.name, state.src_folder)
        log.warning(
            "%s: deleted destination folder '%s' (its source folder '%s' is gone)",
            ctx.name,
            state.dst_folder,
            state.src_folder,
        )
