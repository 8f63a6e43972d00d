"""What is wrong with a config file, as the user reads it: one ``file:line: path: message`` per problem.

:class:`InvalidConfig` (a :class:`~mailmirror.errors.ConfigError`, exit 78) carries every problem found at
once; :func:`format_config_error` renders any ``ConfigError`` for the terminal. The sentences themselves are
written by :mod:`mailmirror.config.yaml_source` (the file and its syntax) and
:mod:`mailmirror.config.validation_messages` (the values).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailmirror.config.pair_set_lists import CsvProblem
from mailmirror.errors import ConfigError

Location = tuple[Any, ...]
"""A place in the config data: keys and list indexes, from the top (``("pairs", "alice", "source")``)."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file, printed as ``file:line: path: message``."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def list_problem(problem: CsvProblem) -> ConfigProblem:
    """A problem in a pair set's list, as ``staff.csv:12: column dest_user: message``."""
    return ConfigProblem(
        problem.file, problem.line, f"column {problem.column}" if problem.column else "", problem.message
    )


class InvalidConfig(ConfigError):
    """The config file is missing, unreadable or invalid; ``problems`` lists each problem (exit 78)."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def file_and_line(problem: ConfigProblem) -> tuple[str, int]:
    """Sort key: the config file's problems and each list's, in line order."""
    return problem.file, problem.line or 0


def dotted(loc: Location) -> str:
    """``pairs.alice.folders.exclude[2]``; keys that are not plain words are quoted: ``map["Sent Items"]``."""
    text = ""
    for segment in loc:
        if isinstance(segment, int) and not isinstance(segment, bool):
            text += f"[{segment}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(segment)):
            text += f".{segment}" if text else str(segment)
        else:
            text += f"[{json.dumps(str(segment), ensure_ascii=False)}]"
    return text


def format_config_error(error: ConfigError) -> str:
    """The text the CLI prints on standard error for a config error: one ``file:line: path: message``
    line per problem and, when there are several, a count at the end.

    Works for any :class:`ConfigError` (e.g. one raised by :meth:`Secret.reveal`), not only
    :class:`InvalidConfig`.
    """
    if not isinstance(error, InvalidConfig) or len(error.problems) < 2:
        return error.message
    files = sorted({problem.file for problem in error.problems})
    return f"{error.message}\n{len(error.problems)} problems in {', '.join(files)}"
