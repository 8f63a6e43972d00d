"""`mailmirror import imapsync`: an imapsync command line (or a sync_loop file) → mailmirror config YAML.

Options that change what a pass copies but have no mailmirror equivalent are *unsupported*: listed on
standard error and as a comment at the top of the YAML. Passwords are never written into the YAML:
``--password1 X`` becomes ``password: {env: NAME}`` and a note says what to export; ``--passfile1 F``
becomes ``{file: F}``; a sync_loop file's passwords stay in that file, read by a ``{command: …}``
reference at login time.

This module reads the command line (imapsync's Getopt::Long syntax) or the sync_loop file and completes the
accounts. Every option the importer knows is in :data:`~mailmirror.config.imapsync_options.OPTIONS`, with
what it becomes in the config or why it cannot be expressed (docs/imapsync.md is the same table for people;
a test keeps them in step); the options' handlers are :mod:`mailmirror.config.imapsync_handlers`, the
result and its YAML :mod:`mailmirror.config.imapsync_conversion`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailmirror.config.imapsync_conversion import AUTH_MECHANISMS, ROLE, SIDES, Conversion, Invocation
from mailmirror.config.imapsync_options import NEGATABLE, OPTIONS
from mailmirror.errors import UsageError

PASSWORD_VARIABLES = {1: "MAILMIRROR_SOURCE_PASSWORD", 2: "MAILMIRROR_DESTINATION_PASSWORD"}
TOKEN_VARIABLES = {1: "MAILMIRROR_SOURCE_OAUTH2_TOKEN", 2: "MAILMIRROR_DESTINATION_OAUTH2_TOKEN"}


def _split_arguments(arguments: Sequence[str]) -> list[tuple[str, str | None, str]]:
    """imapsync's Getopt::Long syntax → [(option name, inline value, as written)]: --name, -name, --name=value."""
    items: list[tuple[str, str | None, str]] = []
    for argument in arguments:
        if argument.startswith("-") and len(argument) > 1 and argument != "--":
            name, equals, value = argument.lstrip("-").partition("=")
            items.append((name, value if equals else None, argument))
        else:
            items.append(("", None, argument))
    return items


def _read_options(invocation: Invocation, arguments: Sequence[str]) -> None:
    items = _split_arguments(arguments)
    index = 0
    while index < len(items):
        name, inline, written = items[index]
        index += 1
        if not name:
            if written != "--":
                invocation.conversion.add_unsupported("a stray argument (not an option) was ignored")
                invocation.selection_widened = True  # perhaps the value of a narrowing option
            continue
        negated = name.startswith("no") and name[2:] in NEGATABLE
        key = name[2:] if negated else name
        if key not in OPTIONS:
            takes_value = inline is None and index < len(items) and not items[index][0] and items[index][2] != "--"
            index += takes_value
            invocation.conversion.add_unsupported(f"--{name}: unknown to the importer (its value, if any, not shown)")
            invocation.selection_widened = True  # it may narrow the selection: nobody can tell
            continue
        option, side = OPTIONS[key]
        value = "no" if negated else ""
        if option.takes_value:
            if inline is not None:
                value = inline
            elif index < len(items) and items[index][2] != "--":
                value = items[index][2]
                index += 1
            else:
                raise UsageError(f"imapsync option --{name} needs a value")
        option.handler(invocation, side, value)


def _finish_account(invocation: Invocation, side: int) -> dict[str, Any]:
    state = invocation.sides[side]
    values = dict(state.values)
    role = ROLE[side]
    if "host" not in values:
        raise UsageError(f"imapsync options: --host{side} (the {role} server) is missing")
    if "username" not in values:
        raise UsageError(f"imapsync options: --user{side} (the {role} user) is missing")
    port = values.get("port")
    if state.ssl or (state.ssl is None and port == 993 and not state.tls):
        values["tls"] = "implicit"
    elif state.tls or (state.tls is None and state.ssl is None):
        values["tls"] = "starttls"
        if state.tls is None:
            invocation.note(
                f"{role}: without --ssl{side} imapsync uses STARTTLS when the server offers it; mailmirror requires "
                f"it (tls: starttls). A server without TLS needs tls: none (imapsync --notls{side})"
            )
        values.setdefault("port", 143)
    else:
        values["tls"] = "none"
        values.setdefault("port", 143)
    if state.authmech is not None:
        values["auth"] = AUTH_MECHANISMS[state.authmech]
    if values.get("auth") in ("xoauth2", "oauthbearer"):
        if "oauth2_token" not in values:
            raise UsageError(f"imapsync options: --authmech{side} {state.authmech} needs --oauthaccesstoken{side}")
        values.pop("password", None)
    elif "password" not in values:
        raise UsageError(f"imapsync options: --password{side} or --passfile{side} (the {role} password) is missing")
    else:
        values.pop("oauth2_token", None)
    if values.get("tls_verify") is not False and "tls_ca" not in values:
        invocation.note(
            f"{role}: mailmirror verifies the server certificate (imapsync does not by default); for a server "
            "with a self-signed certificate set tls_ca (or tls_verify: false)"
        )
    order = ["provider", "host", "port", "tls", "tls_verify", "tls_ca", "username", "authuser", "auth"]
    return {key: values[key] for key in [*order, *values] if key in values}


