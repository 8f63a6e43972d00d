"""What the user sees at the end of a command: pass summaries, verify tables, capability reports.

Also the progress display of `mailmirror sync` on a terminal (one bar per folder, by bytes).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from mailmirror.engine.mapping import FolderMapping
from mailmirror.engine.outcome import FolderReport, PairReport, human_bytes
from mailmirror.engine.verify import PairVerdict

MAX_LISTED = 20


@dataclass
class _FolderBar:
    task: TaskID
    label: str
    messages_total: int
    messages_done: int = 0


class RichProgress:
    """Progress bars per folder on a terminal (implements mailmirror.engine.outcome.Progress): one per folder under
    way, of any pair, since workers and pairs run in parallel."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.lock = threading.Lock()
        self.folders: dict[tuple[str, str], _FolderBar] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def folder_started(self, pair: str, mapping: FolderMapping, messages: int, size: int) -> None:
        if not messages:
            return
        label = f"{pair}: {mapping.source}"
        with self.lock:
            task = self.bars.add_task(f"{label} (0/{messages})", total=size)
            self.folders[(pair, mapping.source)] = _FolderBar(task, label, messages)

    def advance(self, pair: str, folder: str, messages: int, size: int) -> None:
        with self.lock:
            bar = self.folders.get((pair, folder))
            if bar is None:
                return
            bar.messages_done += messages
            description = f"{bar.label} ({bar.messages_done}/{bar.messages_total})"
            self.bars.update(bar.task, advance=size, description=description)

    def folder_finished(self, pair: str, report: FolderReport) -> None:
        with self.lock:
            bar = self.folders.pop((pair, report.source), None)
            if bar is not None:  # its numbers are in the pair's summary; the live area shows what runs
                self.bars.remove_task(bar.task)


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def print_pass(console: Console, report: PairReport, source: str, destination: str) -> None:
    """A pass's summary: the folder table, one sentence of totals, what was skipped, failed or altered, the outcome."""
    console.print(_pass_table(report, source, destination))
    console.print(_pass_totals(report))
    print_pass_problems(console, report)
    _print_pass_outcome(console, report)


def _pass_table(report: PairReport, source: str, destination: str) -> Table:
    title = f"{'Dry run' if report.dry_run else 'Pass'} of pair '{report.pair}': {source} → {destination}"
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("Source folder")
    table.add_column("Destination folder")
    verb = "To copy" if report.dry_run else "Copied"
    for column in (verb, "Present", "Flags", "Deleted", "Skipped", "Failed"):
        table.add_column(column, justify="right")
    for folder in report.folders:
        table.add_row(
            folder.source,
            folder.destination + _folder_notes(folder),
            str(folder.copied),
            str(folder.adopted),
            str(folder.flags_updated),
            str(folder.deleted),
            str(len(folder.skipped)),
            f"[red]{len(folder.failed)}[/red]" if folder.failed else "0",
        )
    table.caption = (
        "Present: already on the destination (matched by fingerprint). Flags: flag updates. "
        "Deleted: on the destination (deletions.destination: mirror)."
    )
    table.caption_justify = "left"
    return table


def _pass_totals(report: PairReport) -> str:
    seconds = report.seconds
    created = sum(1 for folder in report.folders if folder.created)
    moved = report.total("source_deleted")
    return (
        f"  {len(report.folders)} folders ({created} {'to create' if report.dry_run else 'created'}), "
        f"{report.copied} messages {'to copy' if report.dry_run else 'copied'} ({human_bytes(report.bytes_copied)}), "
        f"{report.total('adopted')} already on the destination, {report.total('flags_updated')} flag updates, "
        f"{report.total('deleted')} {'to delete' if report.dry_run else 'deleted'} on the destination, "
        + (f"{moved} deleted from the source after their copy, " if moved else "")
        + (f"{report.altered} altered by the destination server, " if report.altered else "")
        + f"{report.skipped} skipped, {report.failed} failed in {seconds:.1f} s: "
        f"{_rate(report.copied, seconds):.1f} msg/s, {_rate(report.bytes_copied, seconds) / 2**20:.2f} MiB/s"
    )


