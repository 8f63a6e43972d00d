"""`mailmirror import imapsync`: an imapsync command line (or a sync_loop file) → mailmirror config YAML.

Every imapsync option the importer knows is in :data:`OPTIONS`, with what it becomes in the config or why
it cannot be expressed; docs/imapsync.md is the same table for people (a test keeps them in step).
Options that change what a pass copies but have no mailmirror equivalent are *unsupported*: listed on
standard error and as a comment at the top of the YAML. Passwords are never written into the YAML:
``--password1 X`` becomes ``password: {env: NAME}`` and a note says what to export; ``--passfile1 F``
becomes ``{file: F}``; a sync_loop file's passwords stay in that file, read by a ``{command: …}``
reference at login time.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailmirror.errors import UsageError

SIDES = (1, 2)
ROLE = {1: "source", 2: "destination"}
PASSWORD_VARIABLES = {1: "MAILMIRROR_SOURCE_PASSWORD", 2: "MAILMIRROR_DESTINATION_PASSWORD"}
TOKEN_VARIABLES = {1: "MAILMIRROR_SOURCE_OAUTH2_TOKEN", 2: "MAILMIRROR_DESTINATION_OAUTH2_TOKEN"}
AUTH_MECHANISMS = {"LOGIN": "login", "PLAIN": "plain", "XOAUTH2": "xoauth2", "OAUTHBEARER": "oauthbearer"}
_GLOB_CHARACTERS = re.compile(r"[*?\[\]]")


@dataclass
class Conversion:
    """What one imapsync invocation (or sync_loop file) becomes."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_path: str | None = None
    unsupported: list[str] = field(default_factory=list)  # options that change behaviour: cannot be expressed
    notes: list[str] = field(default_factory=list)  # what the admin must do or know (exports, differences)

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {}
        if self.state_path is not None:
            document["state"] = {"path": self.state_path}
        document["accounts"] = self.accounts
        document["pairs"] = self.pairs
        return document

    def yaml_text(self) -> str:
        header = ["mailmirror config converted from imapsync options by `mailmirror import imapsync`."]
        if self.unsupported:
            header += ["", "NOT CONVERTED (mailmirror cannot express these; the passes behave differently):"]
            header += [f"  {line}" for line in self.unsupported]
        if self.notes:
            header += ["", "Notes:"]
            header += [f"  {line}" for line in self.notes]
        comment = "".join(f"# {line}".rstrip() + "\n" for line in header)
        body = yaml.safe_dump(self.document(), sort_keys=False, allow_unicode=True, default_flow_style=None, width=1000)
        return comment + body

    def add_note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add_unsupported(self, text: str) -> None:
        if text not in self.unsupported:
            self.unsupported.append(text)


# -- one invocation ------------------------------------------------------------------------------------


@dataclass
class _Side:
    values: dict[str, Any] = field(default_factory=dict)  # the account's config keys
    ssl: bool | None = None
    tls: bool | None = None
    authmech: str | None = None


@dataclass
class _Invocation:
    """The options of one imapsync run, as they are read."""

    conversion: Conversion
    secret_source: Callable[[int, str], dict[str, Any]]  # (side, "password"/"oauth2_token") → a secret reference
    sides: dict[int, _Side] = field(default_factory=lambda: {side: _Side() for side in SIDES})
    pair: dict[str, dict[str, Any]] = field(default_factory=dict)
    automap: bool = False
    folder_deletion_narrowed: bool = False  # --delete2foldersonly/--delete2foldersbutnot: not expressible
    selection_widened: bool = False  # an option that narrowed which folders/messages imapsync takes was dropped

    def section(self, name: str) -> dict[str, Any]:
        return self.pair.setdefault(name, {})

    def listed(self, section: str, key: str) -> list[Any]:
        values: list[Any] = self.section(section).setdefault(key, [])
        return values

    def unsupported(self, option: str, why: str) -> None:
        self.conversion.add_unsupported(f"--{option}: {why}")

    def note(self, text: str) -> None:
        self.conversion.add_note(text)


Handler = Callable[[_Invocation, int, str], None]  # (invocation, side 1/2 or 0, value or "")


@dataclass(frozen=True)
class Option:
    """An imapsync option: whether it takes a value, and what the importer does with it."""

    takes_value: bool
    handler: Handler
    mapping: str  # for docs/imapsync.md: the mailmirror config it becomes, or "not supported: why"


