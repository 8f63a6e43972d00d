"""A fleet's `sync` summary: one line per pair and a total (no tables: rich's table and progress modules are
not even imported, since a no-change round over thousands of pairs should cost the passes, not the output)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from mailmirror.engine.outcome import PairReport, human_bytes


def print_pass_line(console: Console, report: PairReport) -> None:
    """A pass's summary on one line (a fleet's `sync`): the pair, its outcome, its numbers; what was skipped,
    failed or altered is still listed below it."""
    created = sum(1 for folder in report.folders if folder.created)
    copied, deleted = ("to copy", "to delete") if report.dry_run else ("copied", "deleted")
    moved = report.total("source_deleted")
    text = (
        f"{report.pair}: {pass_outcome_word(report)}; {len(report.folders)} folders ({created} new), "
        f"{report.copied} {copied} ({human_bytes(report.bytes_copied)}), {report.total('adopted')} present, "
        f"{report.total('flags_updated')} flag updates, {report.total('deleted')} {deleted}"
        + (f", {moved} deleted from the source after their copy" if moved else "")
        + f", {report.skipped} skipped, {report.failed} failed, {report.seconds:.1f} s"
    )
    _write_line(console, text)
    if report.error is not None or report.failed or report.skipped or report.altered or not report.complete:
        from mailmirror.cli.report import print_pass_problems

        print_pass_problems(console, report)


def pass_outcome_word(report: PairReport) -> str:
    if report.error is not None:
        return "stopped"
    if report.dry_run:
        return "dry run"
    if report.complete:
        return f"complete, {report.altered} altered by the destination" if report.altered else "complete"
    if all(folder.unresolved for folder in report.folders if not folder.complete):
        return "copied, not proven yet"
    return "incomplete"


def print_fleet_totals(console: Console, reports: Sequence[PairReport]) -> None:
    """The last line of a fleet's `sync`: how many pairs ended how, and the sums."""
    outcomes: dict[str, int] = {}
    for report in reports:
        word = pass_outcome_word(report).split(",")[0]
        outcomes[word] = outcomes.get(word, 0) + 1
    copied = sum(report.copied for report in reports)
    size = sum(report.bytes_copied for report in reports)
    moved = sum(report.total("source_deleted") for report in reports)
    counts = ", ".join(f"{count} {word}" for word, count in sorted(outcomes.items()))
    verb = "to copy" if any(report.dry_run for report in reports) else "copied"
    _write_line(
        console,
        f"{len(reports)} {'pair' if len(reports) == 1 else 'pairs'} ({counts}): "
        f"{copied} messages {verb} ({human_bytes(size)}), "
        f"{sum(r.total('adopted') for r in reports)} already on the destination, "
        + (f"{moved} deleted from the source after their copy, " if moved else "")
        + f"{sum(r.skipped for r in reports)} skipped, {sum(r.failed for r in reports)} failed",
    )


def _write_line(console: Console, text: str) -> None:
    if console.is_terminal:  # progress bars may share the terminal: rich keeps them below the lines
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        console.file.write(text + "\n")
