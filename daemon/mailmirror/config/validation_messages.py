"""Pydantic's validation errors turned into the sentences a person reads: ``must be one of implicit,
starttls, none (got 'ssl')``, ``unknown key (did you mean 'username'?)``, each at the line of the file (or
of a pair set's list) where the value was written. Nothing inside a secret reference is ever quoted.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from mailmirror.config.pairsets import PairSetOrigins, RowOrigin
from mailmirror.config.problems import ConfigProblem, Location, dotted, file_and_line, list_problem
from mailmirror.config.secrets import Secret
from mailmirror.config.section import SUBPATH, unwrap
from mailmirror.config.yaml_source import YamlDocument

_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "missing": "required key is missing",
}
_BOUND_WORDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}
_NOT_DATA = "[key]"


def problems_from(
    error: ValidationError,
    document: YamlDocument,
    shown: str,
    root: type[BaseModel],
    origins: PairSetOrigins | None = None,
) -> list[ConfigProblem]:
    """Every error of validating the file's data against ``root`` (the config model), as a problem at its line:
    in the config file, or at the row of a pair set's list when a column gave the value."""
    problems: list[ConfigProblem] = []
    listed: list[ConfigProblem] = [list_problem(problem) for problem in origins.problems] if origins else []
    for detail in error.errors(include_url=False):
        loc = _data_location(detail)
        if listed and loc in (("accounts",), ("pairs",)):
            continue  # empty because a pair set's list could not be read: its problem says why
        row = origins.row_of(loc) if origins is not None else None
        if row is not None:
            problem = _row_problem(row[0], row[1], _sentence(detail, loc, root), document, shown)
            if problem.file != shown:
                if problem not in listed:
                    listed.append(problem)
                continue
        else:
            problem = ConfigProblem(shown, document.line_for(loc), dotted(loc), _sentence(detail, loc, root))
        if problem not in problems:
            problems.append(problem)
    # stable: same line, order found; the config file first, then its lists
    return sorted(problems, key=lambda problem: problem.line or 0) + sorted(listed, key=file_and_line)


def top_level_problem(data: Any, shown: str, root: type[BaseModel]) -> ConfigProblem | None:
    """The file holds something other than a mapping of ``root``'s sections (a list, a string, nothing)."""
    if isinstance(data, dict):
        return None
    sections = ", ".join(root.model_fields)
    return ConfigProblem(
        shown, 1, "", f"the top level must be a mapping of the sections {sections} (got {_kind_of(data)})"
    )


def _row_problem(origin: RowOrigin, path: Location, message: str, document: YamlDocument, shown: str) -> ConfigProblem:
    """An error in a pair made from a row: at the row and its column when a column gave the value, else in
    the pair set's template (the same for every row)."""
    columns = origin.columns_at(path)
    field = ".".join(str(segment) for segment in path)
    if columns:
        return ConfigProblem(origin.file, origin.line, f"column {', '.join(columns)}", f"{message} (in {field})")
    loc = ("pair_sets", origin.set_name, *path)
    return ConfigProblem(shown, document.line_for(loc), dotted(loc), message)


def _data_location(detail: Mapping[str, Any]) -> Location:
    loc = tuple(segment for segment in detail["loc"] if segment != _NOT_DATA)
    subpath = (detail.get("ctx") or {}).get(SUBPATH)
    return (*loc, *subpath) if subpath else loc


def _sentence(detail: Mapping[str, Any], loc: Location, root: type[BaseModel]) -> str:
    kind, ctx = detail["type"], detail.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key_sentence(loc, root)
    if kind == "literal_error":
        choices = ", ".join(re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", ""))))
        return f"must be one of {choices}{_got(detail, loc, root)}"
    if kind in _BOUND_WORDS:
        bound_key, words = _BOUND_WORDS[kind]
        return f"must be {words} {ctx.get(bound_key)}{_got(detail, loc, root)}"
    if kind in ("too_short", "string_too_short"):
        return _too_short_sentence(detail)
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} {'characters' if 'string' in kind else 'items'}"
    if kind in _TYPE_MESSAGES:
        suffix = "" if kind == "missing" else _got(detail, loc, root)
        if kind in ("string_type", "int_type") and _last_is_key(detail):
            return f"invalid name: {_TYPE_MESSAGES[kind]}{suffix}"
        return _TYPE_MESSAGES[kind] + suffix
    return _plain_message(str(detail["msg"]))


def _plain_message(message: str) -> str:
    for boilerplate in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(boilerplate)
    return message.replace("Input should be", "must be")


def _too_short_sentence(detail: Mapping[str, Any]) -> str:
    minimum = (detail.get("ctx") or {}).get("min_length", 1)
    if detail["type"] == "string_too_short" and minimum == 1:
        return "must not be empty"
    if isinstance(detail["input"], dict):
        return "must not be empty" if minimum == 1 else f"must have at least {minimum} entries"
    return "must not be empty" if minimum == 1 else f"must have at least {minimum} items"


def _last_is_key(detail: Mapping[str, Any]) -> bool:
    return bool(detail["loc"]) and detail["loc"][-1] == _NOT_DATA


def _unknown_key_sentence(loc: Location, root: type[BaseModel]) -> str:
    model = _model_at(loc[:-1], root)
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def _got(detail: Mapping[str, Any], loc: Location, root: type[BaseModel]) -> str:
    """`` (got 'ssl')`` for a short scalar input, never for anything inside a secret reference."""
    value = detail["input"]
    if isinstance(value, dict | list | tuple) or _inside_secret(loc, root):
        return ""
    return f" (got {_yaml_scalar(value)})"


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}" if value is not None else "nothing"


def _types_along(loc: Location, root: type[BaseModel]) -> Iterator[Any]:
    """The declared type at each step of ``loc``, starting from ``root``."""
    current: Any = root
    yield current
    for segment in loc:
        current = _child_type(current, segment)
        if current is None:
            return
        yield current


def _model_at(loc: Location, root: type[BaseModel]) -> type[BaseModel] | None:
    declared_types = list(_types_along(loc, root))
    if len(declared_types) != len(loc) + 1:
        return None
    model = unwrap(declared_types[-1])
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inside_secret(loc: Location, root: type[BaseModel]) -> bool:
    return any(unwrap(declared) is Secret for declared in _types_along(loc, root))


def _child_type(declared: Any, segment: Any) -> Any:
    declared = unwrap(declared)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        model_field = declared.model_fields.get(segment) if isinstance(segment, str) else None
        return model_field.annotation if model_field is not None else None
    origin = get_origin(declared)
    if origin is dict:
        return get_args(declared)[1]
    if origin in (list, tuple):
        return get_args(declared)[0]
    return None