def _account_key(key: str, convert: Callable[[str], Any] = str) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.sides[side].values[key] = convert(value)

    return handle


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise UsageError(f"imapsync option --port1/--port2: {value!r} is not a TCP port")
    return int(value)


def _password(invocation: _Invocation, side: int, value: str) -> None:
    if value:
        invocation.sides[side].values["password"] = invocation.secret_source(side, "password")


def _passfile(invocation: _Invocation, side: int, value: str) -> None:
    invocation.sides[side].values["password"] = {"file": str(Path(value).expanduser().absolute())}


def _oauth_token(invocation: _Invocation, side: int, value: str) -> None:
    values = invocation.sides[side].values
    path = Path(value).expanduser()
    # imapsync reads the token from the file when the value names one
    values["oauth2_token"] = (
        {"file": str(path.absolute())} if path.is_file() else invocation.secret_source(side, "oauth2_token")
    )
    invocation.sides[side].authmech = invocation.sides[side].authmech or "XOAUTH2"


def _ssl(invocation: _Invocation, side: int, value: str) -> None:
    invocation.sides[side].ssl = value != "no"


def _tls(invocation: _Invocation, side: int, value: str) -> None:
    invocation.sides[side].tls = value != "no"


def _authmech(invocation: _Invocation, side: int, value: str) -> None:
    mechanism = value.upper()
    if mechanism not in AUTH_MECHANISMS:
        invocation.unsupported(
            f"authmech{side} {value}", "mailmirror logs in with LOGIN, PLAIN, XOAUTH2 or OAUTHBEARER"
        )
        return
    invocation.sides[side].authmech = mechanism


def _authuser(invocation: _Invocation, side: int, value: str) -> None:
    invocation.sides[side].values["authuser"] = value
    invocation.sides[side].authmech = invocation.sides[side].authmech or "PLAIN"


def _timeout(invocation: _Invocation, side: int, value: str) -> None:
    seconds = _number(f"timeout{side or ''}", value)
    for each in (side,) if side else SIDES:
        invocation.sides[each].values["timeout"] = f"{seconds:g}s"


def _number(option: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"imapsync option --{option}: {value!r} is not a number") from None
    if number < 0:
        raise UsageError(f"imapsync option --{option}: {value!r} must not be negative")
    return number


def _sslargs(invocation: _Invocation, side: int, value: str) -> None:
    name, _, setting = value.partition("=")
    values = invocation.sides[side].values
    if name == "SSL_verify_mode" and setting.strip() in ("0", "SSL_VERIFY_NONE"):
        values["tls_verify"] = False
    elif name == "SSL_verify_mode":
        values["tls_verify"] = True
    elif name == "SSL_ca_file":
        values["tls_ca"] = str(Path(setting).expanduser().absolute())
    else:
        invocation.unsupported(f"sslargs{side} {name}", "only SSL_verify_mode and SSL_ca_file have equivalents")


def _provider(name: str, host: str | None) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        values = invocation.sides[side].values
        values["provider"] = name
        if host is not None:
            values.setdefault("host", host)
        invocation.sides[side].ssl = True

    return handle


def _exchange(invocation: _Invocation, side: int, value: str) -> None:
    invocation.note(
        f"--exchange{side}: mailmirror has no preset for on-premises Exchange (provider: office365 is Exchange "
        "Online); the account is an ordinary IMAP server: set max_messages_per_second or messages.max_size if it "
        "throttles or refuses large messages"
    )


def _rate(key: str, convert: Callable[[float], Any]) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        number = _number(key, value)
        if number <= 0:
            return  # imapsync: 0 means no limit
        if key == "max_bytes_per_second" and number < 1024:
            invocation.unsupported(f"maxbytespersecond {value}", "mailmirror's lowest byte rate is 1024 per second")
            return
        invocation.sides[1].values[key] = convert(number)
        invocation.note(f"--{key.replace('_', '')}: the limit is set on the source account (what it fetches)")

    return handle


def _pair_key(section: str, key: str, convert: Callable[[str], Any] = str) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.section(section)[key] = convert(value)

    return handle


def _pair_flag(section: str, key: str, setting: Any = True) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.section(section)[key] = setting if value != "no" else _negated(setting)

    return handle


def _negated(setting: Any) -> Any:
    return {True: False, False: True, "mirror": "keep", "after_copy": "keep"}.get(setting, setting)


