"""The lists behind pair sets, read into rows: a CSV file (a header row, then one row per pair) or an
imapsync ``sync_loop`` file (``host1;user1;password1;host2;user2;password2;extra``).

Lines starting with ``#`` and empty lines are skipped. A problem is a :class:`CsvProblem` at the file's line
(``staff.csv:12: ...``); a list holding passwords must be private to the user running mailmirror
(:func:`private_file_problem`). What the rows become is :mod:`mailmirror.config.pairsets`' job.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNC_LOOP_COLUMNS = ("host1", "user1", "password1", "host2", "user2", "password2", "extra")
COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_LIST_BYTES = 256 * 1024 * 1024

#: Columns that set one option per row (an empty cell keeps the template's value); lists are separated by '|'.
ROW_OPTION_COLUMNS: dict[str, tuple[tuple[str, ...], bool]] = {
    "folders.under": (("folders", "under"), False),
    "folders.from_under": (("folders", "from_under"), False),
    "folders.include": (("folders", "include"), True),
    "folders.exclude": (("folders", "exclude"), True),
    "schedule.every": (("schedule", "every"), False),
    "schedule.cron": (("schedule", "cron"), False),
}


@dataclass(frozen=True)
class CsvProblem:
    """A problem in a pair set's list: ``file:line: column NAME: message`` (line None: the whole file)."""

    file: str
    line: int | None
    column: str | None
    message: str


@dataclass
class ListRow:
    """One row of a list: its line in the file and its cells by column name."""

    line: int
    values: dict[str, str]


@dataclass
class AccountList:
    """A list as read: the file as written in the config, its columns, the column naming the pairs, its rows."""

    shown: str
    columns: list[str]
    key_column: str
    rows: list[ListRow]


def read_list(path: Path, shown: str, kind: str, problems: list[CsvProblem]) -> AccountList | None:
    """The list at ``path`` (``kind``: csv or sync_loop), or None when it cannot be used: why is in ``problems``."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the load, a device never end
            problems.append(CsvProblem(shown, None, None, "not a regular file"))
            return None
        if info.st_size > MAX_LIST_BYTES:
            problems.append(CsvProblem(shown, None, None, f"larger than {MAX_LIST_BYTES // 2**20} MiB"))
            return None
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.append(CsvProblem(shown, None, None, "no such file"))
        return None
    except UnicodeDecodeError:
        problems.append(CsvProblem(shown, None, None, "not UTF-8 text"))
        return None
    except OSError as error:
        problems.append(CsvProblem(shown, None, None, f"cannot be read: {error.strerror or error}"))
        return None
    if kind == "sync_loop":
        return _read_sync_loop(text, shown, problems)
    return _read_csv(text, shown, problems)


def _read_csv(text: str, shown: str, problems: list[CsvProblem]) -> AccountList | None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[ListRow] = []
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record) or record[0].lstrip().startswith("#"):
                continue
            cells = [cell.strip() for cell in record]
            if header is None:
                header = cells
                if not _header_ok(header, shown, line, problems):
                    return None
                continue
            if len(cells) != len(header):
                problems.append(
                    CsvProblem(
                        shown, line, None, f"{len(cells)} fields, the header has {len(header)} ({join_names(header)})"
                    )
                )
                continue
            rows.append(ListRow(line, dict(zip(header, cells, strict=True))))
    except csv.Error as error:
        problems.append(CsvProblem(shown, reader.line_num, None, f"not valid CSV: {error}"))
        return None
    if header is None:
        problems.append(CsvProblem(shown, None, None, "empty: a header row (e.g. user,dest_user) and one row per pair"))
        return None
    return AccountList(shown, header, header[0], rows)


def _header_ok(header: list[str], shown: str, line: int, problems: list[CsvProblem]) -> bool:
    good = True
    for name in header:
        if not (COLUMN_NAME.fullmatch(name) or name in ROW_OPTION_COLUMNS):
            message = (
                f"header: {name!r} is not a column name (letters, digits and _, not starting with a digit; or one "
                f"of the option columns {join_names(ROW_OPTION_COLUMNS)})"
            )
            problems.append(CsvProblem(shown, line, None, message))
            good = False
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        problems.append(CsvProblem(shown, line, None, f"header: column {join_names(duplicates)} more than once"))
        good = False
    if good and header[0] in ROW_OPTION_COLUMNS:
        problems.append(CsvProblem(shown, line, None, "header: the first column names the pairs, not an option"))
        good = False
    return good


def _read_sync_loop(text: str, shown: str, problems: list[CsvProblem]) -> AccountList:
    rows: list[ListRow] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(";")
        if len(fields) < 6:
            message = f"{len(fields)} fields: a sync_loop line is {';'.join(SYNC_LOOP_COLUMNS[:6])};[extra]"
            problems.append(CsvProblem(shown, number, None, message))
            continue
        values = [value.strip() for value in fields[:6]] + [";".join(fields[6:]).strip()]
        rows.append(ListRow(number, dict(zip(SYNC_LOOP_COLUMNS, values, strict=True))))
    return AccountList(shown, list(SYNC_LOOP_COLUMNS), "user1", rows)


def join_names(names: Any) -> str:
    """``a, b, c`` for messages."""
    return ", ".join(str(name) for name in names)


def private_file_problem(path: Path, why: str) -> str | None:
    """Why ``path`` is not private to this user (owned by it, nothing for group and others), or None."""
    try:
        info = path.stat()
    except OSError as error:
        return f"cannot be checked: {error.strerror or error}"
    if info.st_uid != os.geteuid():
        return f"{why}, but it is owned by uid {info.st_uid}, not by the user running mailmirror (uid {os.geteuid()})"
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        return f"{why}, but group or others may read it (mode {mode:04o}): chmod 600 it"
    return None
