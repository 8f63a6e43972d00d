"""The config file read as YAML, keeping the line of every key: what makes ``config.yaml:12:`` possible.

PyYAML's safe loader builds the data; a walk over its node tree records the line of each mapping key and list
item by its path (merge keys ``<<: *base`` included) and finds duplicate keys, which PyYAML would accept
silently. A file that is missing, not a regular file, not UTF-8 or not valid YAML (a tab in the
indentation, say) is refused with one clear :class:`~mailmirror.config.problems.ConfigProblem`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mailmirror.config.problems import ConfigProblem, InvalidConfig, Location, dotted

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_RECORDED_LINES = 200_000  # bounds the walk of alias-heavy documents; beyond it, errors point at parents
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class YamlDocument:
    """The parsed data, and the 1-based line of every mapping key and sequence item by its path."""

    data: Any
    lines: dict[Location, int]

    def line_for(self, loc: Location) -> int:
        """The line of ``loc``, or of its closest enclosing key that is in the file."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1


class _LineRecorder:
    """Walks the YAML node tree: records lines and collects duplicate keys (which PyYAML accepts silently)."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[Location, int] = {}
        self.duplicates: list[tuple[Location, int, int]] = []  # (path, line, line of the first one)
        self._active: set[int] = set()

    def walk(self, node: Node, path: Location) -> None:
        if id(node) in self._active or len(self.lines) > _MAX_RECORDED_LINES:
            return  # a recursive alias, or an alias bomb
        self._active.add(id(node))
        if isinstance(node, MappingNode):
            self._walk_mapping(node, path)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = _line_of(item)
                self.walk(item, (*path, index))
        self._active.discard(id(node))

    def _walk_mapping(self, node: MappingNode, path: Location) -> None:
        first_lines: dict[Any, int] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.append(value_node)
                continue
            key = self._key(key_node)
            if key in first_lines:
                self.duplicates.append(((*path, key), _line_of(key_node), first_lines[key]))
                continue
            first_lines[key] = _line_of(key_node)
            self.lines[(*path, key)] = first_lines[key]
            self.walk(value_node, (*path, key))
        for source in merged:  # YAML merge keys (<<: *base): explicit keys win
            for mapping in source.value if isinstance(source, SequenceNode) else [source]:
                self._walk_merged(mapping, path, first_lines)

    def _walk_merged(self, mapping: Node, path: Location, first_lines: dict[Any, int]) -> None:
        if not isinstance(mapping, MappingNode):
            return
        for key_node, value_node in mapping.value:
            key = self._key(key_node)
            if key_node.tag != _MERGE_TAG and key not in first_lines:
                first_lines[key] = _line_of(key_node)
                self.lines[(*path, key)] = first_lines[key]
                self.walk(value_node, (*path, key))

    def _key(self, key_node: Node) -> Any:
        if isinstance(key_node, ScalarNode):
            try:
                return self.loader.construct_object(key_node)
            except (yaml.YAMLError, ValueError, TypeError):
                return key_node.value
        return f"<complex key at line {_line_of(key_node)}>"


def _line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    kinds = (
        (stat.S_ISDIR, "is a directory, not a config file"),
        (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file: write the config to a file"),
        (stat.S_ISSOCK, "is a socket, not a regular file"),
        (stat.S_ISCHR, "is a device, not a regular file"),
        (stat.S_ISBLK, "is a device, not a regular file"),
    )
    return next((words for test, words in kinds if test(mode)), None if stat.S_ISREG(mode) else "is not a regular file")


def read_yaml_document(shown: str) -> YamlDocument:
    """The YAML file at ``shown`` (the path as the user gave it, used in messages), parsed with the line of
    every key; a file that cannot be read or parsed raises :class:`InvalidConfig`."""
    return _parse_yaml(_read_text(shown), shown)


def _read_text(shown: str) -> str:
    try:
        kind = _file_kind(os.stat(shown).st_mode)  # a FIFO would block the read forever
        if kind is not None:
            raise InvalidConfig([ConfigProblem(shown, None, "", kind)])
        if not os.access(shown, os.R_OK):
            raise PermissionError
        raw = Path(shown).read_bytes()
    except FileNotFoundError:
        message = "no such file"
        raise InvalidConfig([ConfigProblem(shown, None, "", message)]) from None
    except PermissionError:
        message = "permission denied: the user running mailmirror cannot read it (check its owner and mode)"
        raise InvalidConfig([ConfigProblem(shown, None, "", message)]) from None
    except IsADirectoryError:
        raise InvalidConfig([ConfigProblem(shown, None, "", "is a directory, not a config file")]) from None
    except OSError as error:
        raise InvalidConfig([ConfigProblem(shown, None, "", f"cannot read: {error.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        message = f"not UTF-8 text (invalid byte at offset {error.start})"
        raise InvalidConfig([ConfigProblem(shown, None, "", message)]) from None


def _parse_yaml(text: str, shown: str) -> YamlDocument:
    loader = _Loader(text)
    try:
        return _compose_and_construct(loader, shown)
    except yaml.MarkedYAMLError as error:
        raise InvalidConfig([_tab_problem(error, text, shown) or _yaml_syntax_problem(error, shown)]) from None
    except yaml.YAMLError as error:
        raise InvalidConfig([ConfigProblem(shown, None, "", f"YAML error: {error}")]) from None
    except (ValueError, TypeError) as error:  # e.g. an impossible date such as 2024-02-30
        raise InvalidConfig([ConfigProblem(shown, None, "", f"YAML error: {error}")]) from None
    finally:
        loader.dispose()


def _compose_and_construct(loader: yaml.SafeLoader, shown: str) -> YamlDocument:
    node = loader.get_single_node()
    if node is None:
        raise InvalidConfig([ConfigProblem(shown, None, "", "the file is empty (it needs accounts and pairs)")])
    recorder = _LineRecorder(loader)
    recorder.lines[()] = _line_of(node)
    recorder.walk(node, ())
    _raise_on_duplicates(recorder.duplicates, shown)
    return YamlDocument(loader.construct_document(node), recorder.lines)


def _raise_on_duplicates(duplicates: list[tuple[Location, int, int]], shown: str) -> None:
    if duplicates:
        problems = [
            ConfigProblem(shown, line, dotted(path), f"duplicate key (first defined at line {first})")
            for path, line, first in duplicates
        ]
        raise InvalidConfig(problems)


def _tab_problem(error: yaml.MarkedYAMLError, text: str, shown: str) -> ConfigProblem | None:
    """A tab where YAML wants indentation: PyYAML's words do not say so; name the line and column."""
    mark = error.problem_mark
    if mark is None or ("tab" not in str(error.problem) and "cannot start any token" not in str(error.problem)):
        return None
    lines = text.splitlines()
    for number in (int(mark.line), int(mark.line) - 1):
        if 0 <= number < len(lines) and "\t" in lines[number]:
            column = lines[number].index("\t") + 1
            message = f"tab character at line {number + 1}, column {column}: YAML indents with spaces, never tabs"
            return ConfigProblem(shown, number + 1, "", message)
    return None


def _yaml_syntax_problem(error: yaml.MarkedYAMLError, shown: str) -> ConfigProblem:
    mark = error.problem_mark or error.context_mark
    line = int(mark.line) + 1 if mark is not None else None
    message = f"YAML syntax error: {error.problem or error.context or 'invalid document'}"
    if error.problem and error.context:
        context_line = f" at line {int(error.context_mark.line) + 1}" if error.context_mark is not None else ""
        message += f" ({error.context}{context_line})"
    return ConfigProblem(shown, line, "", message)