def _exact_folder(name: str) -> str:
    """A folder pattern matching exactly ``name`` (a regex when the name holds glob characters)."""
    return "re:^" + re.escape(name) + "$" if _GLOB_CHARACTERS.search(name.replace("[Gmail]", "")) else name


def _folder_names_note(invocation: _Invocation) -> None:
    invocation.note(
        "folder names and regexes (--folder, --include, --exclude, --regextrans2, --f1f2) are matched by mailmirror "
        "against names written with '/' between levels and without the server's prefix ('Archive/2024', not "
        "'INBOX.Archive.2024'): check them with `mailmirror plan`"
    )


def _folder(invocation: _Invocation, side: int, value: str) -> None:
    invocation.listed("folders", "include").append(_exact_folder(value))
    _folder_names_note(invocation)


def _folderrec(invocation: _Invocation, side: int, value: str) -> None:
    invocation.listed("folders", "include").append(f"{value.rstrip('/')}/**")
    _folder_names_note(invocation)


def _regex_list(key: str) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        try:
            re.compile(value)
        except re.error as error:
            invocation.unsupported(f"{key} {value}", f"not a regular expression Python reads ({error})")
            invocation.selection_widened = True
            return
        invocation.listed("folders", key).append("re:" + value)
        _folder_names_note(invocation)

    return handle


_SUBSTITUTION = re.compile(
    r"^s(?P<d>[^\w\s])(?P<pattern>.*?)(?<!\\)(?P=d)(?P<replacement>.*?)(?<!\\)(?P=d)(?P<flags>[a-z]*)$"
)


def parse_substitution(text: str) -> tuple[str, str, str] | None:
    """A Perl ``s/pattern/replacement/flags`` as (Python pattern, Python replacement, flags), or None when it
    uses what Python's re.sub cannot do (other flags than g and i, code in the replacement)."""
    match = _SUBSTITUTION.match(text.strip())
    if match is None:
        return None
    flags = match.group("flags")
    if set(flags) - {"g", "i"}:
        return None
    replacement = _python_replacement(match.group("replacement"))
    if replacement is None:
        return None
    delimiter = match.group("d")
    pattern = ("(?i)" if "i" in flags else "") + match.group("pattern").replace("\\" + delimiter, re.escape(delimiter))
    try:
        re.compile(pattern).sub(replacement, "")
    except (re.error, IndexError):
        return None
    return pattern, replacement, flags


_PERL_REPLACEMENT_TOKEN = re.compile(r"\\(.)|\$\{(\d+)\}|\$(\d+)|\$|@|(.)", re.DOTALL)


def _python_replacement(perl: str) -> str | None:
    """A Perl replacement text as a Python re.sub replacement: $1, ${1} and \\1 become \\g<1>, an escaped
    character stands for itself. None when it needs Perl (\\U, \\L, variables other than groups)."""
    parts: list[str] = []
    for match in _PERL_REPLACEMENT_TOKEN.finditer(perl):
        escaped, braced, plain, literal = match.groups()
        group = braced or plain or (escaped if escaped is not None and escaped.isdigit() else None)
        if group is not None:
            parts.append(rf"\g<{group}>")
        elif escaped is not None and escaped in "nt":
            parts.append("\n" if escaped == "n" else "\t")
        elif escaped is not None and not escaped.isalnum():
            parts.append(escaped.replace("\\", "\\\\"))
        elif literal is not None:
            parts.append(literal.replace("\\", "\\\\"))
        else:
            return None  # \U, \L, \E, $var, @array: Perl only
    return "".join(parts)


def _regextrans2(invocation: _Invocation, side: int, value: str) -> None:
    parsed = parse_substitution(value)
    if parsed is None:
        invocation.unsupported(f"regextrans2 {value}", "not a s/pattern/replacement/ with flags g or i")
        return
    pattern, replacement, flags = parsed
    invocation.listed("folders", "rename").append({"pattern": pattern, "replacement": replacement})
    if "g" not in flags:
        invocation.note(f"--regextrans2 {value}: mailmirror replaces every match, as with the g flag")
    _folder_names_note(invocation)


def _f1f2(invocation: _Invocation, side: int, value: str) -> None:
    source, equals, destination = value.partition("=")
    if not equals or not source or not destination:
        raise UsageError(f"imapsync option --f1f2: {value!r} is not SOURCE=DESTINATION")
    invocation.section("folders").setdefault("map", {})[source] = destination
    _folder_names_note(invocation)


