"""What a pass reports: per folder and per pair, and how progress is told while it runs.

The report types are plain data, filled by the executor and read by the CLI, the daemon and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailmirror.engine.mapping import FolderMapping
from mailmirror.errors import MailmirrorError, Stopped

log = logging.getLogger(__name__)

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


def pair_sides(folders: Sequence[FolderReport]) -> dict[str, tuple[int, int]]:
    """Folders and messages on each side; the destination's only when every folder's count is known."""
    sides = {"source": (len(folders), sum(f.source_messages for f in folders))}
    destination = [f.destination_messages for f in folders]
    if all(count is not None for count in destination):
        sides["destination"] = (len(folders), sum(count or 0 for count in destination))
    return sides


def run_outcome(report: PairReport) -> str:
    """The outcome recorded for a run in the state: stopped, error, ok or partial."""
    if isinstance(report.error, Stopped):
        return "stopped"
    if report.error is not None:
        return "error"
    return "ok" if report.complete else "partial"
