"""Both accounts' folder lists and the pair's folder mapping: the one way sync, plan and verify map
folders, so that they never disagree about where a source folder goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailmirror.engine.mapping import FolderMapping, Namespace, pair_mappings
from mailmirror.engine.planner import duplicate_priority_order

if TYPE_CHECKING:
    from mailmirror.config.pair import Pair
    from mailmirror.imap.interface import ImapSession
    from mailmirror.imap.types import Folder, MailboxStatus


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
        source_view.folders,
        destination_view.folders,
        Namespace(source.separator, source.prefix),
        Namespace(destination.separator, destination.prefix),
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