def _days(key: str) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        days = _number(key.replace("_", ""), value)
        invocation.section("messages")[key] = f"{days:g}d" if days == int(days) else f"{round(days * 86400)}s"

    return handle


def _size(key: str, offset: int) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        size = int(_number(key.replace("_", ""), value))
        # imapsync skips messages larger (smaller) than OR EQUAL to the limit; mailmirror's limits are inclusive
        invocation.section("messages")[key] = max(0, size + offset)

    return handle


def _useheader(invocation: _Invocation, side: int, value: str) -> None:
    if value.upper() == "ALL":
        invocation.unsupported("useheader ALL", "mailmirror identifies messages by named headers and the size")
        return
    headers = invocation.listed("messages", "identity_headers")
    if value not in headers:
        headers.append(value)


def _regexflag(invocation: _Invocation, side: int, value: str) -> None:
    parsed = parse_substitution(value)
    if parsed is None:
        invocation.unsupported(f"regexflag {value}", "not a s/pattern/replacement/ with flags g or i")
        return
    pattern, replacement, _flags = parsed
    if not replacement:
        invocation.listed("flags", "drop").append(pattern)
        return
    if re.fullmatch(r"(\\\\)?[\w$]+", pattern.removeprefix("(?i)")) is not None:  # one flag, written literally
        flag = pattern.removeprefix("(?i)").replace("\\\\", "\\")
        renamed = re.sub(pattern, replacement, flag)
        if re.fullmatch(r"\\?[\w$]+", renamed) is not None:
            invocation.section("flags").setdefault("rename", {})[flag] = renamed
            return
    invocation.unsupported(
        f"regexflag {value}", "mailmirror drops flags by regex and renames single flags; not a general rewrite"
    )


def _unsupported(why: str) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.conversion.add_unsupported(why)

    return handle


def _unsupported_narrowing(why: str) -> Handler:
    """An option that narrows which folders or messages imapsync takes, and cannot be expressed: without
    it the converted pair takes more, so its deletions are not converted (convert_invocation)."""

    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.conversion.add_unsupported(why)
        invocation.selection_widened = True

    return handle


def _narrowed_folder_deletion(why: str) -> Handler:
    """An option that limits which folders --delete2folders deletes: it cannot be expressed, and dropping it
    would widen the deletion, so --delete2folders is not converted either (convert_invocation)."""

    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.conversion.add_unsupported(why)
        invocation.folder_deletion_narrowed = True

    return handle


def _noted(text: str) -> Handler:
    def handle(invocation: _Invocation, side: int, value: str) -> None:
        invocation.note(text)

    return handle


def _ignored(invocation: _Invocation, side: int, value: str) -> None:
    """Options with no effect on what is copied (logs, progress, caches): nothing to convert."""


def _automap(invocation: _Invocation, side: int, value: str) -> None:
    invocation.automap = value != "no"


def _sep1(invocation: _Invocation, side: int, value: str) -> None:
    invocation.note("--sep1: mailmirror reads the source's separator from the server (LIST) and needs no override")


def _prefix1(invocation: _Invocation, side: int, value: str) -> None:
    invocation.note("--prefix1: mailmirror reads the source's prefix from NAMESPACE; check with `mailmirror plan`")


def _subscribeall(invocation: _Invocation, side: int, value: str) -> None:
    invocation.unsupported("subscribeall", "mailmirror subscribes destination folders subscribed on the source only")


