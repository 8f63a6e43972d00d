"""What the daemon knows of each pair's passes, and its readiness checks from that: the state database
takes writes, every scheduled pair succeeded within `metrics.stale_after_intervals` of its interval."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailmirror.engine.outcome import PairReport
from mailmirror.service.health import Check


@dataclass
class PairHealth:
    """One pair's passes in this daemon: failures in a row, last success and report, pushed folders waiting."""

    failures: int = 0
    last_success: float | None = None
    last_report: PairReport | None = None
    push_folders: set[str] = field(default_factory=set)
    full_pass_due: bool = False  # a scheduled pass found a push pass running: run it right after
    started_at: float = field(default_factory=time.time)  # when this daemon began scheduling the pair
    news_at: float | None = None  # monotonic time of the oldest IDLE news not yet passed on
    expected_interval: float | None = None


def stale_pairs(
    entries: Iterable[tuple[str, PairHealth | None]], running: Collection[str], factor: float, now: float
) -> list[Check]:
    """A failed check for every pair whose last success (or, before its first one, whose start) is more
    than ``factor`` intervals ago; a pair whose first pass is still ``running`` is not stale."""
    stale = []
    for name, health in entries:
        if health is None or health.expected_interval is None:
            continue
        if health.last_success is None and name in running:
            continue  # the first pass is still copying
        since = health.last_success or health.started_at
        if now - since > factor * health.expected_interval:
            what = "no successful pass yet" if health.last_success is None else "last success"
            stale.append(
                Check(
                    f"pair {name}",
                    False,
                    f"{what} for {now - since:.0f} s, more than {factor:g} × its {health.expected_interval:.0f} s "
                    "interval (metrics.stale_after_intervals)",
                )
            )
    return stale


def state_check(path: Path) -> Check:
    """Whether the state database takes writes: a write transaction opened and rolled back."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=2.0)
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:  # a real (empty) write: a read-only file or file system only shows there
                connection.execute("DELETE FROM schema_version WHERE 0")
            finally:
                connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return Check("state", True, f"{path} (busy with a pass's write)")
        return Check("state", False, f"{path}: {error}")
    except sqlite3.Error as error:
        return Check("state", False, f"{path}: {error}")
    return Check("state", True, f"{path} writable")
