"""A fleet's migration at a glance: `mailmirror status` (one line per pair) and `mailmirror report` (the
cutover sign-off), both read from the state database in a few grouped queries, whatever the number of pairs.

Per pair, the state database knows: its last pass (when, outcome, error), its last success, the messages
on each side of every mapped folder at the last full pass, the messages still to bring over (pending),
those the destination refused (with the server's reasons), what the passes copied and found already
there, and the last `mailmirror verify` result.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from mailmirror.errors import MailmirrorError
from mailmirror.state.records import VerifyRecord
from mailmirror.state.storage_errors import state_error
from mailmirror.state.store import StateStore

if TYPE_CHECKING:
    from mailmirror.config.config_file import Config
    from mailmirror.config.pair import Pair
    from mailmirror.engine.verify import PairVerdict

log = logging.getLogger(__name__)

STATES = ("ok", "partial", "failing", "stale", "running", "never")
FILTERS = ("failing", "stale", "incomplete")


@dataclass
class VerifyResult:
    at: str
    clean: bool
    folders: int
    src_messages: int
    dst_messages: int
    differences: int
    extra: int
    skipped: int
    summary: str
    error: str | None


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


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _when(value: str | None) -> str:
    return value.replace("T", " ").removesuffix("+00:00") if value else "never"


_STATE_STYLES = {"ok": "green", "partial": "yellow", "failing": "red", "stale": "red", "running": "cyan"}


PLAIN_TABLE_ROWS = 200  # beyond, plain aligned columns: a rich table of 10,000 rows takes many seconds
STATUS_COLUMNS = ("Pair", "State", "Last success", "Source", "Dest.", "Pending", "Refused", "Last error")


def _status_cells(status: PairStatus) -> list[str]:
    return [
        status.pair,
        status.state,
        _when(status.last_success),
        _count(status.src_messages),
        _count(status.dst_messages),
        str(status.pending),
        str(status.refused),
        (status.last_error or "") if status.state in ("failing", "partial", "stale") else "",
    ]


def print_status(console: Console, statuses: Sequence[PairStatus], title: str) -> None:
    if len(statuses) > PLAIN_TABLE_ROWS:
        _print_plain_status(console, statuses, title)
        return
    table = Table(title=title, title_justify="left")
    table.add_column("Pair")
    table.add_column("State")
    table.add_column("Last success")
    for column in ("Source", "Dest.", "Pending", "Refused"):
        table.add_column(column, justify="right")
    table.add_column("Last error", overflow="fold")
    for status in statuses:
        cells = _status_cells(status)
        style = _STATE_STYLES.get(status.state)
        cells[1] = f"[{style}]{status.state}[/{style}]" if style else status.state
        table.add_row(*cells)
    console.print(table)
    console.print(_totals_line(totals_of(statuses)), markup=False, highlight=False)


def _print_plain_status(console: Console, statuses: Sequence[PairStatus], title: str) -> None:
    rows = [list(STATUS_COLUMNS), *(_status_cells(status) for status in statuses)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(STATUS_COLUMNS) - 1)]
    right = {3, 4, 5, 6}  # the counts
    lines = [title]
    for row in rows:
        cells = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.append(_totals_line(totals_of(statuses)))
    console.file.write("\n".join(lines) + "\n")


def _totals_line(totals: Totals) -> str:
    states = ", ".join(f"{totals.states[state]} {state}" for state in STATES if totals.states.get(state))
    return (
        f"{totals.pairs} pairs ({states or 'none'}); messages: {totals.src_messages} on the sources, "
        f"{totals.dst_messages} on the destinations, {totals.pending} pending, {totals.refused} refused"
    )


def status_json(statuses: Sequence[PairStatus], **about: Any) -> dict[str, Any]:
    return {**about, "pairs": [_as_json(status) for status in statuses], "totals": asdict(totals_of(statuses))}


def _as_json(status: PairStatus) -> dict[str, Any]:
    document = asdict(status)
    document["refused_reasons"] = [{"reason": reason, "messages": count} for reason, count in status.refused_reasons]
    return document


# -- report ----------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "pair",
    "state",
    "source",
    "destination",
    "folders",
    "src_messages",
    "dst_messages",
    "copied",
    "already_there",
    "skipped_by_rule",
    "refused",
    "refused_reasons",
    "pending",
    "last_pass",
    "last_outcome",
    "last_success",
    "last_error",
    "verified_at",
    "verify_clean",
    "verify_differences",
    "verify_summary",
)


@dataclass
class ReportContext:
    """What the report says about where it comes from."""

    config_path: str
    state_path: str
    generated_at: str
    shard: str | None
    selection: Sequence[str]
    pairs: Mapping[str, Pair]
    accounts: Mapping[str, str]  # account name -> user@host:port (never a secret)


def ready_for_cutover(status: PairStatus) -> bool:
    """Every wanted message is on the destination and the last verify found no difference."""
    return (
        status.state in ("ok", "stale")
        and status.pending == 0
        and status.refused == 0
        and status.verify is not None
        and status.verify.clean
    )


def report_json(statuses: Sequence[PairStatus], about: ReportContext) -> dict[str, Any]:
    documents = []
    for status in statuses:
        document = _as_json(status)
        pair = about.pairs[status.pair]
        document["source"] = about.accounts[pair.source]
        document["destination"] = about.accounts[pair.destination]
        document["ready"] = ready_for_cutover(status)
        documents.append(document)
    return {
        "report": "mailmirror cutover report",
        "generated_at": about.generated_at,
        "config": about.config_path,
        "state": about.state_path,
        "shard": about.shard,
        "selection": list(about.selection),
        "ready": bool(statuses) and all(ready_for_cutover(status) for status in statuses),
        "totals": asdict(totals_of(statuses)),
        "pairs": documents,
    }


def report_csv(statuses: Sequence[PairStatus], about: ReportContext) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for status in statuses:
        pair = about.pairs[status.pair]
        verify = status.verify
        writer.writerow(
            [
                status.pair,
                status.state,
                about.accounts[pair.source],
                about.accounts[pair.destination],
                _cell(status.folders),
                _cell(status.src_messages),
                _cell(status.dst_messages),
                status.copied,
                status.already_there,
                _cell(status.skipped_by_rule),
                status.refused,
                "; ".join(f"{count}x {reason}" for reason, count in status.refused_reasons),
                status.pending,
                status.last_pass or "",
                status.last_outcome or "",
                status.last_success or "",
                status.last_error or "",
                verify.at if verify else "",
                ("yes" if verify.clean else "no") if verify else "",
                verify.differences if verify else "",
                verify.summary if verify else "",
            ]
        )
    totals = totals_of(statuses)
    writer.writerow(
        [
            "TOTAL",
            f"{totals.pairs} pairs",
            "",
            "",
            totals.folders,
            totals.src_messages,
            totals.dst_messages,
            totals.copied,
            totals.already_there,
            totals.skipped_by_rule,
            totals.refused,
            "",
            totals.pending,
            "",
            "",
            "",
            "",
            "",
            f"{totals.verified_clean} clean",
            f"{totals.verified_with_differences} with differences",
            f"{totals.never_verified} never verified",
        ]
    )
    return out.getvalue()


def _cell(value: int | None) -> str:
    return "" if value is None else str(value)


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(statuses: Sequence[PairStatus], about: ReportContext) -> str:
    totals = totals_of(statuses)
    ready = [status for status in statuses if ready_for_cutover(status)]
    verdict = "READY" if statuses and len(ready) == len(statuses) else "NOT READY"
    lines = [
        "# mailmirror cutover report",
        "",
        f"- Generated: {about.generated_at}",
        f"- Config: `{about.config_path}`" + (f" (shard {about.shard})" if about.shard else ""),
        f"- State database: `{about.state_path}`",
        f"- Pairs: {totals.pairs}" + (f" (selected: {', '.join(about.selection)})" if about.selection else ""),
        "",
        f"**Result: {verdict} for cutover** — {len(ready)} of {totals.pairs} pairs have every wanted message on "
        "the destination (nothing pending, nothing refused) and a clean last verify.",
        "",
        "## Totals",
        "",
        "| Folders | Source messages | Destination messages | Copied | Already there | Skipped by rule | Refused "
        "| Pending | Verified clean | Verify differences | Never verified |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {totals.folders} | {totals.src_messages} | {totals.dst_messages} | {totals.copied} | "
        f"{totals.already_there} | {totals.skipped_by_rule} | {totals.refused} | {totals.pending} | "
        f"{totals.verified_clean} | {totals.verified_with_differences} | {totals.never_verified} |",
        "",
        "## Pairs",
        "",
        "| Pair | Source | Destination | State | Folders | Source msgs | Dest. msgs | Copied | Already there "
        "| Skipped by rule | Refused | Pending | Last success | Last verify | Ready |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for status in statuses:
        pair = about.pairs[status.pair]
        verify = status.verify
        verify_text = "never" if verify is None else f"{_when(verify.at)}: {verify.summary}"
        lines.append(
            "| "
            + " | ".join(
                _md(cell)
                for cell in (
                    status.pair,
                    about.accounts[pair.source],
                    about.accounts[pair.destination],
                    status.state,
                    _count(status.folders),
                    _count(status.src_messages),
                    _count(status.dst_messages),
                    status.copied,
                    status.already_there,
                    _count(status.skipped_by_rule),
                    status.refused,
                    status.pending,
                    _when(status.last_success),
                    verify_text,
                    "yes" if ready_for_cutover(status) else "no",
                )
            )
            + " |"
        )
    lines += _problem_sections(statuses)
    lines += [
        "",
        "Copied: messages mailmirror appended to the destination; already there: messages found on the destination "
        "by identity (Message-ID, Date, size) and not copied again; skipped by rule: source messages the pair's "
        "folder and message rules leave out; refused: messages the destination refused (retried on every pass). "
        "Verify compares every message of both sides by SHA-256 of its bytes, flags and INTERNALDATE.",
        "",
    ]
    return "\n".join(lines)


def _problem_sections(statuses: Sequence[PairStatus]) -> list[str]:
    lines: list[str] = []
    refused = [status for status in statuses if status.refused_reasons]
    if refused:
        lines += ["", "## Refused messages", ""]
        for status in refused:
            for reason, count in status.refused_reasons:
                lines.append(f"- {_md(status.pair)}: {count} × {_md(reason)}")
    troubled = [
        status
        for status in statuses
        if (status.verify is not None and not status.verify.clean) or status.state in ("failing", "never", "running")
    ]
    if troubled:
        lines += ["", "## Needs attention", ""]
        for status in troubled:
            if status.verify is not None and not status.verify.clean:
                lines.append(f"- {_md(status.pair)}: last verify: {_md(status.verify.summary)}")
            if status.state in ("failing", "never", "running"):
                error = f": {_md(status.last_error)}" if status.last_error else ""
                lines.append(f"- {_md(status.pair)}: {status.state}{error}")
    return lines


def render_report(statuses: Sequence[PairStatus], about: ReportContext, form: str) -> str:
    if form == "json":
        return json.dumps(report_json(statuses, about), indent=2, ensure_ascii=False) + "\n"
    if form == "csv":
        return report_csv(statuses, about)
    return report_markdown(statuses, about)