# name → Option; names ending in 1/2 are listed once as "name{side}" and expanded below
_SIDED: dict[str, Option] = {
    "host": Option(True, _account_key("host"), "accounts.X.host"),
    "port": Option(True, _account_key("port", _port), "accounts.X.port"),
    "user": Option(True, _account_key("username"), "accounts.X.username"),
    "password": Option(True, _password, "accounts.X.password: {env: MAILMIRROR_SOURCE_PASSWORD} (export it)"),
    "passfile": Option(True, _passfile, "accounts.X.password: {file: PATH}"),
    "ssl": Option(False, _ssl, "accounts.X.tls: implicit"),
    "tls": Option(False, _tls, "accounts.X.tls: starttls"),
    "authuser": Option(True, _authuser, "accounts.X.authuser (with auth: plain)"),
    "authmech": Option(True, _authmech, "accounts.X.auth: login, plain, xoauth2 (others: not supported)"),
    "oauthaccesstoken": Option(
        True, _oauth_token, "accounts.X.oauth2_token: {file: PATH}, or {env: …} for a token on the command line"
    ),
    "timeout": Option(True, _timeout, "accounts.X.timeout"),
    "sslargs": Option(
        True, _sslargs, "SSL_verify_mode=0: tls_verify: false; SSL_ca_file: tls_ca; others not supported"
    ),
    "gmail": Option(False, _provider("gmail", "imap.gmail.com"), "accounts.X.provider: gmail"),
    "office": Option(False, _provider("office365", "outlook.office365.com"), "accounts.X.provider: office365"),
    "exchange": Option(False, _exchange, "no preset for on-premises Exchange: an ordinary IMAP account (noted)"),
    "domino": Option(False, _unsupported("--domino1/2: no preset for Domino"), "not supported: no Domino preset"),
}
_SIDED_ONLY_ONE = {
    "sep1": Option(True, _sep1, "nothing needed: the separator comes from the server (noted)"),
    "sep2": Option(True, _pair_key("folders", "separator"), "pairs.X.folders.separator"),
    "prefix1": Option(True, _prefix1, "nothing needed: the prefix comes from NAMESPACE (noted)"),
    "prefix2": Option(True, _pair_key("folders", "prefix"), "pairs.X.folders.prefix"),
    "subfolder1": Option(True, _pair_key("folders", "from_under"), "pairs.X.folders.from_under"),
    "subfolder2": Option(True, _pair_key("folders", "under"), "pairs.X.folders.under"),
    "search1": Option(True, _pair_key("messages", "search"), "pairs.X.messages.search"),
    "search2": Option(
        True,
        _unsupported_narrowing("--search2: mailmirror selects source messages only"),
        "not supported: selection is on the source",
    ),
    "delete1": Option(False, _pair_flag("deletions", "source", "after_copy"), "pairs.X.deletions.source: after_copy"),
    "delete2": Option(False, _pair_flag("deletions", "destination", "mirror"), "pairs.X.deletions.destination: mirror"),
    "delete2folders": Option(
        False, _pair_flag("deletions", "delete_missing_folders"), "pairs.X.deletions.delete_missing_folders: true"
    ),
    "timeout1": Option(True, _timeout, "accounts.source.timeout"),
    "timeout2": Option(True, _timeout, "accounts.destination.timeout"),
}
_GLOBAL: dict[str, Option] = {
    "automap": Option(False, _automap, "pairs.X.folders.automap: true (without it: automap: false, as imapsync)"),
    "folder": Option(True, _folder, "pairs.X.folders.include: [NAME]"),
    "folderrec": Option(True, _folderrec, "pairs.X.folders.include: [NAME/**]"),
    "include": Option(True, _regex_list("include"), "pairs.X.folders.include: ['re:REGEX']"),
    "exclude": Option(True, _regex_list("exclude"), "pairs.X.folders.exclude: ['re:REGEX']"),
    "regextrans2": Option(True, _regextrans2, "pairs.X.folders.rename: [{pattern, replacement}] (s/…/…/ with g, i)"),
    "f1f2": Option(True, _f1f2, "pairs.X.folders.map: {SOURCE: DESTINATION}"),
    "maxage": Option(True, _days("max_age"), "pairs.X.messages.max_age: Nd"),
    "minage": Option(True, _days("min_age"), "pairs.X.messages.min_age: Nd"),
    "maxsize": Option(True, _size("max_size", -1), "pairs.X.messages.max_size: N-1 (imapsync skips size = N)"),
    "minsize": Option(True, _size("min_size", +1), "pairs.X.messages.min_size: N+1 (imapsync skips size = N)"),
    "search": Option(True, _pair_key("messages", "search"), "pairs.X.messages.search"),
    "skipcrossduplicates": Option(
        False, _pair_flag("messages", "skip_cross_folder_duplicates"), "pairs.X.messages.skip_cross_folder_duplicates"
    ),
    "useheader": Option(True, _useheader, "pairs.X.messages.identity_headers (ALL: not supported)"),
    "skipsize": Option(False, _ignored, "always: the size is part of a message's identity"),
    "regexflag": Option(True, _regexflag, "s/FLAG//: pairs.X.flags.drop; s/A/B/ of single flags: flags.rename"),
    "skipemptyfolders": Option(False, _pair_flag("folders", "skip_empty"), "pairs.X.folders.skip_empty: true"),
    "subscribed": Option(False, _pair_flag("folders", "subscribed_only"), "pairs.X.folders.subscribed_only: true"),
    "subscribe": Option(False, _pair_flag("folders", "subscribe"), "pairs.X.folders.subscribe (true by default)"),
    "subscribeall": Option(False, _subscribeall, "not supported: only source subscriptions are copied"),
    "maxbytespersecond": Option(
        True, _rate("max_bytes_per_second", int), "accounts.source.max_bytes_per_second (at least 1024)"
    ),
    "maxmessagespersecond": Option(
        True, _rate("max_messages_per_second", float), "accounts.source.max_messages_per_second"
    ),
    "timeout": Option(True, _timeout, "accounts.X.timeout, both sides"),
    "justfolders": Option(
        False,
        _unsupported_narrowing("--justfolders: mailmirror always copies messages with their folders"),
        "not supported: a pass copies folders and messages together",
    ),
    "dry": Option(
        False,
        _noted("--dry: not a config setting; run `mailmirror sync --dry-run` (or `mailmirror plan`)"),
        "`mailmirror sync --dry-run` / `mailmirror plan`",
    ),
    "justfoldersizes": Option(False, _noted("--justfoldersizes: run `mailmirror plan`"), "`mailmirror plan`"),
    "justlogin": Option(False, _noted("--justlogin: run `mailmirror check`"), "`mailmirror check`"),
    "justconnect": Option(False, _noted("--justconnect: run `mailmirror check`"), "`mailmirror check`"),
    "delete2duplicates": Option(
        False,
        _unsupported("--delete2duplicates: mailmirror never deletes destination messages it did not copy"),
        "not supported: destination messages mailmirror did not copy are never deleted",
    ),
    "delete2foldersonly": Option(
        True,
        _narrowed_folder_deletion("--delete2foldersonly: delete_missing_folders applies to every mapped folder"),
        "not supported: delete_missing_folders has no folder filter; --delete2folders is then not converted either",
    ),
    "delete2foldersbutnot": Option(
        True,
        _narrowed_folder_deletion("--delete2foldersbutnot: delete_missing_folders applies to every mapped folder"),
        "not supported: delete_missing_folders has no folder filter; --delete2folders is then not converted either",
    ),
    "expunge1": Option(False, _ignored, "part of deletions.source: after_copy"),
    "noexpungeaftereach": Option(False, _ignored, "nothing: mailmirror expunges per batch"),
    "syncinternaldates": Option(False, _ignored, "always: INTERNALDATE is copied"),
    "idatefromheader": Option(
        False,
        _unsupported("--idatefromheader: mailmirror copies the source INTERNALDATE as it is"),
        "not supported: INTERNALDATE is copied, not derived from Date:",
    ),
    "syncacls": Option(
        False, _unsupported("--syncacls: mailmirror does not copy ACLs"), "not supported: ACLs are not copied"
    ),
    "nosyncacls": Option(False, _ignored, "always: ACLs are not copied"),
    "resyncflags": Option(False, _ignored, "always: pairs.X.flags.sync: true"),
    "syncflagsaftercopy": Option(False, _ignored, "always: flags are copied with each message"),
    "addheader": Option(
        False,
        _unsupported("--addheader: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "disarmreadreceipts": Option(
        False,
        _unsupported("--disarmreadreceipts: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "maxlinelength": Option(
        True,
        _unsupported_narrowing("--maxlinelength: mailmirror has no line-length rule"),
        "not supported: no line-length rule",
    ),
    "minmaxlinelength": Option(
        True, _unsupported_narrowing("--minmaxlinelength: no line-length rule"), "not supported"
    ),
    "exitwhenover": Option(
        True,
        _unsupported_narrowing("--exitwhenover: mailmirror has no transfer volume cap per run"),
        "not supported: no volume cap per run",
    ),
    "errorsmax": Option(True, _ignored, "nothing: a pass records each failure and goes on"),
    "noskipsize": Option(
        False,
        _noted("--noskipsize: mailmirror always compares sizes when it matches messages already on the destination"),
        "nothing: the size is always part of a message's identity (noted)",
    ),
    "folderfirst": Option(True, _ignored, "nothing: the order of folders in a pass is mailmirror's"),
    "folderlast": Option(True, _ignored, "nothing: the order of folders in a pass is mailmirror's"),
    "skipheader": Option(
        True,
        _unsupported("--skipheader: mailmirror matches messages by messages.identity_headers only"),
        "not supported: identity_headers names the headers that count",
    ),
    "skipmess": Option(
        True,
        _unsupported_narrowing("--skipmess: mailmirror has no rule on message content; use messages.search"),
        "not supported: no content regex (messages.search selects by IMAP SEARCH)",
    ),
    "regexmess": Option(
        True,
        _unsupported("--regexmess: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "pipemess": Option(
        True,
        _unsupported("--pipemess: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "proxyauth1": Option(
        False,
        _unsupported("--proxyauth1: mailmirror logs in as authuser with SASL PLAIN instead of PROXYAUTH"),
        "not supported: use authuser (SASL PLAIN authorization identity)",
    ),
    "compress1": Option(False, _ignored, "nothing: no COMPRESS=DEFLATE"),
    "compress2": Option(False, _ignored, "nothing: no COMPRESS=DEFLATE"),
    "keepalive1": Option(False, _ignored, "nothing: connections are kept by the daemon"),
    "keepalive2": Option(False, _ignored, "nothing: connections are kept by the daemon"),
    "releasecheck": Option(False, _ignored, "nothing"),
    "noreleasecheck": Option(False, _ignored, "nothing"),
    "syncduplicates": Option(False, _ignored, "always: each source copy of a message is copied"),
    "nofoldersizes": Option(False, _ignored, "nothing: sizes are computed by `mailmirror plan` only"),
    "nofoldersizesatend": Option(False, _ignored, "nothing: sizes are computed by `mailmirror plan` only"),
    "foldersizes": Option(False, _ignored, "`mailmirror plan`"),
    "usecache": Option(False, _ignored, "nothing: the state database always remembers what was copied"),
    "nousecache": Option(False, _ignored, "nothing: the state database always remembers what was copied"),
    "useuid": Option(False, _ignored, "always: the state maps source UIDs to destination UIDs"),
    "logfile": Option(True, _ignored, "nothing: logs go to stderr/journald (log.format)"),
    "logdir": Option(True, _ignored, "nothing: logs go to stderr/journald (log.format)"),
    "nolog": Option(False, _ignored, "nothing: logs go to stderr/journald"),
    "pidfile": Option(True, _ignored, "nothing: systemd/Kubernetes track the process"),
    "pidfilelocking": Option(False, _ignored, "always: pair locks beside the state database"),
    "tmpdir": Option(True, _ignored, "nothing: no temporary files"),
    "debug": Option(False, _ignored, "`mailmirror -v`"),
    "nodebug": Option(False, _ignored, "nothing"),
    "split1": Option(True, _ignored, "transfer.batch_messages / batch_size (batches bounded by bytes)"),
    "split2": Option(True, _ignored, "transfer.batch_messages / batch_size (batches bounded by bytes)"),
    "buffersize": Option(True, _ignored, "nothing"),
}


def _expand() -> dict[str, tuple[Option, int]]:
    table: dict[str, tuple[Option, int]] = {}
    for name, option in _SIDED.items():
        for side in SIDES:
            table[f"{name}{side}"] = (option, side)
    for name, option in _SIDED_ONLY_ONE.items():
        table[name] = (option, int(name[-1]) if name[-1] in "12" else 0)
    for name, option in _GLOBAL.items():
        table[name] = (option, 0)
    return table


OPTIONS = _expand()
NEGATABLE = {"ssl1", "ssl2", "tls1", "tls2", "automap", "subscribe", "delete2", "delete1", "skipcrossduplicates"}


def mapping_table() -> list[tuple[str, str]]:
    """(imapsync option, what it becomes) for docs/imapsync.md, in table order."""
    rows = [(f"--{name}1 / --{name}2", option.mapping) for name, option in _SIDED.items()]
    rows += [(f"--{name}", option.mapping) for name, option in _SIDED_ONLY_ONE.items()]
    rows += [(f"--{name}", option.mapping) for name, option in _GLOBAL.items()]
    return rows


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


def _read_options(invocation: _Invocation, arguments: Sequence[str]) -> None:
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


def _finish_account(invocation: _Invocation, side: int) -> dict[str, Any]:
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
    invocation = _Invocation(conversion, secret_source)
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


def _drop_deletions(invocation: _Invocation) -> None:
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
