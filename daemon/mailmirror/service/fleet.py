"""A fleet's migration at a glance: each pair's status (`mailmirror status`, `report`) read from the state
database in a few grouped queries, whatever the number of pairs, the totals, and verify results recorded.

Per pair, the state database knows: its last pass (when, outcome, error), its last success, the messages
on each side of every mapped folder at the last full pass, the messages still to bring over (the backlog,
shown as pending), those the destination refused (with the server's reasons), what the passes copied and
found already there, and the last `mailmirror verify` result. The status as JSON, CSV and Markdown:
service/fleet_render.py; as a table on the terminal: cli/status_table.py.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailmirror.errors import MailmirrorError
from mailmirror.state.records import VerifyRecord
from mailmirror.state.storage_errors import state_error
from mailmirror.state.store import StateStore

if TYPE_CHECKING:
    from mailmirror.config.config_file import Config
    from mailmirror.engine.verify import PairVerdict

log = logging.getLogger(__name__)

STATES = ("ok", "partial", "failing", "stale", "running", "never")
FILTERS = ("failing", "stale", "incomplete")


@dataclass(frozen=True)
class VerifyResult(VerifyRecord):
    """The last verify of a pair, with when it ran."""

    at: str


@dataclass
class PairStatus:
    """One pair's line of `status` and row of `report`."""

    pair: str
    state: str
    last_pass: str | None = None
    last_outcome: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    folders: int | None = None
    src_messages: int | None = None
    dst_messages: int | None = None
    pending: int = 0
    copied: int = 0
    already_there: int = 0
    skipped_by_rule: int | None = None
    refused: int = 0
    refused_reasons: list[tuple[str, int]] = field(default_factory=list)
    verify: VerifyResult | None = None

    @property
    def failing(self) -> bool:
        return self.state in ("failing", "partial")

    @property
    def stale(self) -> bool:
        return self.state in ("stale", "never") or (self.state == "failing" and self.last_success is None)

    @property
    def incomplete(self) -> bool:
        """Not every wanted source message is known to be on the destination yet."""
        return self.state in ("never", "running", "failing", "partial") or self.pending > 0 or self.refused > 0

    def matches(self, filters: Iterable[str]) -> bool:
        wanted = list(filters)
        return not wanted or any(getattr(self, name) for name in wanted)


def _state(row: Mapping[str, Any], interval: float | None, stale_factor: float, now: datetime) -> str:
    if "last_started_at" not in row:
        return "never"
    if row.get("last_finished_at") is None:
        return "running"
    outcome = row.get("last_outcome")
    if outcome in ("error", "stopped"):
        return "failing"
    success = row.get("last_success")
    if interval is not None and success is not None:
        age = (now - datetime.fromisoformat(str(success))).total_seconds()
        if age > stale_factor * interval:
            return "stale"
    return "partial" if outcome == "partial" else "ok"


def fleet_status(
    config: Config, store: StateStore, names: Sequence[str], *, now: datetime | None = None
) -> list[PairStatus]:
    """Every named pair's status, from the state database only (no server is contacted)."""
    from mailmirror.service.schedule import expected_interval

    now = now or datetime.now(UTC)
    rows = store.fleet_rows()
    reasons = store.refusal_reasons()
    pairs = config.effective_pairs()
    factor = config.metrics.stale_after_intervals
    result = []
    for name in names:
        row = rows.get(name, {})
        status = PairStatus(name, _state(row, expected_interval(pairs[name]), factor, now))
        status.last_pass = _text(row.get("last_started_at"))
        status.last_outcome = _text(row.get("last_outcome"))
        status.last_success = _text(row.get("last_success"))
        status.last_error = _text(row.get("last_error"))
        status.folders = _number(row.get("folders"))
        status.src_messages = _number(row.get("src_messages"))
        status.dst_messages = _number(row.get("dst_messages"))
        status.pending = _number(row.get("backlog")) or 0
        status.copied = _number(row.get("copied")) or 0
        status.already_there = _number(row.get("adopted")) or 0
        status.refused = _number(row.get("refused")) or 0
        status.refused_reasons = reasons.get(name, [])
        if status.src_messages is not None:
            synced = _number(row.get("synced")) or 0
            # pending counts the refused messages too (they are still wanted on the destination)
            status.skipped_by_rule = max(0, status.src_messages - synced - max(status.pending, status.refused))
        verify = row.get("verify")
        if isinstance(verify, dict):
            status.verify = VerifyResult(**{**verify, "clean": bool(verify["clean"])})
            status.skipped_by_rule = status.verify.skipped if status.verify.error is None else status.skipped_by_rule
        result.append(status)
    return result


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _number(value: object) -> int | None:
    return None if value is None else int(str(value))


