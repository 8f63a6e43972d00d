"""`mailmirror status` on the terminal: one line per pair and the totals, as a rich table, or as plain
aligned columns for a large fleet."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from mailmirror.service.fleet import STATES, PairStatus, Totals, count_text, totals_of, when_text

_STATE_STYLES = {"ok": "green", "partial": "yellow", "failing": "red", "stale": "red", "running": "cyan"}


PLAIN_TABLE_ROWS = 200  # beyond, plain aligned columns: a rich table of 10,000 rows takes many seconds
STATUS_COLUMNS = ("Pair", "State", "Last success", "Source", "Dest.", "Pending", "Refused", "Last error")


def _status_cells(status: PairStatus) -> list[str]:
    return [
        status.pair,
        status.state,
        when_text(status.last_success),
        count_text(status.src_messages),
        count_text(status.dst_messages),
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
