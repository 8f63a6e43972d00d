"""Folder patterns of the config's ``include`` and ``exclude`` (and of ``duplicate_priority``), matched
against neutral folder names ("Archive/2024"; see `mapping.py`).

A pattern is either a glob matched against the whole name, aware of levels (``*``, ``?`` and ``[...]``
within one level, ``**`` across levels, "Archive/**" being Archive and every folder below it), or a regular
expression written ``re:...``, searched in the name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

NEUTRAL_SEPARATOR = "/"  # between the levels of a neutral name (mapping.py), whatever the servers use
REGEX_PREFIX = "re:"


def pattern_matches(pattern: str, neutral_name: str) -> bool:
    """Globs match the whole neutral name (``*``, ``?`` and ``[...]`` within one level, ``**`` across
    levels, a trailing ``/**`` also matching the folder itself); ``re:`` patterns are regular expressions
    searched in it."""
    if pattern.startswith(REGEX_PREFIX):
        return compiled(pattern[len(REGEX_PREFIX) :]).search(neutral_name) is not None
    return _glob(pattern).fullmatch(neutral_name) is not None


def is_selected(neutral_name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(pattern_matches(p, neutral_name) for p in include):
        return False
    return not any(pattern_matches(p, neutral_name) for p in exclude)


@functools.lru_cache(maxsize=512)
def compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


@functools.lru_cache(maxsize=512)
def _glob(pattern: str) -> re.Pattern[str]:
    """The glob as a regex for fullmatch. With brackets, the pattern read with "[" and "]" as literal
    characters matches too: Gmail's "[Gmail]/All Mail" and "[Gmail]/**" work as written."""
    regex = _glob_regex(pattern, classes=True)
    if "[" in pattern:
        regex = f"(?:{regex})|(?:{_glob_regex(pattern, classes=False)})"
    return re.compile(regex, re.DOTALL)


def _glob_regex(pattern: str, *, classes: bool) -> str:
    levels = pattern.split(NEUTRAL_SEPARATOR)
    collapsed: list[str] = []
    for level in levels:  # "a/**/**/b" is "a/**/b"
        if not (level == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(level)
    out: list[str] = []
    separator_due = False  # whether the next level must be preceded by "/"
    last = len(collapsed) - 1
    for index, level in enumerate(collapsed):
        if level == "**":
            if index == last:
                out.append("(?:/.*)?" if separator_due else ".*")  # the folder itself and all below
            else:
                out.append("/(?:.*/)?" if separator_due else "(?:.*/)?")
                separator_due = False
            continue
        if separator_due:
            out.append("/")
        out.append(_glob_level(level, classes=classes))
        separator_due = True
    return "".join(out)


def _glob_level(level: str, *, classes: bool) -> str:
    out: list[str] = []
    i, n = 0, len(level)
    while i < n:
        char = level[i]
        i += 1
        if char == "*":
            if i < n and level[i] == "*":
                while i < n and level[i] == "*":
                    i += 1
                out.append(".*")
            else:
                out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and classes:
            end = i
            if end < n and level[end] == "!":
                end += 1
            if end < n and level[end] == "]":
                end += 1
            while end < n and level[end] != "]":
                end += 1
            if end >= n:
                out.append(re.escape(char))  # no closing bracket: a literal "["
                continue
            out.append(_char_class(level[i:end]))
            i = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out)


def _char_class(content: str) -> str:
    negated = content.startswith("!")
    if negated:
        content = content[1:]
    items: list[str] = []
    i = 0
    while i < len(content):
        if i + 2 < len(content) and content[i + 1] == "-":
            low, high = content[i], content[i + 2]
            if low <= high:  # a reversed range matches nothing, as in fnmatch
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            items.append(re.escape(content[i]))
            i += 1
    if negated:
        return f"[^/{''.join(items)}]"
    return f"[{''.join(items)}]" if items else "(?!)"