# -- verify results --------------------------------------------------------------------------------


def verify_record(verdict: PairVerdict) -> VerifyRecord:
    """What the state keeps of a verify: counts and one sentence."""
    folders = verdict.folders
    counts = {
        "missing": sum(len(f.missing) for f in folders),
        "duplicate": sum(len(f.duplicates) for f in folders),
        "flags differ": sum(len(f.flag_differences) for f in folders),
        "INTERNALDATE differs": sum(len(f.date_differences) for f in folders),
        "altered": sum(len(f.altered) for f in folders),
        "folder missing": sum(int(f.folder_missing) for f in folders),
    }
    source = sum(f.source_messages for f in folders)
    if verdict.error is not None:
        summary = f"verify stopped: {verdict.error}"
    elif verdict.clean:
        summary = f"clean: all {source} source messages in {len(folders)} folders on the destination exactly once"
    else:
        summary = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
    return VerifyRecord(
        clean=verdict.clean,
        folders=len(folders),
        src_messages=source,
        dst_messages=sum(f.destination_messages for f in folders),
        differences=verdict.differences,
        extra=sum(len(f.extra) for f in folders),
        skipped=sum(f.skipped_by_rule for f in folders),
        summary=summary,
        error=None if verdict.error is None else str(verdict.error),
    )


def verify_pairs(
    config: Config,
    names: Sequence[str],
    parallel: int,
    on_verdict: Callable[[PairVerdict], None],
) -> list[PairVerdict]:
    """Verify the pairs (``parallel`` at a time), record each result in the state database as it comes,
    and hand it to ``on_verdict`` (in the order of ``names``)."""
    from concurrent.futures import ThreadPoolExecutor

    from mailmirror.engine.verify import verify_pair

    pairs = config.effective_pairs()
    try:
        store: StateStore | None = StateStore(config.state.path)
    except MailmirrorError as error:  # verify itself needs no state: it still runs, unrecorded
        log.warning("verify results are not recorded: %s", error)
        store = None
    verdicts: list[PairVerdict] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="verify") as pool:
            futures = [pool.submit(verify_pair, name, pairs[name], config) for name in names]
            for future in futures:
                verdict = future.result()
                if store is not None:
                    _record(store, verdict)
                on_verdict(verdict)
                verdicts.append(verdict)
    finally:
        if store is not None:
            store.close()
    return verdicts


def _record(store: StateStore, verdict: PairVerdict) -> None:
    try:
        store.record_verify(verdict.pair, verify_record(verdict))
    except sqlite3.Error as error:
        log.warning("%s: the verify result is not recorded: %s", verdict.pair, state_error(store.path, error, "write"))


# -- status ----------------------------------------------------------------------------------------


@dataclass
class Totals:
    pairs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    folders: int = 0
    src_messages: int = 0
    dst_messages: int = 0
    pending: int = 0
    copied: int = 0
    already_there: int = 0
    skipped_by_rule: int = 0
    refused: int = 0
    verified_clean: int = 0
    verified_with_differences: int = 0
    never_verified: int = 0


def totals_of(statuses: Sequence[PairStatus]) -> Totals:
    totals = Totals(pairs=len(statuses))
    for status in statuses:
        totals.states[status.state] = totals.states.get(status.state, 0) + 1
        totals.folders += status.folders or 0
        totals.src_messages += status.src_messages or 0
        totals.dst_messages += status.dst_messages or 0
        totals.pending += status.pending
        totals.copied += status.copied
        totals.already_there += status.already_there
        totals.skipped_by_rule += status.skipped_by_rule or 0
        totals.refused += status.refused
        if status.verify is None:
            totals.never_verified += 1
        elif status.verify.clean:
            totals.verified_clean += 1
        else:
            totals.verified_with_differences += 1
    return totals


def count_text(value: int | None) -> str:
    """A count for a table: "-" when unknown."""
    return "-" if value is None else str(value)


def when_text(value: str | None) -> str:
    """A recorded time for a table: "2026-01-02 03:04:05" (UTC), or "never"."""
    return value.replace("T", " ").removesuffix("+00:00") if value else "never"
