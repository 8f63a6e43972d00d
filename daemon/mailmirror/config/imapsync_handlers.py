"""What each imapsync option does to a conversion: one handler per option (or per kind of option), called
with the invocation being read, the side (1, 2, or 0 for options of both) and the option's value ("" for a
flag, "no" for a negated one).

A handler sets account or pair keys, or records why the option cannot be expressed (and whether dropping
it widens what the pair takes, which then keeps its deletions from being converted). The table naming the
handler of every option is :mod:`mailmirror.config.imapsync_options`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailmirror.config.imapsync_conversion import AUTH_MECHANISMS, SIDES, Handler, Invocation
from mailmirror.errors import UsageError

_GLOB_CHARACTERS = re.compile(r"[*?\[\]]")


def account_key(key: str, convert: Callable[[str], Any] = str) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.sides[side].values[key] = convert(value)

    return handle


def tcp_port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise UsageError(f"imapsync option --port1/--port2: {value!r} is not a TCP port")
    return int(value)


def password(invocation: Invocation, side: int, value: str) -> None:
    if value:
        invocation.sides[side].values["password"] = invocation.secret_source(side, "password")


def passfile(invocation: Invocation, side: int, value: str) -> None:
    invocation.sides[side].values["password"] = {"file": str(Path(value).expanduser().absolute())}


def oauth_token(invocation: Invocation, side: int, value: str) -> None:
    values = invocation.sides[side].values
    path = Path(value).expanduser()
    # imapsync reads the token from the file when the value names one
    values["oauth2_token"] = (
        {"file": str(path.absolute())} if path.is_file() else invocation.secret_source(side, "oauth2_token")
    )
    invocation.sides[side].authmech = invocation.sides[side].authmech or "XOAUTH2"


def ssl(invocation: Invocation, side: int, value: str) -> None:
    invocation.sides[side].ssl = value != "no"


def tls(invocation: Invocation, side: int, value: str) -> None:
    invocation.sides[side].tls = value != "no"


def authmech(invocation: Invocation, side: int, value: str) -> None:
    mechanism = value.upper()
    if mechanism not in AUTH_MECHANISMS:
        invocation.unsupported(
            f"authmech{side} {value}", "mailmirror logs in with LOGIN, PLAIN, XOAUTH2 or OAUTHBEARER"
        )
        return
    invocation.sides[side].authmech = mechanism


def authuser(invocation: Invocation, side: int, value: str) -> None:
    invocation.sides[side].values["authuser"] = value
    invocation.sides[side].authmech = invocation.sides[side].authmech or "PLAIN"


def timeout(invocation: Invocation, side: int, value: str) -> None:
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


def sslargs(invocation: Invocation, side: int, value: str) -> None:
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


def provider(name: str, host: str | None) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        values = invocation.sides[side].values
        values["provider"] = name
        if host is not None:
            values.setdefault("host", host)
        invocation.sides[side].ssl = True

    return handle


def exchange(invocation: Invocation, side: int, value: str) -> None:
    invocation.note(
        f"--exchange{side}: mailmirror has no preset for on-premises Exchange (provider: office365 is Exchange "
        "Online); the account is an ordinary IMAP server: set max_messages_per_second or messages.max_size if it "
        "throttles or refuses large messages"
    )


def rate(key: str, convert: Callable[[float], Any]) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        number = _number(key, value)
        if number <= 0:
            return  # imapsync: 0 means no limit
        if key == "max_bytes_per_second" and number < 1024:
            invocation.unsupported(f"maxbytespersecond {value}", "mailmirror's lowest byte rate is 1024 per second")
            return
        invocation.sides[1].values[key] = convert(number)
        invocation.note(f"--{key.replace('_', '')}: the limit is set on the source account (what it fetches)")

    return handle


def pair_key(section: str, key: str, convert: Callable[[str], Any] = str) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.section(section)[key] = convert(value)

    return handle


def pair_flag(section: str, key: str, setting: Any = True) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.section(section)[key] = setting if value != "no" else _negated(setting)

    return handle


def _negated(setting: Any) -> Any:
    return {True: False, False: True, "mirror": "keep", "after_copy": "keep"}.get(setting, setting)


def _exact_folder(name: str) -> str:
    """A folder pattern matching exactly ``name`` (a regex when the name holds glob characters)."""
    return "re:^" + re.escape(name) + "$" if _GLOB_CHARACTERS.search(name.replace("[Gmail]", "")) else name


def _folder_names_note(invocation: Invocation) -> None:
    invocation.note(
        "folder names and regexes (--folder, --include, --exclude, --regextrans2, --f1f2) are matched by mailmirror "
        "against names written with '/' between levels and without the server's prefix ('Archive/2024', not "
        "'INBOX.Archive.2024'): check them with `mailmirror plan`"
    )


def folder(invocation: Invocation, side: int, value: str) -> None:
    invocation.listed("folders", "include").append(_exact_folder(value))
    _folder_names_note(invocation)


def folderrec(invocation: Invocation, side: int, value: str) -> None:
    invocation.listed("folders", "include").append(f"{value.rstrip('/')}/**")
    _folder_names_note(invocation)


def regex_list(key: str) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
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


def _substitution(invocation: Invocation, option: str, value: str) -> tuple[str, str, str] | None:
    """:func:`parse_substitution`, or None with the option recorded as not converted."""
    parsed = parse_substitution(value)
    if parsed is None:
        invocation.unsupported(f"{option} {value}", "not a s/pattern/replacement/ with flags g or i")
    return parsed


def regextrans2(invocation: Invocation, side: int, value: str) -> None:
    parsed = _substitution(invocation, "regextrans2", value)
    if parsed is None:
        return
    pattern, replacement, flags = parsed
    invocation.listed("folders", "rename").append({"pattern": pattern, "replacement": replacement})
    if "g" not in flags:
        invocation.note(f"--regextrans2 {value}: mailmirror replaces every match, as with the g flag")
    _folder_names_note(invocation)


def f1f2(invocation: Invocation, side: int, value: str) -> None:
    source, equals, destination = value.partition("=")
    if not equals or not source or not destination:
        raise UsageError(f"imapsync option --f1f2: {value!r} is not SOURCE=DESTINATION")
    invocation.section("folders").setdefault("map", {})[source] = destination
    _folder_names_note(invocation)


def days(key: str) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        number = _number(key.replace("_", ""), value)
        invocation.section("messages")[key] = f"{number:g}d" if number == int(number) else f"{round(number * 86400)}s"

    return handle


def size(key: str, offset: int) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        limit = int(_number(key.replace("_", ""), value))
        # imapsync skips messages larger (smaller) than OR EQUAL to the limit; mailmirror's limits are inclusive
        invocation.section("messages")[key] = max(0, limit + offset)

    return handle


def useheader(invocation: Invocation, side: int, value: str) -> None:
    if value.upper() == "ALL":
        invocation.unsupported("useheader ALL", "mailmirror identifies messages by named headers and the size")
        return
    headers = invocation.listed("messages", "identity_headers")
    if value not in headers:
        headers.append(value)


def regexflag(invocation: Invocation, side: int, value: str) -> None:
    parsed = _substitution(invocation, "regexflag", value)
    if parsed is None:
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


def unsupported(why: str) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.conversion.add_unsupported(why)

    return handle


def unsupported_narrowing(why: str) -> Handler:
    """An option that narrows which folders or messages imapsync takes, and cannot be expressed: without
    it the converted pair takes more, so its deletions are not converted (convert_invocation)."""

    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.conversion.add_unsupported(why)
        invocation.selection_widened = True

    return handle


def narrowed_folder_deletion(why: str) -> Handler:
    """An option that limits which folders --delete2folders deletes: it cannot be expressed, and dropping it
    would widen the deletion, so --delete2folders is not converted either (convert_invocation)."""

    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.conversion.add_unsupported(why)
        invocation.folder_deletion_narrowed = True

    return handle


def noted(text: str) -> Handler:
    def handle(invocation: Invocation, side: int, value: str) -> None:
        invocation.note(text)

    return handle


def ignored(invocation: Invocation, side: int, value: str) -> None:
    """Options with no effect on what is copied (logs, progress, caches): nothing to convert."""


def automap(invocation: Invocation, side: int, value: str) -> None:
    invocation.automap = value != "no"


def sep1(invocation: Invocation, side: int, value: str) -> None:
    invocation.note("--sep1: mailmirror reads the source's separator from the server (LIST) and needs no override")


def prefix1(invocation: Invocation, side: int, value: str) -> None:
    invocation.note("--prefix1: mailmirror reads the source's prefix from NAMESPACE; check with `mailmirror plan`")


def subscribeall(invocation: Invocation, side: int, value: str) -> None:
    invocation.unsupported("subscribeall", "mailmirror subscribes destination folders subscribed on the source only")
