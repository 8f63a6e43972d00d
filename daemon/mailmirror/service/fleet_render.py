"""The fleet's status and cutover report as documents: `status --json`, and `report` as Markdown (for a
change ticket), JSON or CSV (for tools and spreadsheets)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mailmirror.service.fleet import PairStatus, Totals, count_text, totals_of, when_text

if TYPE_CHECKING:
    from mailmirror.config.pair import Pair


def status_json(statuses: Sequence[PairStatus], **about: Any) -> dict[str, Any]:
    return {**about, "pairs": [_as_json(status) for status in statuses], "totals": asdict(totals_of(statuses))}


def _as_json(status: PairStatus) -> dict[str, Any]:
    document = asdict(status)
    document["refused_reasons"] = [{"reason": reason, "messages": count} for reason, count in status.refused_reasons]
    if status.verify is not None:  # when it ran, first (as before the record's fields were shared with the state)
        document["verify"] = {"at": status.verify.at, **document["verify"]}
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
    writer.writerows(_csv_row(status, about) for status in statuses)
    writer.writerow(_csv_totals_row(totals_of(statuses)))
    return out.getvalue()


def _csv_row(status: PairStatus, about: ReportContext) -> list[object]:
    pair = about.pairs[status.pair]
    verify = status.verify
    return [
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


def _csv_totals_row(totals: Totals) -> list[object]:
    return [
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


def _cell(value: int | None) -> str:
    return "" if value is None else str(value)


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(statuses: Sequence[PairStatus], about: ReportContext) -> str:
    totals = totals_of(statuses)
    lines = [
        *_markdown_header(statuses, about, totals),
        *_markdown_totals(totals),
        *_markdown_pairs(statuses, about),
        *_problem_sections(statuses),
        "",
        "Copied: messages mailmirror appended to the destination; already there: messages found on the destination "
        "by identity (Message-ID, Date, size) and not copied again; skipped by rule: source messages the pair's "
        "folder and message rules leave out; refused: messages the destination refused (retried on every pass). "
        "Verify compares every message of both sides by SHA-256 of its bytes, flags and INTERNALDATE.",
        "",
    ]
    return "\n".join(lines)


def _markdown_header(statuses: Sequence[PairStatus], about: ReportContext, totals: Totals) -> list[str]:
    ready = sum(1 for status in statuses if ready_for_cutover(status))
    verdict = "READY" if statuses and ready == len(statuses) else "NOT READY"
    return [
        "# mailmirror cutover report",
        "",
        f"- Generated: {about.generated_at}",
        f"- Config: `{about.config_path}`" + (f" (shard {about.shard})" if about.shard else ""),
        f"- State database: `{about.state_path}`",
        f"- Pairs: {totals.pairs}" + (f" (selected: {', '.join(about.selection)})" if about.selection else ""),
        "",
        f"**Result: {verdict} for cutover** — {ready} of {totals.pairs} pairs have every wanted message on "
        "the destination (nothing pending, nothing refused) and a clean last verify.",
    ]


def _markdown_totals(totals: Totals) -> list[str]:
    return [
        "",
        "## Totals",
        "",
        "| Folders | Source messages | Destination messages | Copied | Already there | Skipped by rule | Refused "
        "| Pending | Verified clean | Verify differences | Never verified |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {totals.folders} | {totals.src_messages} | {totals.dst_messages} | {totals.copied} | "
        f"{totals.already_there} | {totals.skipped_by_rule} | {totals.refused} | {totals.pending} | "
        f"{totals.verified_clean} | {totals.verified_with_differences} | {totals.never_verified} |",
    ]


def _markdown_pairs(statuses: Sequence[PairStatus], about: ReportContext) -> list[str]:
    lines = [
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
        cells = (
            status.pair,
            about.accounts[pair.source],
            about.accounts[pair.destination],
            status.state,
            count_text(status.folders),
            count_text(status.src_messages),
            count_text(status.dst_messages),
            status.copied,
            status.already_there,
            count_text(status.skipped_by_rule),
            status.refused,
            status.pending,
            when_text(status.last_success),
            "never" if verify is None else f"{when_text(verify.at)}: {verify.summary}",
            "yes" if ready_for_cutover(status) else "no",
        )
        lines.append("| " + " | ".join(_md(cell) for cell in cells) + " |")
    return lines


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
