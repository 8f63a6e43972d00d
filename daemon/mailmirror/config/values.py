"""The value types of config fields that plain types do not check: names, regular expressions, folder
patterns, header names, flags, time zones, files, cron expressions and listen addresses.

Each is an ``Annotated`` type whose validator raises ``ValueError`` with the sentence the user reads (the
loader adds file, line and field); durations, sizes and paths are in :mod:`mailmirror.config.units`.
"""

from __future__ import annotations

import functools
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from mailmirror.config.units import ConfigPath

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
HEADER_NAME_PATTERN = r"^[!-9;-~]+$"
FLAG_PATTERN = r'^\\?[^\s(){%*"\\\]]+$'
REGEX_PREFIX = "re:"


def _check_name(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            "invalid name: use letters, digits, '.', '_', '@' and '-', starting with a letter or digit "
            "(names become metric labels and state keys)"
        )
    return value


def _compile_regex(pattern: str, written: str | None = None) -> re.Pattern[str]:
    """Compile ``pattern``; the error quotes the entry as ``written`` in the file (e.g. with its ``re:``)."""
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"invalid regular expression {written or pattern!r}: {error}") from None


def _check_regex(pattern: str) -> str:
    _compile_regex(pattern)
    return pattern


def _check_folder_pattern(pattern: str) -> str:
    if pattern.startswith(REGEX_PREFIX):
        _compile_regex(pattern[len(REGEX_PREFIX) :], written=pattern)
    elif not pattern:
        raise ValueError("must not be empty")
    return pattern


def _check_header_name(name: str) -> str:
    if not re.fullmatch(HEADER_NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not a header field name (printable ASCII, no spaces or ':')")
    return name


def _check_flag(flag: str) -> str:
    if not re.fullmatch(FLAG_PATTERN, flag):
        raise ValueError(f'{flag!r} is not an IMAP flag or keyword (no spaces, no ( ) {{ % * " \\ ])')
    return flag


def _check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin or UTC)") from None
    return name


def _check_existing_file(path: Path) -> Path:
    try:
        path.stat()
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except OSError as error:
        raise ValueError(f"cannot use {str(path)[:80]}: {error.strerror or error}") from None
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"not readable: {path}")
    return path


def _check_ca_file(path: Path) -> Path:
    problem = ca_file_problem(path)
    if problem:
        raise ValueError(problem)
    return path


def ca_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as tls_ca (a PEM file of CA certificates), or None when it can."""
    try:
        status = path.stat()
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    # a fleet's thousands of accounts name one CA file: load it once per version of the file
    return _ca_file_problem(str(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=64)
def _ca_file_problem(path: str, _mtime_ns: int, _size: int) -> str | None:
    import ssl  # only for configs that name a CA file: `config validate` starts faster without it

    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as error:
        return (
            f"{path} holds no usable CA certificate ({error.reason or error}): give a PEM file with "
            "-----BEGIN CERTIFICATE----- blocks (the CA that signed the server's certificate)"
        )
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    return None


Name = Annotated[str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})]
Regex = Annotated[str, AfterValidator(_check_regex), WithJsonSchema({"type": "string", "format": "regex"})]
FolderName = Annotated[str, Field(min_length=1)]
FolderPattern = Annotated[
    str,
    AfterValidator(_check_folder_pattern),
    WithJsonSchema({"type": "string", "minLength": 1}),
]
HeaderName = Annotated[
    str, AfterValidator(_check_header_name), WithJsonSchema({"type": "string", "pattern": HEADER_NAME_PATTERN})
]
Flag = Annotated[str, AfterValidator(_check_flag), WithJsonSchema({"type": "string", "pattern": FLAG_PATTERN})]
TimeZoneName = Annotated[str, AfterValidator(_check_timezone)]
ExistingFile = Annotated[ConfigPath, AfterValidator(_check_existing_file)]
CAFile = Annotated[ExistingFile, AfterValidator(_check_ca_file)]


# --------------------------------------------------------------------------------------------------
# Cron expressions (standard 5-field crontab syntax)
# --------------------------------------------------------------------------------------------------

_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1
    )
}
_DAY_NAMES = {name: number for number, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)

    def value_of(self, text: str) -> int | None:
        number = int(text) if text.isdigit() else self.names.get(text.lower())
        return number if number is not None and self.low <= number <= self.high else None

    def check(self, text: str) -> None:
        for item in text.split(","):
            self._check_item(item, text)

    def _check_item(self, item: str, whole: str) -> None:
        base, has_step, step = item.partition("/")
        if has_step and not (step.isdigit() and int(step) > 0):
            raise ValueError(f"{self.name} {whole!r}: step {step!r} must be a positive number")
        if base == "*":
            return
        bounds = base.split("-", 1)
        for bound in bounds:
            if self.value_of(bound) is None:
                allowed = f"{self.low}-{self.high}" + (" or a name" if self.names else "")
                where = self.name if bound == whole else f"{self.name} {whole!r}:"
                raise ValueError(f"{where} {bound!r} is not {allowed}")


_CRON_FIELDS = (
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day of month", 1, 31),
    _CronField("month", 1, 12, _MONTH_NAMES),
    _CronField("day of week", 0, 7, _DAY_NAMES),
)


def _check_cron(expression: str) -> str:
    parts = expression.split()
    if len(parts) != len(_CRON_FIELDS):
        raise ValueError(
            f"must have 5 fields: minute hour day-of-month month day-of-week (got {len(parts)} in {expression!r})"
        )
    for text, cron_field in zip(parts, _CRON_FIELDS, strict=True):
        cron_field.check(text)
    return expression


CronExpression = Annotated[str, AfterValidator(_check_cron)]


def split_listen_address(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if colon and host and port.isdigit() and int(port) > 65535:
        raise ValueError(f"port {int(port)} is out of range: a TCP port is 0 to 65535 (got {value!r})")
    valid = colon and host and port.isdigit() and 0 <= int(port) < 65536 and (bracketed or ":" not in host)
    if not valid:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464 (got {value!r})")
    return host, int(port)


def _check_listen_address(value: str) -> str:
    split_listen_address(value)
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]
