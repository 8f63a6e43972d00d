"""Value types of the config file: durations, sizes and paths, as people write them.

Durations
    ``"30s"``, ``"15m"``, ``"2h"``, ``"365d"``, ``"1w"`` (also combined, ``"1h30m"``, and decimals,
    ``"1.5h"``) or a whole number of seconds (``90``). Parsed to :class:`datetime.timedelta`, written
    back in the same notation by :func:`format_duration`.

Sizes
    A number of bytes (``1048576``) or a number with a unit: ``B``; decimal ``kB``/``KB``, ``MB``,
    ``GB``, ``TB`` (powers of 1000: ``1 MB = 1,000,000 bytes``, as mail providers and APPENDLIMIT
    advertisements count); binary ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024:
    ``1 MiB = 1,048,576 bytes``). Units are case-insensitive (``10kb`` = ``10kB``); decimals are
    allowed (``"1.5MiB"``) and rounded down to whole bytes.

Paths
    A relative path is relative to the directory of the config file (not to the working directory
    of the daemon), when the config is loaded with :data:`CONFIG_DIR` in the validation context.

All three are available as pydantic field types, :data:`Duration`, :data:`Size` and :data:`ConfigPath`;
the JSON Schema of the first two accepts either notation.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

CONFIG_DIR = "config_dir"
"""Key of the validation context holding the directory that relative paths are relative to."""

SECONDS_PER_UNIT: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

BYTES_PER_UNIT: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_NUMBER = r"\d+(?:\.\d+)?"
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}\s*[smhdw]\s*)+$"
SIZE_PATTERN = rf"^\s*{_NUMBER}\s*(?:[bB]|[kKmMgGtT][iI]?[bB])?\s*$"

_DURATION_PART = re.compile(rf"({_NUMBER})\s*([smhdw])")
_SIZE = re.compile(rf"^\s*({_NUMBER})\s*([a-z]*)\s*$", re.IGNORECASE)

MAX_DURATION = timedelta(days=36500)
"""No duration in a config means more than a century; beyond it, date arithmetic overflows."""
MAX_SIZE = 2**53
"""No size in a config is larger (8 PiB); beyond it, numbers stop being exact and databases overflow."""

DURATION_HINT = "a duration like 30s, 15m, 2h, 7d, 1w (or 1h30m), or a whole number of seconds"
SIZE_HINT = "a size like 512KB, 50MB, 1.5MiB, 2GiB, or a whole number of bytes"


def parse_duration(value: object) -> timedelta:
    """Read a duration: ``"15m"``, ``"1h30m"``, ``"1.5h"``, an int of seconds, or a ``timedelta``.

    Raises :class:`ValueError` with a sentence fit for the user on anything else, negatives included.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return _bounded_duration(Decimal(str(value.total_seconds())), value)
    if isinstance(value, bool):
        raise ValueError(f"must be {DURATION_HINT} (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative (got {value})")
        return _bounded_duration(Decimal(value), value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _bounded_duration(Decimal(text), value)
        if re.fullmatch(DURATION_PATTERN, text):
            seconds = sum(Decimal(number) * SECONDS_PER_UNIT[unit] for number, unit in _DURATION_PART.findall(text))
            return _bounded_duration(Decimal(seconds), value)
    raise ValueError(f"must be {DURATION_HINT} (got {value!r})")


def _bounded_duration(seconds: Decimal, written: object) -> timedelta:
    if seconds > Decimal(int(MAX_DURATION.total_seconds())):
        shown = written if isinstance(written, str | int) else format_duration(MAX_DURATION)
        raise ValueError(f"must be at most {format_duration(MAX_DURATION)} (100 years) (got {shown!r})")
    return timedelta(seconds=float(seconds))


def at_most(limit: timedelta) -> AfterValidator:
    """A bound for one duration field, with a sentence naming it: ``must be at most 5m (got 1h)``."""

    def check(value: timedelta | None) -> timedelta | None:
        if value is not None and value > limit:
            raise ValueError(f"must be at most {format_duration(limit)} (got {format_duration(value)})")
        return value

    return AfterValidator(check)


def format_duration(value: timedelta) -> str:
    """Write a duration the way :func:`parse_duration` reads it, largest units first (``"1h30m"``).

    Weeks only for whole weeks (``"2w"``, but ``"365d"``); sub-second parts are dropped; zero is ``"0s"``.
    """
    remaining = int(value.total_seconds())
    if remaining <= 0:
        return "0s"
    units = sorted(SECONDS_PER_UNIT.items(), key=lambda item: -item[1])
    if remaining % SECONDS_PER_UNIT["w"]:
        units = [(unit, seconds) for unit, seconds in units if unit != "w"]  # "365d", not "52w1d"
    parts: list[str] = []
    for unit, seconds in units:
        count, remaining = divmod(remaining, seconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_size(value: object) -> int:
    """Read a size in bytes: ``"50MB"`` (10^6), ``"1.5MiB"`` (2^20), ``"512KB"``, an int of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"must be {SIZE_HINT} (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative (got {value})")
        return _bounded_size(value, value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            number, unit = match.group(1), match.group(2).lower() or "b"
            if unit in BYTES_PER_UNIT:
                return _bounded_size(_whole_bytes(number, BYTES_PER_UNIT[unit]), value)
    raise ValueError(f"must be {SIZE_HINT} (got {value!r})")


def _bounded_size(size: int, written: object) -> int:
    if size > MAX_SIZE:
        raise ValueError(f"must be at most {MAX_SIZE} bytes (8 PiB) (got {written!r})")
    return size


def _whole_bytes(number: str, multiplier: int) -> int:
    try:
        return int(Decimal(number) * multiplier)
    except InvalidOperation as error:  # pragma: no cover - the regex only lets digits through
        raise ValueError(f"must be {SIZE_HINT} (got {number!r})") from error


def _serialize_duration(value: timedelta) -> str:
    return format_duration(value)


_DURATION_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": DURATION_PATTERN},
        {"type": "integer", "minimum": 0},
    ],
    "description": "A duration: 30s, 15m, 2h, 7d, 1w, 1h30m, or a whole number of seconds.",
}

_SIZE_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": SIZE_PATTERN},
        {"type": "integer", "minimum": 0},
    ],
    "description": "A size: 512KB, 50MB (MB = 1000²), 1.5MiB (MiB = 1024²), or a whole number of bytes.",
}

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_serialize_duration, return_type=str, when_used="json"),
    WithJsonSchema(_DURATION_JSON_SCHEMA, mode="validation"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}, mode="serialization"),
]
"""A pydantic field type: written as ``"15m"`` or seconds, a :class:`timedelta` in Python."""

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(_SIZE_JSON_SCHEMA, mode="validation"),
    WithJsonSchema({"type": "integer", "minimum": 0}, mode="serialization"),
]
"""A pydantic field type: written as ``"50MB"`` or bytes, an ``int`` of bytes in Python."""


def resolve_config_path(value: Path, info: ValidationInfo) -> Path:
    """Make a relative path relative to the config file's directory (taken from the validation context)."""
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get(CONFIG_DIR)
    if value.is_absolute() or base is None:
        return value
    return Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(resolve_config_path)]
"""A pydantic field type: a path, relative ones taken from the config file's directory."""