def _pair_name(user: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", user).strip("-._") or "imapsync"
    return name


def convert_invocation(
    conversion: Conversion,
    arguments: Sequence[str],
    secret_source: Callable[[int, str], dict[str, Any]],
    *,
    pair_name: str | None = None,
    account_names: tuple[str, str] = ("source", "destination"),
) -> str:
    """Add one imapsync run (its options) to ``conversion``: two accounts and a pair. Returns the pair name."""
    invocation = Invocation(conversion, secret_source)
    _read_options(invocation, arguments)
    if invocation.folder_deletion_narrowed and invocation.pair.get("deletions", {}).pop("delete_missing_folders", None):
        conversion.add_unsupported(
            "--delete2folders: not converted either, since mailmirror would delete every mapped folder missing on "
            "the source, not only those imapsync would; set deletions.delete_missing_folders by hand if that is wanted"
        )
    if invocation.selection_widened:
        _drop_deletions(invocation)
    source, destination = (_finish_account(invocation, side) for side in SIDES)
    name = pair_name or _pair_name(source["username"])
    pair: dict[str, Any] = {"source": account_names[0], "destination": account_names[1]}
    invocation.section("folders")["automap"] = invocation.automap
    for section in ("folders", "messages", "flags", "deletions"):
        if invocation.pair.get(section):
            pair[section] = invocation.pair[section]
    if pair.get("deletions", {}).get("destination") == "mirror":
        conversion.add_note(
            "--delete2: mailmirror refuses to delete more than deletions.max_share (20%) of a folder in one pass; "
            "`mailmirror sync --force-deletions` or deletions.force: true lifts it"
        )
    conversion.accounts[account_names[0]] = source
    conversion.accounts[account_names[1]] = destination
    conversion.pairs[name] = pair
    return name


_DELETIONS = (("source", "--delete1"), ("destination", "--delete2"), ("delete_missing_folders", "--delete2folders"))


def _drop_deletions(invocation: Invocation) -> None:
    """Deletions are not converted when an option that narrowed the selection was dropped: the converted
    pair takes more folders or messages than imapsync, and would move or mirror those too."""
    deletions = invocation.pair.get("deletions", {})
    for key, option in _DELETIONS:
        if deletions.pop(key, None):
            invocation.conversion.add_unsupported(
                f"{option}: not converted, since an option that narrows which folders or messages are taken was "
                "not converted (above): the pair would delete from more than imapsync does; set deletions by hand "
                "once the selection is right"
            )


def convert_command_line(arguments: Sequence[str], *, state_path: str | None = None) -> Conversion:
    """One imapsync command line → a config with accounts ``source`` and ``destination`` and one pair."""
    conversion = Conversion(state_path=state_path)

    def secret(side: int, kind: str) -> dict[str, Any]:
        variable = (PASSWORD_VARIABLES if kind == "password" else TOKEN_VARIABLES)[side]
        option = f"--password{side}" if kind == "password" else f"--oauthaccesstoken{side}"
        conversion.add_note(f"export {variable}=… (the value of imapsync's {option}) before running mailmirror")
        return {"env": variable}

    convert_invocation(conversion, arguments, secret)
    return conversion


def convert_sync_loop(path: Path, common: Sequence[str] = (), *, state_path: str | None = None) -> Conversion:
    """A sync_loop file (``host1;user1;password1;host2;user2;password2;extra options``, one mailbox per line;
    blank lines and ``#`` comments skipped) → one pair per line. ``common`` options apply to every line
    (before the line's own extra options). Passwords stay in the file: each becomes a ``{command: [awk, …]}``
    reference printing that line's field at login time."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"{path}: cannot read the sync_loop file ({error.strerror})") from None
    conversion = Conversion(state_path=state_path)
    absolute = str(path.absolute())
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(";")
        if len(fields) < 6:
            raise UsageError(
                f"{path}:{number}: a sync_loop line needs host1;user1;password1;host2;user2;password2[;options] "
                f"({len(fields)} fields)"
            )
        host1, user1, password1, host2, user2, password2 = (value.strip() for value in fields[:6])
        try:
            extra = shlex.split(";".join(fields[6:]))
        except ValueError as error:
            raise UsageError(f"{path}:{number}: the extra options cannot be read ({error})") from None
        arguments = [*common, "--host1", host1, "--user1", user1, "--host2", host2, "--user2", user2]
        for side, password in ((1, password1), (2, password2)):
            if password:
                arguments += [f"--password{side}", "x"]  # a placeholder: the reference reads the file

        def secret(side: int, kind: str, number: int = number) -> dict[str, Any]:
            if kind != "password":
                raise UsageError(f"{path}:{number}: --oauthaccesstoken{side} must name a file in a sync_loop file")
            column = 3 if side == 1 else 6
            return {"command": ["awk", "-F", ";", f"NR == {number} {{ print ${column} }}", absolute]}

        name = _unique(conversion, _pair_name(user1))
        convert_invocation(
            conversion,
            [*arguments, *extra],
            secret,
            pair_name=name,
            account_names=(f"{name}-source", f"{name}-destination"),
        )
    if not conversion.pairs:
        raise UsageError(f"{path}: no mailbox lines (host1;user1;password1;host2;user2;password2)")
    conversion.add_note(
        f"passwords stay in {absolute} (read at login by awk, field 3 and 6 of the pair's line): keep the file "
        "readable by the service user only, and do not reorder its lines"
    )
    return conversion


def _unique(conversion: Conversion, name: str) -> str:
    candidate, counter = name, 2
    while candidate in conversion.pairs:
        candidate, counter = f"{name}-{counter}", counter + 1
    return candidate