def print_pass_problems(console: Console, report: PairReport) -> None:
    _print_reasons(console, "Skipped", [(f.source, uid, why) for f in report.folders for uid, why in f.skipped])
    _print_reasons(console, "Failed", [(f.source, uid, why) for f in report.folders for uid, why in f.failed])
    _print_reasons(
        console,
        "Altered by the destination server",
        [(f.source, uid, why) for f in report.folders for uid, why in f.altered],
    )
    for folder in report.folders:
        if folder.error:
            console.print(f"  [red]Folder {folder.source}: {folder.error}[/red]")
    removed = report.total("late_duplicates_removed")
    if removed:
        console.print(f"  Removed {removed} late duplicates of our own (appends of a lost connection executed late).")
    for folder in report.folders:
        if folder.unresolved:
            console.print(f"  [yellow]Folder {folder.source}: not proven yet: {folder.unresolved}[/yellow]")


def _print_pass_outcome(console: Console, report: PairReport) -> None:
    if report.error is not None:
        console.print(f"  [red]Pass stopped: {report.error}[/red]")
    elif report.dry_run:
        console.print("  Dry run: nothing was changed on either server.")
    elif report.complete and report.altered:
        console.print(
            f"  [yellow]Complete, but {report.altered} messages were altered by the destination server: it "
            "stored other bytes than it was sent (see above; e.g. Cyrus munge8bit replaces 8-bit header "
            "characters).[/yellow]"
        )
    elif report.complete:
        console.print("  [green]Complete: every selected source message is on the destination.[/green]")
    elif all(folder.unresolved for folder in report.folders if not folder.complete):
        console.print(
            "  [yellow]Copied, not proven yet: a server may still execute a lost connection's appends "
            "(see above); a later pass settles it.[/yellow]"
        )
    else:
        console.print(f"  [yellow]Incomplete: {_incomplete_reason(report)}[/yellow]", highlight=False)


def _incomplete_reason(report: PairReport) -> str:
    """What kept a pass from completing, in words: the summary must not claim missing messages when only
    the deletion guard held back (it deletes nothing) or a folder disappeared."""
    guarded = [f for f in report.folders if f.error and f.error.startswith("refusing to delete")]
    vanished = [f for f in report.folders if f.error and "was deleted on the server during the pass" in f.error]
    others = [f for f in report.folders if f.error and f not in guarded and f not in vanished]
    reasons = []
    if report.failed or others:
        reasons.append("some source messages are not on the destination")
    if vanished:
        names = ", ".join(f.source for f in vanished[:3])
        reasons.append(f"{len(vanished)} folder(s) were deleted on a server during the pass ({names})")
    if guarded:
        reasons.append(
            f"the deletion guard refused deletions in {len(guarded)} folder(s) (deletions.max_share): nothing "
            "was deleted there; check the source, then --force-deletions"
        )
    if guarded and not (report.failed or others or vanished):
        reasons.append("every selected source message is on the destination")
    return "; ".join(reasons or ["some source messages are not on the destination"]) + " (see above)."


def _folder_notes(folder: FolderReport) -> str:
    """What the pass table says after a destination folder: rule (when not the default), merge, state."""
    notes = [folder.rule] if folder.rule != "default" else []
    notes += [f"merged with {folder.merged_into}"] if folder.merged_into else []
    notes += ["new"] if folder.created else []
    notes += [f"renamed from {folder.renamed_from}"] if folder.renamed_from else []
    notes += ["unchanged"] if folder.unchanged else []
    return f" ({', '.join(notes)})" if notes else ""


def _print_reasons(console: Console, label: str, rows: Sequence[tuple[str, int, str]]) -> None:
    if not rows:
        return
    console.print(f"  {label}:")
    for folder, uid, why in rows[:MAX_LISTED]:
        console.print(f"    {folder} UID {uid}: {why}", markup=False, highlight=False)
    if len(rows) > MAX_LISTED:
        console.print(f"    … and {len(rows) - MAX_LISTED} more")


