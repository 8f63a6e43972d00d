"""Appends not confirmed yet: the journal's pending rows (a crash, a cut connection, no UIDPLUS) looked
for on the destination, and late-write watches that remove late copies of our own lost appends. This is
the part of exactly once that runs before a folder is planned and after its copies.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailmirror.engine.context import FolderScope
from mailmirror.engine.identity import without_size
from mailmirror.engine.planner import DestinationMessage, match_pending
from mailmirror.imap.channel import uid_set
from mailmirror.state.records import LateWriteWatch, SyncedMessage

if TYPE_CHECKING:
    from mailmirror.engine.changes import FolderReader
    from mailmirror.engine.context import PassContext
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.engine.outcome import FolderReport
    from mailmirror.imap.interface import ImapSession

log = logging.getLogger(__name__)


class UnconfirmedAppends(FolderScope):
    """The journal of one folder's appends, resolved against its destination folder."""

    def __init__(self, ctx: PassContext, mapping: FolderMapping, reader: FolderReader, report: FolderReport) -> None:
        super().__init__(ctx, mapping, report)
        self.reader = reader

    def resolve_pending(self, uidnext: int) -> None:
        """Appends journalled but not confirmed (a crash, a cut connection, no UIDPLUS): look for them.

        Run right after a fresh SELECT whose UIDNEXT is ``uidnext``. Those not found are copied again; the
        old connection may still deliver them late (a stalled server), above ``uidnext``: they are
        watched for (check_late_writes) until transfer.late_write_window has passed.
        """
        entries = self.store.messages(self.pair, self.mapping.source)
        pending = sorted((m for m in entries.values() if m.status == "pending"), key=lambda m: m.src_uid)
        if not pending:
            return
        claimed = {m.dst_uid for m in entries.values() if m.status == "done" and m.dst_uid}
        floor = min((m.dst_uid_floor or 1) for m in pending)
        arrived = [uid for uid in self.reader.destination.uids_from(floor) if uid not in claimed]
        candidates = self.reader.destination_messages(arrived)
        found, missing = match_pending(pending, candidates, loose=self.ctx.pair.deletions.source == "keep")
        window = self.ctx.pair.transfer.late_write_window
        with self.store.transaction():
            self.store.mark_done(self.pair, self.mapping.source, found)
            self.store.drop_pending(self.pair, self.mapping.source, [m.src_uid for m in missing])
            if missing and window:
                self.store.watch_late_writes(
                    self.pair, self.mapping.source, missing, uidnext or floor, self.ctx.clock() + window
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

    def check_late_writes(self, *, expire: bool = True) -> None:
        """Open late-write watches of this folder: remove late copies of our own, close expired watches, and
        say so (report.unresolved: exit 75) while some stay open.

        ``expire=False`` before the plan: after a UIDVALIDITY change the map is rebuilt by fingerprint only
        then, and until it is a watch has no copy of ours to compare with; closing it as expired would leave
        a late copy that landed within the window for good."""
        self.report.unresolved = None
        watches = self.store.late_write_watches(self.pair, self.mapping.source)
        if not watches:
            return
        self.reader.destination.ensure_selected(self.mapping.destination, readonly=False)
        floor = min(w.dst_uid_floor for w in watches)
        # The order matters with folders merged into one destination folder: a message the search sees was
        # journalled by its folder before it was appended, so it is either still pending when read next
        # (skipped by fingerprint) or already done, and then in the claimed set read after that.
        present = self.reader.destination.uids_from(floor)
        pending_elsewhere = {
            without_size(fp)
            for fp in self.store.pending_fingerprints(self.mapping.destination, self.pair, self.mapping.source)
        }
        ours = self.store.messages(self.pair, self.mapping.source)
        claimed = self.store.claimed_dst_uids(self.mapping.destination)
        claimed |= {m.dst_uid for m in ours.values() if m.dst_uid}
        arrived = [uid for uid in present if uid not in claimed]
        candidates = [
            m for m in self.reader.destination_messages(arrived) if without_size(m.fingerprint) not in pending_elsewhere
        ]
        late = LateCopies(self.reader.destination, candidates)
        found: dict[int, int] = {}  # watch id -> the late copy's UID
        for watch in watches:
            own = own_copy(watch, ours)
            if own is not None and own.dst_uid:
                uid = late.take(watch, own.dst_uid)
                if uid is not None:
                    found[watch.id] = uid
        if found:
            self._remove_late_copies(found)
        now = self.ctx.clock()
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
        if not self.reader.destination.has("UIDPLUS"):  # a plain EXPUNGE could take messages others marked \Deleted
            self.report.unresolved = (
                f"late duplicates of our own are in '{self.mapping.destination}' (UIDs "
                f"{uid_set(uids)}) and the destination lacks UIDPLUS, so mailmirror does not expunge "
                "them: delete them by hand"
            )
            log.warning("%s: %s: %s", self.pair, self.mapping.source, self.report.unresolved)
            return
        self.reader.destination.delete_messages(uids)
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


def own_copy(watch: LateWriteWatch, ours: dict[int, SyncedMessage]) -> SyncedMessage | None:
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
