"""Copying one folder's planned messages: fetch bodies from the source in batches bounded by bytes, journal
each batch as pending, append it to the destination, confirm it (APPENDUID) and check what was stored.
Several copy runs of one folder may go at once, each on its worker's sessions.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from mailmirror.engine.context import FolderScope
from mailmirror.engine.planner import Copy, batches
from mailmirror.engine.transfer import rate_limit
from mailmirror.errors import Stopped
from mailmirror.imap.types import AppendRefused, MessageToAppend
from mailmirror.state.records import SyncedMessage

if TYPE_CHECKING:
    from mailmirror.engine.context import PassContext
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.engine.outcome import FolderReport
    from mailmirror.imap.interface import ImapSession

log = logging.getLogger(__name__)

_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_KEPT_ALTERED = "kept on the source (move): the destination altered its copy: "

_Fetched = tuple[list[Copy], dict[int, bytes], int]  # a batch, its bodies and the budget it holds


class Copier(FolderScope):
    """The copy runs of one folder. ``floor``: the destination's UIDNEXT when the folder was planned (the
    journal's rows say above which UID their copy can be found)."""

    def __init__(
        self, ctx: PassContext, mapping: FolderMapping, report: FolderReport, *, moving: bool, floor: int
    ) -> None:
        super().__init__(ctx, mapping, report)
        self.moving = moving
        self.floor = floor
        # shared by the runs of this folder (under the context's lock)
        self.unconfirmed = False  # some appends await confirmation (no UIDPLUS)
        self.refused: set[int] = set()  # source UIDs that failed during this pass's copies
        self.source_limit = rate_limit(ctx.source_account)
        self.destination_limit = rate_limit(ctx.destination_account)

    def run(self, source: ImapSession, destination: ImapSession, copies: Sequence[Copy]) -> None:
        """Copy a run of this folder's planned messages with one worker's sessions, in batches bounded by
        bytes: a fetch thread reads batch N+1 from the source (at most transfer.prefetch batches ahead)
        while this thread journals and appends batch N. Several runs of one folder may go at once."""
        rules = self.ctx.pair.transfer
        if source.selected != self.mapping.source:  # already open (read-write when moving) is as good
            source.select(self.mapping.source, readonly=True)
        destination.ensure_selected(self.mapping.destination, readonly=False)
        planned = batches(copies, rules.batch_size, rules.batch_messages)
        if rules.prefetch == 0:
            self._run_in_turn(source, destination, planned)
        else:
            self._run_pipelined(source, destination, planned, rules.prefetch)

    def _run_in_turn(self, source: ImapSession, destination: ImapSession, planned: Iterator[list[Copy]]) -> None:
        """transfer.prefetch 0: fetch a batch, then append it, one after the other."""
        budget = self.ctx.budget
        for batch in planned:
            self.ctx.check_stop()
            size = sum(a.message.size for a in batch)
            if not budget.acquire(size, self.ctx.abort.is_set):
                self.ctx.check_stop()
            try:
                bodies = self._fetch_batch(source, batch)
                self._copy_batch(destination, batch, bodies)
            finally:
                budget.release(size)

    def _run_pipelined(
        self, source: ImapSession, destination: ImapSession, planned: Iterator[list[Copy]], prefetch: int
    ) -> None:
        budget = self.ctx.budget
        fetched: queue.Queue[_Fetched | BaseException | None] = queue.Queue(maxsize=prefetch)
        halt = threading.Event()
        fetcher = threading.Thread(
            target=self._fetch_ahead, args=(source, planned, fetched, halt), name=f"{self.pair}-fetch", daemon=True
        )
        fetcher.start()
        try:
            while (item := fetched.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                batch, bodies, size = item
                try:
                    self.ctx.check_stop()
                    self._copy_batch(destination, batch, bodies)
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

    def _fetch_ahead(
        self,
        source: ImapSession,
        planned: Iterator[list[Copy]],
        fetched: queue.Queue[_Fetched | BaseException | None],
        halt: threading.Event,
    ) -> None:
        """The fetch thread of a pipelined run: batches with their bodies, then None (or the error)."""
        budget = self.ctx.budget
        try:
            for batch in planned:
                size = sum(a.message.size for a in batch)
                if halt.is_set() or not budget.acquire(size, halt.is_set):
                    return
                try:
                    bodies = self._fetch_batch(source, batch, halt.is_set)
                except BaseException:
                    budget.release(size)
                    raise
                fetched.put((batch, bodies, size))
            fetched.put(None)
        except BaseException as error:  # handed to the appending thread, which raises it
            fetched.put(error)

    def _fetch_batch(
        self, source: ImapSession, batch: list[Copy], halted: Callable[[], bool] = lambda: False
    ) -> dict[int, bytes]:
        limit = self.source_limit
        if limit is not None:
            size = sum(a.message.size for a in batch)
            if not limit.take(len(batch), size, lambda: halted() or self.ctx.interrupted()):
                self.ctx.check_stop()
                raise Stopped(f"pair '{self.pair}': fetching stopped (the copy run ended)")
        return source.fetch_bodies([action.message.uid for action in batch])

    def _copy_batch(self, destination: ImapSession, batch: list[Copy], bodies: dict[int, bytes]) -> None:
        """Journal, append, confirm one fetched batch."""
        ready = []
        for action in batch:
            if action.message.uid in bodies:
                ready.append(action)
            else:  # expunged meanwhile, or unreadable: a failure, retried (and cleared once it is gone)
                self._failed(action.message.uid, "the source did not return the message (expunged meanwhile?)")
        if not ready:
            return
        limit = self.destination_limit
        if limit is not None and not limit.take(len(ready), sum(a.message.size for a in ready), self.ctx.interrupted):
            self.ctx.check_stop()
        entries = {
            a.message.uid: SyncedMessage(
                a.message.uid, None, "pending", a.message.fingerprint, a.message.size, a.flags, self.floor
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
            with self.ctx.lock:
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
        with self.ctx.lock:
            self.report.failed.append((uid, reason))
            self.refused.add(uid)
        log.warning("%s: %s: message UID %d: %s", self.pair, self.mapping.source, uid, reason)

    def _refused(self, action: Copy, reason: str) -> None:
        uid = action.message.uid
        with self.store.transaction():
            self.store.drop_pending(self.pair, self.mapping.source, [uid])
            self.store.record_failure(self.pair, self.mapping.source, uid, f"destination refused: {reason}")
        with self.ctx.lock:
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
            self.store.reduce_backlog(self.pair, self.mapping.source, len(group))
        size = sum(a.message.size for a in group)
        with self.ctx.lock:
            self.report.copied += len(group)
            self.report.bytes_copied += size
            if len(confirmed) < len(group):
                self.unconfirmed = True
            self.ctx.progress.advance(self.pair, self.mapping.source, len(group), size)


def header_section(raw: bytes) -> bytes:
    """A message's header section with the empty line that ends it (RFC 3501 BODY[HEADER])."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 4]
