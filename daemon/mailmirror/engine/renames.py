"""Folders renamed on the source: rename them on the destination too, instead of copying them again.

A rename keeps a folder's UIDVALIDITY and UIDs on the servers that matter (Dovecot, Cyrus, ...). So a
source folder the state does not know, whose UIDVALIDITY equals that of a known folder that disappeared
from the source, is that folder under a new name — once one of its messages is checked by fingerprint.
Then the destination folder is renamed (RENAME moves its subfolders along) and the state follows, so the
pass stays incremental. Some servers (Courier) give a renamed folder a new UIDVALIDITY and new UIDs: when
no vanished folder has the new one's UIDVALIDITY, a vanished folder is taken as renamed when every message
the state knows in it is in the new folder, by fingerprint (headers only), and no other vanished folder
qualifies; the UIDVALIDITY change then re-maps its messages by fingerprint, as after any UIDVALIDITY reset.
A vanished folder that still exists on the source (only no longer selected by the rules) or whose
destination folder another source folder still fills (a merge) is never taken as renamed: renaming its
destination folder would carry the other folder's copies away. Without a confident match nothing is
renamed: the folder is treated as new, and fingerprint matching still prevents duplicates inside each
destination folder.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from mailmirror.engine.identity import fingerprint, header_fields_to_fetch
from mailmirror.engine.mapping import FolderMapping
from mailmirror.imap.interface import ImapSession
from mailmirror.imap.types import Folder, MailboxStatus
from mailmirror.state.records import FolderState
from mailmirror.state.store import StateStore

log = logging.getLogger(__name__)


class StatusSource(Protocol):
    folders: list[Folder]  # every folder the source listed, selected or not

    def status(self, session: ImapSession, name: str) -> MailboxStatus: ...


def follow_renames(
    pair: str,
    store: StateStore,
    source: ImapSession,
    destination: ImapSession,
    mappings: Sequence[FolderMapping],
    source_statuses: StatusSource,
    existing_destination: set[str],
    identity_headers: Sequence[str],
    *,
    dry_run: bool,
) -> dict[str, str]:
    """Detect and apply renames; returns {new source name: old source name}. Updates existing_destination."""
    listed = {mapping.source for mapping in mappings}
    on_source = {folder.name for folder in source_statuses.folders}
    filled = {mapping.destination for mapping in mappings}
    # A folder that still exists on the source (only no longer selected) was not renamed, and a
    # destination folder another source folder still fills (a merge) must not move away from it.
    orphans = [
        state
        for state in store.folders(pair)
        if state.src_folder not in listed and state.src_folder not in on_source and state.dst_folder not in filled
    ]
    renamed: dict[str, str] = {}
    for mapping in mappings:
        if not orphans:
            break
        if not mapping.selectable or mapping.destination in existing_destination:
            continue
        if store.folder(pair, mapping.source) is not None:
            continue
        status = source_statuses.status(source, mapping.source)
        candidates = [o for o in orphans if o.dst_folder in existing_destination]
        matches = [o for o in candidates if o.src_uidvalidity == status.uidvalidity]
        if matches:
            if len(matches) != 1 or not _same_folder(store, pair, matches[0], source, mapping.source, identity_headers):
                continue
        else:
            matches = _renumbered_matches(store, pair, candidates, source, mapping.source, identity_headers)
            if len(matches) != 1:
                continue
        old = matches[0]
        orphans.remove(old)
        renamed[mapping.source] = old.src_folder
        log.warning(
            "%s: source folder '%s' was renamed to '%s': %s the destination folder '%s' to '%s' (nothing is copied "
            "again)",
            pair,
            old.src_folder,
            mapping.source,
            "would rename" if dry_run else "renaming",
            old.dst_folder,
            mapping.destination,
        )
        if dry_run:
            continue
        destination.rename_folder(old.dst_folder, mapping.destination)
        store.rename_folder(pair, old, mapping.source, mapping.destination)
        _moved_along(existing_destination, old.dst_folder, mapping.destination, destination.separator)
    return renamed


def _same_folder(
    store: StateStore,
    pair: str,
    old: FolderState,
    source: ImapSession,
    candidate: str,
    identity_headers: Sequence[str],
) -> bool:
    """Check one message: the newest the state knows in the old folder must be in the candidate, the same."""
    known = [m for m in store.messages(pair, old.src_folder).values() if m.status == "done"]
    if not known:
        return False
    newest = max(known, key=lambda m: m.src_uid)
    source.select(candidate, readonly=True)
    metas = source.fetch_meta([newest.src_uid], header_fields_to_fetch(identity_headers))
    return bool(metas) and fingerprint(metas[0].header, metas[0].size, identity_headers) == newest.fingerprint


def _renumbered_matches(
    store: StateStore,
    pair: str,
    candidates: Sequence[FolderState],
    source: ImapSession,
    folder: str,
    identity_headers: Sequence[str],
) -> list[FolderState]:
    """The vanished folders all of whose known messages are in `folder` (a rename that changed UIDVALIDITY)."""
    known = {
        candidate: Counter(
            m.fingerprint for m in store.messages(pair, candidate.src_folder).values() if m.status == "done"
        )
        for candidate in candidates
    }
    known = {candidate: fingerprints for candidate, fingerprints in known.items() if fingerprints}
    if not known:
        return []
    source.select(folder, readonly=True)
    uids = source.all_uids()
    if not uids:
        return []
    metas = source.fetch_meta(uids, header_fields_to_fetch(identity_headers))
    present = Counter(fingerprint(meta.header, meta.size, identity_headers) for meta in metas)
    return [candidate for candidate, fingerprints in known.items() if not fingerprints - present]


def _moved_along(existing: set[str], old: str, new: str, separator: str) -> None:
    for name in list(existing):
        if name == old or name.startswith(old + separator):
            existing.discard(name)
            existing.add(new + name[len(old) :])
