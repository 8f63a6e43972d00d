"""What changed in one folder since the last pass: new source messages, flags that may have changed,
expunges, and the destination messages a new message could already be. Reads only, never writes:
what the listing implies for the state (failures of messages gone since) is returned with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailmirror.engine.identity import fingerprint
from mailmirror.engine.planner import DestinationMessage, SourceMessage

if TYPE_CHECKING:
    from mailmirror.engine.context import PassContext
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.imap.interface import ImapSession
    from mailmirror.imap.types import MailboxStatus
    from mailmirror.state.records import FolderState, SyncedMessage


@dataclass(frozen=True)
class SourceListing:
    new_uids: list[int]  # source messages to plan as new (metadata to fetch)
    flags: dict[int, frozenset[str]]  # current flags of known messages that may have changed
    present: set[int] | None  # every UID now in the folder, when it was listed (None: nothing vanished)
    #: failed messages gone from the source since (refused, then deleted by the user): not retried for ever
    gone_failures: list[int] = field(default_factory=list)


class FolderReader:
    """Listings of one mapped folder, both sides open (SELECTed or EXAMINEd) on the given sessions."""

    def __init__(self, ctx: PassContext, mapping: FolderMapping, source: ImapSession, destination: ImapSession) -> None:
        self.ctx = ctx
        self.mapping = mapping
        self.source = source
        self.destination = destination
        self._search_cache: frozenset[int] | None = None

    def list_source(
        self, known: FolderState | None, status: MailboxStatus, synced: dict[int, SyncedMessage]
    ) -> SourceListing:
        """What is new, which flags may have changed, and (when it can have changed) which UIDs exist.

        First pass of a folder, `--full`, or unusable state: every UID and its flags (the slow path).
        Otherwise the incremental path: new messages are the UID range above the last pass's UIDNEXT;
        flags come from CONDSTORE ``CHANGEDSINCE`` when offered; expunges are looked for (UID SEARCH)
        only when the message count says something vanished.
        """
        store, pair, folder = self.ctx.store, self.ctx.name, self.mapping.source
        waiting_for_search, old_enough = store.deferred_uids(pair, folder, self.ctx.clock())
        matches = self.search_matches() or frozenset()
        retry = [uid for uid in (*store.failed_uids(pair, folder), *old_enough) if uid not in synced] + [
            uid for uid in waiting_for_search if uid in matches and uid not in synced
        ]
        if known is None or not known.src_uidnext or known.src_messages is None or not status.uidnext or self.ctx.full:
            return self._list_everything(status, synced, retry)
        return self._list_incremental(known, (known.src_uidnext, known.src_messages), status, synced, retry)

    def _list_everything(
        self, status: MailboxStatus, synced: dict[int, SyncedMessage], retry: list[int]
    ) -> SourceListing:
        last = status.uidnext - 1 if status.uidnext else None
        everything = self.source.fetch_flags_changed(last, None) if status.messages else {}
        gone = [uid for uid in retry if uid not in everything]
        return SourceListing(sorted(uid for uid in everything if uid not in synced), everything, set(everything), gone)

    def _list_incremental(
        self,
        known: FolderState,
        last: tuple[int, int],
        status: MailboxStatus,
        synced: dict[int, SyncedMessage],
        retry: list[int],
    ) -> SourceListing:
        """``last``: the folder's UIDNEXT and message count when the last pass was done with it."""
        last_uidnext, last_messages = last
        # Every UID above the last pass's UIDNEXT: new ones, and ones an interrupted pass already copied
        # (those have 'done' rows, are not new, but are present: never count them as expunged).
        in_range = self.source.uids_between(last_uidnext, status.uidnext - 1)
        fresh = [uid for uid in in_range if uid not in synced]
        flags: dict[int, frozenset[str]] = {}
        present: set[int] | None = None
        if self.ctx.pair.flags.sync:
            condstore = self.source.has("CONDSTORE") and known.src_highestmodseq and status.highestmodseq
            if not condstore:
                flags = self.source.fetch_flags_changed(status.uidnext - 1, None)
                present = set(flags) | set(in_range)
            elif status.highestmodseq != known.src_highestmodseq:
                flags = self.source.fetch_flags_changed(status.uidnext - 1, known.src_highestmodseq)
        if present is None and last_messages + len(in_range) != status.messages:
            present = set(self.source.all_uids())
        existing = present
        if existing is None and retry:
            # a failed message expunged before the markers counted it leaves the count as it was: ask
            existing = set(self.source.uids_between(min(retry), max(retry)))
        gone: list[int] = []
        if existing is not None:
            gone = [uid for uid in retry if uid not in existing]
            retry = [uid for uid in retry if uid in existing]
        return SourceListing(sorted({*fresh, *retry}), flags, present, gone)

    def destination_candidates(
        self, known: FolderState | None, synced: dict[int, SyncedMessage]
    ) -> list[DestinationMessage]:
        """Destination messages a new source message could already be (copied by another tool, or before
        the state was lost): all unclaimed ones on a folder's first pass, afterwards only those that
        arrived since the last pass."""
        claimed = {m.dst_uid for m in synced.values() if m.dst_uid}
        if known is not None and known.dst_uidnext and not self.ctx.full:  # 0 (older passes): unknown
            uids = self.destination.uids_from(known.dst_uidnext)
        else:
            uids = self.destination.all_uids()
        return self.destination_messages([uid for uid in uids if uid not in claimed])

    def source_messages(self, uids: list[int]) -> list[SourceMessage]:
        headers = self.ctx.pair.messages.identity_headers
        return [
            SourceMessage(
                meta.uid,
                meta.size,
                meta.flags,
                meta.internaldate,
                fingerprint(meta.header, meta.size, headers),
            )
            for meta in self.source.fetch_meta(uids, self.ctx.header_fields)
        ]

    def destination_messages(self, uids: list[int]) -> list[DestinationMessage]:
        headers = self.ctx.pair.messages.identity_headers
        return [
            DestinationMessage(meta.uid, fingerprint(meta.header, meta.size, headers), meta.flags)
            for meta in self.destination.fetch_meta(uids, self.ctx.header_fields)
        ]

    def search_matches(self) -> frozenset[int] | None:
        """UIDs matching messages.search in the (selected) source folder: one UID SEARCH, cached."""
        criteria = self.ctx.pair.messages.search
        if criteria is None:
            return None
        if self._search_cache is None:
            self._search_cache = frozenset(self.source.search(criteria))
        return self._search_cache