def print_verdict(console: Console, verdict: PairVerdict) -> None:
    table = Table(title=f"Verify pair '{verdict.pair}'", title_justify="left")
    for column in ("Source folder", "Destination folder"):
        table.add_column(column)
    for column in ("Source", "Dest.", "Missing", "Dupl.", "Flags", "Date", "Altered", "Extra"):
        table.add_column(column, justify="right")
    for folder in verdict.folders:
        table.add_row(
            folder.source,
            folder.destination + (" (missing!)" if folder.folder_missing else ""),
            str(folder.source_messages),
            str(folder.destination_messages),
            _count(len(folder.missing)),
            _count(len(folder.duplicates)),
            _count(len(folder.flag_differences)),
            _count(len(folder.date_differences)),
            _count(len(folder.altered)),
            str(len(folder.extra)),
        )
    console.print(table)
    details: list[str] = []
    for folder in verdict.folders:
        details += [f"{folder.source}: source UID {uid} missing on the destination" for uid in folder.missing]
        details += [f"{folder.source}: destination UID {uid} is a duplicate" for uid in folder.duplicates]
        details += [f"{folder.source}: UID {s}→{d}: flags {why}" for s, d, why in folder.flag_differences]
        details += [f"{folder.source}: UID {s}→{d}: INTERNALDATE {why}" for s, d, why in folder.date_differences]
        details += [
            f"{folder.source}: UID {s}→{d}: altered by the destination server (same message, other bytes)"
            for s, d in folder.altered
        ]
    for line in details[:MAX_LISTED]:
        console.print(f"  {line}", markup=False, highlight=False)
    if len(details) > MAX_LISTED:
        console.print(f"  … and {len(details) - MAX_LISTED} more")
    if verdict.error is not None:
        console.print(f"  [red]Verify stopped: {verdict.error}[/red]")
    elif verdict.clean:
        total = sum(folder.source_messages for folder in verdict.folders)
        console.print(
            f"  [green]No differences: all {total} source messages in {len(verdict.folders)} folders are on the "
            "destination exactly once, byte-identical, with the same flags and INTERNALDATE.[/green]"
        )
    else:
        altered = sum(len(folder.altered) for folder in verdict.folders)
        why = (
            f" {altered} messages were altered by the destination server: it stores other bytes than it was "
            "sent (e.g. Cyrus munge8bit replaces 8-bit header characters); they are there, not missing."
            if altered
            else ""
        )
        console.print(f"  [red]{verdict.differences} differences.{why}[/red]")


def _count(value: int) -> str:
    return f"[red]{value}[/red]" if value else "0"


def _size_text(size: tuple[int, int] | None) -> str:
    return "-" if size is None else f"{size[0]} ({human_bytes(size[1])})"


def print_plan(console: Console, report: PairReport, source: str, destination: str) -> None:
    """`mailmirror plan`: the mapping, the rule behind each destination name, sizes, what a pass would do."""
    table = Table(title=f"Plan of pair '{report.pair}': {source} → {destination}", title_justify="left")
    for column in ("Source folder", "Destination folder", "Rule", "Source", "Destination"):
        table.add_column(column)
    for column in ("Copy", "Present", "Flags", "Delete", "Skip", "Fail"):
        table.add_column(column, justify="right")
    for folder in report.folders:
        rule = folder.rule + (f", merged with {folder.merged_into}" if folder.merged_into else "")
        rule += f", renamed from {folder.renamed_from}" if folder.renamed_from else ""
        table.add_row(
            folder.source,
            folder.destination + (" (to create)" if folder.created else ""),
            rule,
            _size_text(folder.source_size),
            _size_text(folder.destination_size),
            f"{folder.copied} ({human_bytes(folder.bytes_copied)})" if folder.copied else "0",
            str(folder.adopted),
            str(folder.flags_updated),
            str(folder.deleted),
            str(len(folder.skipped)),
            str(len(folder.failed)),
        )
    console.print(table)
    for folder in report.folders:
        if folder.error:
            console.print(f"  [red]Folder {folder.source}: {folder.error}[/red]")
    if report.error is not None:
        console.print(f"  [red]Plan stopped: {report.error}[/red]")
    else:
        console.print(
            f"  A pass would copy {report.copied} messages ({human_bytes(report.bytes_copied)}), update flags of "
            f"{report.total('flags_updated')}, delete {report.total('deleted')}. Nothing was changed."
        )


def plan_json(report: PairReport, source: str, destination: str) -> dict[str, object]:
    def size(value: tuple[int, int] | None) -> dict[str, int] | None:
        return None if value is None else {"messages": value[0], "bytes": value[1]}

    return {
        "pair": report.pair,
        "source": source,
        "destination": destination,
        "error": str(report.error) if report.error else None,
        "folders": [
            {
                "source": folder.source,
                "destination": folder.destination,
                "rule": folder.rule,
                "create": folder.created,
                "renamed_from": folder.renamed_from,
                "merged_into": folder.merged_into,
                "source_size": size(folder.source_size),
                "destination_size": size(folder.destination_size),
                "copy": folder.copied,
                "copy_bytes": folder.bytes_copied,
                "present": folder.adopted,
                "flag_updates": folder.flags_updated,
                "delete": folder.deleted,
                "skip": [{"uid": uid, "reason": why} for uid, why in folder.skipped],
                "fail": [{"uid": uid, "reason": why} for uid, why in folder.failed],
                "error": folder.error,
            }
            for folder in report.folders
        ],
    }
