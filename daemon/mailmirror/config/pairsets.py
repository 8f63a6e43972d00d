"""Pair sets: many pairs from one list of accounts (a CSV file, or an imapsync ``sync_loop`` file) and a template.

A pair set expands, when the config is loaded, into ordinary accounts and pairs: one pair per row, called
``<set>-<key>`` (the key: the row's first column; ``user1`` in a sync_loop file), with the accounts
``<pair>.source`` and ``<pair>.destination``. The engine, the daemon, shards and metrics only ever see
ordinary pairs.

Templates: every string of ``source``, ``destination`` and the pair options may name a column as
``{column}`` (``{{`` and ``}}`` for literal braces). A secret is a template like any other
(``{file: "pw/{user}"}``, ``{command: [pass, "mail/{user}"]}``), or ``{column: NAME}``: the password is in
the file itself, which is then accepted only when it is private to the user running mailmirror (owned by
it, no access for group or others), as ssh does with keys. Such a value is never shown anywhere.

A few columns set options per row (an empty cell: the template's value): ``ROW_OPTION_COLUMNS``. The lists
are read by :mod:`mailmirror.config.pair_set_lists`; this module turns their rows into accounts and pairs.

Problems are reported as ``staff.csv:12: column dest_user: ...`` (file as written in the config, line).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from mailmirror.config.pair_set_lists import (
    ROW_OPTION_COLUMNS,
    AccountList,
    CsvProblem,
    ListRow,
    join_names,
    private_file_problem,
    read_list,
)
from mailmirror.config.secrets import Secret

PAIR_SET_ORIGINS = "pair_set_origins"
"""Key of the validation context holding a :class:`PairSetOrigins` the expansion fills."""

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_NAME_CHARACTER = re.compile(r"[^A-Za-z0-9._@-]")

PAIR_OPTIONS = ("schedule", "folders", "messages", "flags", "deletions", "transfer")
ROLES = ("source", "destination")
SECRET_FIELDS = ("password", "oauth2_token")


@dataclass
class RowOrigin:
    """Where a generated pair comes from, and which columns fed which of its fields."""

    set_name: str
    file: str
    line: int
    #: field path relative to the pair (("source", "username"), ("folders", "under")) -> the columns used
    columns: dict[tuple[str, ...], list[str]] = field(default_factory=dict)

    def columns_at(self, path: tuple[Any, ...]) -> list[str]:
        """The columns behind ``path`` or anything below it (all of a role's columns for ("destination",))."""
        found: list[str] = []
        for recorded, names in self.columns.items():
            if recorded[: len(path)] == tuple(path) or tuple(path[: len(recorded)]) == recorded:
                found += [name for name in names if name not in found]
        return found


@dataclass
class PairSetOrigins:
    """What the expansion tells the loader: problems in the lists, and every generated name's row."""

    problems: list[CsvProblem] = field(default_factory=list)
    rows: dict[str, RowOrigin] = field(default_factory=dict)  # pair name -> its row
    accounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # account name -> (pair name, role)
    counts: dict[str, int] = field(default_factory=dict)  # set name -> pairs

    def row_of(self, loc: tuple[Any, ...]) -> tuple[RowOrigin, tuple[Any, ...]] | None:
        """The row behind a validation error at ``loc`` (in the expanded data), with the path in the pair."""
        if len(loc) < 2 or not isinstance(loc[1], str):
            return None
        if loc[0] == "pairs" and loc[1] in self.rows:
            return self.rows[loc[1]], tuple(loc[2:])
        if loc[0] == "accounts" and loc[1] in self.accounts:
            pair, role = self.accounts[loc[1]]
            return self.rows[pair], (role, *loc[2:])
        return None


class RowSecret(Secret):
    """A password read from a pair set's (private) list: revealed like any secret, shown only as its place."""

    _value: str = PrivateAttr(default="")
    _where: str = PrivateAttr(default="a column of a pair set's list")

    def reveal(self) -> str:
        if not self._value:
            raise self._error("is empty")
        return self._value

    def describe(self) -> str:
        return self._where

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__


def row_secret(value: str, where: str) -> RowSecret:
    secret = RowSecret.model_construct(env="column")
    secret._value = value
    secret._where = where
    return secret


# -- templates ----------------------------------------------------------------------------------------


class _Unknown(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _fill(text: str, values: Mapping[str, str], used: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        whole, name = match.group(0), match.group(1)
        if whole in ("{{", "}}"):
            return whole[0]
        if name is None or name not in values:
            raise _Unknown(whole)
        if name not in used:
            used.append(name)
        return values[name]

    return _PLACEHOLDER.sub(replace, text)


def _fill_tree(
    value: Any, values: Mapping[str, str], path: tuple[str, ...], used: dict[tuple[str, ...], list[str]]
) -> Any:
    if isinstance(value, str):
        names: list[str] = []
        filled = _fill(value, values, names)
        if names:
            used[path] = names
        return filled
    if isinstance(value, dict):
        return {key: _fill_tree(item, values, (*path, str(key)), used) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_tree(item, values, path, used) for item in value]
    return value


def _placeholders(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every ``{name}`` in the strings of a template, with its path."""
    if isinstance(value, str):
        for match in _PLACEHOLDER.finditer(value):
            if match.group(1) is not None:
                yield path, match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _placeholders(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _placeholders(item, (*path, index))


def _column_secret(value: Any) -> str | None:
    """``{column: NAME}`` → NAME: a secret read from the list itself."""
    if isinstance(value, dict) and set(value) == {"column"} and isinstance(value["column"], str):
        return value["column"]
    return None


# -- expansion ----------------------------------------------------------------------------------------


@dataclass
class _Template:
    set_name: str
    roles: dict[str, dict[str, Any]]
    options: dict[str, Any]
    secret_columns: dict[tuple[str, str], str]  # (role, field) -> column


def expand_pair_sets(data: Any, config_dir: Path | None, origins: PairSetOrigins) -> tuple[Any, list[TemplateIssue]]:
    """``data`` with every pair set's rows added as accounts and pairs (the sets themselves stay, for their
    own validation). CSV-level problems go to ``origins.problems``; problems in a template (an unknown
    column) are returned with their YAML location, for the loader to report like any other."""
    if not isinstance(data, dict) or not isinstance(data.get("pair_sets"), dict) or not data["pair_sets"]:
        return data, []
    data = dict(data)
    accounts = dict(data["accounts"]) if isinstance(data.get("accounts"), dict) else {}
    pairs = dict(data["pairs"]) if isinstance(data.get("pairs"), dict) else {}
    issues: list[TemplateIssue] = []
    for set_name, spec in data["pair_sets"].items():
        if isinstance(spec, dict) and isinstance(spec.get("csv"), str | Path) and isinstance(set_name, str):
            _expand_one(str(set_name), spec, config_dir, accounts, pairs, origins, issues)
    if accounts:
        data["accounts"] = accounts
    if pairs:
        data["pairs"] = pairs
    return data, issues


@dataclass(frozen=True)
class TemplateIssue:
    loc: tuple[Any, ...]
    message: str


def _expand_one(
    set_name: str,
    spec: dict[str, Any],
    config_dir: Path | None,
    accounts: dict[str, Any],
    pairs: dict[str, Any],
    origins: PairSetOrigins,
    issues: list[TemplateIssue],
) -> None:
    written = str(spec["csv"])
    path = Path(written)
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    kind = spec.get("format", "csv")
    if kind not in ("csv", "sync_loop"):
        return  # the model reports it
    table = read_list(path, written, str(kind), origins.problems)
    if table is None:
        return
    template = _template(set_name, spec, kind, table, issues)
    if template is None:
        return
    if not _private_enough(path, written, table, template, origins):
        return
    origins.counts[set_name] = 0
    if not table.rows:
        origins.problems.append(CsvProblem(written, None, None, "no rows: one row per pair after the header"))
        return
    seen: dict[str, int] = {}
    for row in table.rows:
        _expand_row(template, table, row, seen, accounts, pairs, origins)


def _template(
    set_name: str, spec: dict[str, Any], kind: str, table: AccountList, issues: list[TemplateIssue]
) -> _Template | None:
    roles: dict[str, dict[str, Any]] = {}
    secret_columns: dict[tuple[str, str], str] = {}
    good = True
    for role, number in zip(ROLES, ("1", "2"), strict=True):
        given = spec.get(role)
        if given is None and kind == "sync_loop":
            given = {}
        if not isinstance(given, dict):
            return None  # the model reports it
        account = dict(given)
        if kind == "sync_loop":
            account.setdefault("host", "{host" + number + "}")
            account.setdefault("username", "{user" + number + "}")
            if "authuser" not in account and "oauth2" not in account and "oauth2_token" not in account:
                account.setdefault("password", {"column": "password" + number})
        for secret_field in SECRET_FIELDS:
            column = _column_secret(account.get(secret_field))
            if column is None:
                continue
            if column not in table.columns:
                loc = ("pair_sets", set_name, role, secret_field, "column")
                issues.append(
                    TemplateIssue(loc, f"{column!r} is not a column of {table.shown} ({join_names(table.columns)})")
                )
                good = False
            secret_columns[(role, secret_field)] = column
            account[secret_field] = None  # filled per row
        roles[role] = account
    options = {key: spec[key] for key in PAIR_OPTIONS if key in spec}
    for root, value in (*((role, roles[role]) for role in ROLES), *options.items()):
        for loc, name in _placeholders(value, ("pair_sets", set_name, root)):
            if name not in table.columns:
                message = f"{{{name}}} is not a column of {table.shown} (columns: {join_names(table.columns)})"
                issues.append(TemplateIssue(loc, message))
                good = False
    return _Template(set_name, roles, options, secret_columns) if good else None


def _private_enough(path: Path, shown: str, table: AccountList, template: _Template, origins: PairSetOrigins) -> bool:
    """A list that holds passwords must be private to this user (or it is refused, like an ssh key)."""
    password_columns = sorted(set(template.secret_columns.values()))
    sync_loop_passwords = any(row.values.get(name) for row in table.rows for name in ("password1", "password2"))
    if table.key_column == "user1" and sync_loop_passwords:  # sync_loop: passwords unless left empty
        password_columns = sorted({*password_columns, "password1", "password2"})
    if not password_columns:
        return True
    problem = private_file_problem(path, f"holds passwords (column {join_names(password_columns)})")
    if problem is None:
        return True
    origins.problems.append(CsvProblem(shown, None, None, problem))
    return False


def _key_of(value: str) -> str:
    return _NAME_CHARACTER.sub("_", value)


SECRET_PLACES = ("file", "command")  # a secret kept in a file, or printed by a command


def _secret_path_problems(template: _Template, values: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """Columns that would take a secret's file or command elsewhere than the template says: a value with a
    '/' (or '..') leaves the template's directory (``pw/{user}`` with ``../../etc/shadow``), one starting with
    '-' is an option to the command. The list may be readable (and writable) by others when it holds no
    passwords itself; a secret read from the wrong file would be sent to the row's server."""
    for role in ROLES:
        for path, name in _placeholders(template.roles[role], (role,)):
            value = values.get(name, "")
            if not any(place in path for place in SECRET_PLACES):
                continue
            if "/" in value or value in (".", ".."):  # a backslash is no separator here (DOMAIN\user)
                yield name, f"{value!r} names a secret's file or command argument: no '/', not '.' or '..'"
            elif value.startswith("-"):
                yield name, f"{value!r} names a secret's file or command argument: it may not start with '-'"


def _expand_row(
    template: _Template,
    table: AccountList,
    row: ListRow,
    seen: dict[str, int],
    accounts: dict[str, Any],
    pairs: dict[str, Any],
    origins: PairSetOrigins,
) -> None:
    """The row's pair and its two accounts added to ``pairs`` and ``accounts``, or its problem reported."""
    problem = _row_problem(template, table, row, seen) or _clash_problem(template, table, row, accounts, pairs)
    if problem is not None:
        origins.problems.append(problem)
        return
    pair_name = _pair_name(template, table, row)
    origin = RowOrigin(template.set_name, table.shown, row.line)
    pair: dict[str, Any] = {}
    for role in ROLES:
        account_name = f"{pair_name}.{role}"
        accounts[account_name] = _row_account(template, table, row, role, origin)
        origins.accounts[account_name] = (pair_name, role)
        pair[role] = account_name
    options = _fill_tree(template.options, row.values, (), origin.columns)
    _apply_option_columns(options, row.values, origin)
    pairs[pair_name] = {**pair, **options}
    origins.rows[pair_name] = origin
    origins.counts[template.set_name] += 1


def _pair_name(template: _Template, table: AccountList, row: ListRow) -> str:
    return f"{template.set_name}-{_key_of(row.values.get(table.key_column, ''))}"


def _row_problem(template: _Template, table: AccountList, row: ListRow, seen: dict[str, int]) -> CsvProblem | None:
    """What makes the row unusable by itself (a control character, no key, imapsync options, a key twice)."""
    shown, key_column = table.shown, table.key_column
    for name, value in row.values.items():
        if any(ord(character) < 32 for character in value) and name not in ("password1", "password2"):
            return CsvProblem(shown, row.line, name, "contains a control character (a line break?)")
    key = row.values.get(key_column, "")
    if not key:
        return CsvProblem(shown, row.line, key_column, "empty: it names the pair")
    if key_column == "user1" and row.values.get("extra"):
        message = (
            "imapsync options per line are not applied in a pair set: give the options in the pair set "
            "(mailmirror import imapsync converts an imapsync command line) or as an option column"
        )
        return CsvProblem(shown, row.line, "extra", message)
    pair_name = _pair_name(template, table, row)
    if pair_name in seen:
        message = f"{key!r} again (line {seen[pair_name]} has it): pair '{pair_name}' would be defined twice"
        return CsvProblem(shown, row.line, key_column, message)
    seen[pair_name] = row.line
    return None


def _clash_problem(
    template: _Template, table: AccountList, row: ListRow, accounts: dict[str, Any], pairs: dict[str, Any]
) -> CsvProblem | None:
    """A pair or account name the config already uses, or a column leading a secret reference astray."""
    shown, key_column, pair_name = table.shown, table.key_column, _pair_name(template, table, row)
    if pair_name in pairs:
        message = f"pair '{pair_name}' is defined in the config's pairs too (or by another pair set)"
        return CsvProblem(shown, row.line, key_column, message)
    taken = [f"{pair_name}.{role}" for role in ROLES if f"{pair_name}.{role}" in accounts]
    if taken:  # replacing it would silently point the config's pairs that use it at this row's mailbox
        message = f"account '{taken[0]}' is defined in the config's accounts too: rename that account"
        return CsvProblem(shown, row.line, key_column, message)
    astray = next(_secret_path_problems(template, row.values), None)
    return None if astray is None else CsvProblem(shown, row.line, *astray)


def _row_account(template: _Template, table: AccountList, row: ListRow, role: str, origin: RowOrigin) -> Any:
    """The account of ``role`` for the row: the template filled in, secrets from the list's columns."""
    account = _fill_tree(template.roles[role], row.values, (role,), origin.columns)
    for (secret_role, secret_field), column in template.secret_columns.items():
        if secret_role == role:
            where = f"column {column} of {table.shown} line {row.line}"
            account[secret_field] = row_secret(row.values.get(column, ""), where)
            origin.columns[(role, secret_field)] = [column]
    return account


def _apply_option_columns(options: dict[str, Any], values: Mapping[str, str], origin: RowOrigin) -> None:
    """The row's option columns (ROW_OPTION_COLUMNS) over the template's options; an empty cell keeps them."""
    for column, (option_path, is_list) in ROW_OPTION_COLUMNS.items():
        cell = values.get(column, "")
        if not cell:
            continue
        section = options.get(option_path[0])
        if not isinstance(section, dict):  # a template that is not a mapping is reported by the model
            section = options[option_path[0]] = {}
        section[option_path[1]] = [item.strip() for item in cell.split("|") if item.strip()] if is_list else cell
        if option_path[0] == "schedule" and option_path[1] in ("every", "cron"):
            section.pop("cron" if option_path[1] == "every" else "every", None)
        origin.columns[option_path] = [column]
