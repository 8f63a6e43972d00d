"""The configuration: YAML file → validated, typed, frozen models, with exact ``file:line: path: message`` errors.

Public API
    :func:`load_config` reads and validates a file and returns a :class:`Config`; every problem found is
    reported at once in an :class:`InvalidConfig` (a :class:`~mailmirror.errors.ConfigError`, exit 78),
    one line each, as ``config.yaml:12: pairs.alice.source: unknown account 'old2' (known: new, old)``.
    :func:`format_config_error` renders any ``ConfigError`` for the terminal.
    :func:`config_json_schema` is the JSON Schema (draft 2020-12) for editors.
    :meth:`Config.pair` / :meth:`Config.effective_pairs` give pairs with ``defaults`` merged in.

The models are the single source of truth: their field descriptions are the schema's and the docs'.

Inheritance from ``defaults``
    Each pair inherits the ``defaults`` sections (schedule, folders, messages, flags, deletions) key by
    key; what the pair sets wins. Mappings (``folders.map``, ``flags.rename``) merge entry by entry,
    lists (``folders.include``, ``schedule.idle``, ...) are replaced whole. ``schedule.every`` and
    ``schedule.cron`` are alternatives: a pair that sets either one replaces both.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import stat
import types
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mailmirror.config.mailboxes import MailboxIdentity, mailbox_identity
from mailmirror.config.pairsets import (
    PAIR_SET_ORIGINS,
    ROW_OPTION_COLUMNS,
    CsvProblem,
    PairSetOrigins,
    RowOrigin,
    TemplateIssue,
    expand_pair_sets,
)
from mailmirror.config.providers import AppliedPreset, ProviderName, apply_account_presets, pair_preset_layer
from mailmirror.config.secrets import Secret
from mailmirror.config.units import CONFIG_DIR, ConfigPath, Duration, Size, at_most, format_duration
from mailmirror.errors import ConfigError, UsageError
from mailmirror.imap.oauth2 import OAuth2Client

__all__ = [
    "Account",
    "Config",
    "ConfigProblem",
    "DeletionRules",
    "FlagRules",
    "FolderRules",
    "InvalidConfig",
    "LogConfig",
    "MessageRules",
    "MetricsConfig",
    "Pair",
    "PairDefaults",
    "RenameRule",
    "Schedule",
    "Secret",
    "StateConfig",
    "config_json_schema",
    "format_config_error",
    "load_config",
]

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
HEADER_NAME_PATTERN = r"^[!-9;-~]+$"
FLAG_PATTERN = r'^\\?[^\s(){%*"\\\]]+$'
REGEX_PREFIX = "re:"
OAUTH_MECHANISMS = ("xoauth2", "oauthbearer")
SECRET_SHAPES = "{env: NAME}, {file: PATH} or {command: [argv, ...]}"
IMAP_NUMBER_MAX = 2**32 - 1  # sizes in SEARCH LARGER/SMALLER are 32-bit numbers

# The context key of a PydanticCustomError that points below the model raising it (see _field_error).
_SUBPATH = "mailmirror_subpath"


def _field_error(path: str | Sequence[str], message: str) -> PydanticCustomError:
    """An error raised by a model validator about one of its own fields, located at that field."""
    subpath = [path] if isinstance(path, str) else list(path)
    return PydanticCustomError("mailmirror", message, {_SUBPATH: subpath})


# --------------------------------------------------------------------------------------------------
# Small value types
# --------------------------------------------------------------------------------------------------


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
    import ssl  # only for configs that name a CA file: `config validate` starts faster without it

    try:
        ssl.create_default_context(cafile=str(path))
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


def _split_listen_address(value: str) -> tuple[str, int]:
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
    _split_listen_address(value)
    return value


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class _Section(BaseModel):
    """Every config model: unknown keys are errors, instances are immutable, defaults are validated too."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML 1.1 reads yes/no/on/off/true/false as booleans, which pydantic would take as 1 and 0."""
        if not isinstance(data, dict):
            return data
        for name, model_field in cls.model_fields.items():
            if isinstance(data.get(name), bool) and _unwrap(model_field.annotation) in (int, float):
                got = "true" if data[name] else "false"
                message = f"must be a number, not {got} (YAML reads yes, no, on, off, true, false as true/false)"
                raise _field_error(name, message)
        return data

    @model_validator(mode="before")
    @classmethod
    def _blank_means_empty(cls, data: Any) -> Any:
        """A section, mapping or list left blank (``defaults:`` with everything below commented out) is YAML
        null: read it as empty, i.e. all defaults."""
        if not isinstance(data, dict):
            return data
        blank = [name for name in _container_fields(cls) if name in data and data[name] is None]
        if not blank:
            return data
        return {**data, **{name: _empty_like(cls.model_fields[name].annotation) for name in blank}}


@functools.cache  # per model class: asked for every section of every pair (thousands with pair sets)
def _container_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Fields holding a section, a mapping or a list (not Optional ones, for which null means something)."""
    return tuple(
        name for name, model_field in model.model_fields.items() if _empty_like(model_field.annotation) is not None
    )


def _empty_like(declared: Any) -> dict[str, Any] | list[Any] | None:
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return {}
    origin = get_origin(declared)
    if origin is dict:
        return {}
    if origin is list:
        return []
    return None


class StateConfig(_Section):
    """Where mailmirror keeps its state (UID maps, journal of appends): one SQLite database."""

    path: ConfigPath = Field(
        default=Path("/var/lib/mailmirror/state.db"),
        description="SQLite state database (WAL mode). A relative path is relative to the config file.",
    )


class MetricsConfig(_Section):
    """The HTTP endpoint serving Prometheus metrics (/metrics) and health checks (/healthz, /readyz)."""

    listen: Annotated[str, AfterValidator(_check_listen_address)] = Field(
        default="127.0.0.1:9464",
        description=(
            "host:port to listen on; [::1]:9464 for IPv6, 0.0.0.0:9464 for every interface; port 0 picks a "
            "free port (logged at start)."
        ),
    )
    enabled: bool = Field(default=True, description="Serve metrics and health endpoints.")
    stale_after_intervals: float = Field(
        default=3.0,
        ge=1.0,
        le=1000.0,
        description=(
            "/readyz fails when a pair's last successful pass is older than this many schedule intervals "
            "(every + jitter, or the longest gap of its cron); pairs without a schedule are not checked."
        ),
    )

    @property
    def host(self) -> str:
        """The host part of ``listen``, without IPv6 brackets."""
        return _split_listen_address(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return _split_listen_address(self.listen)[1]


class DaemonConfig(_Section):
    """How `mailmirror run` (and `mailmirror sync` of several pairs) shares its work: concurrency, backoff of
    failing pairs, shutdown."""

    max_parallel_passes: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Passes running at the same time, over all pairs (also `mailmirror sync`'s default --parallel).",
    )
    backoff_max: Annotated[Duration, at_most(timedelta(days=7))] = Field(
        default=timedelta(minutes=30),
        json_schema_extra={"default": "30m"},
        description="A failing pair is retried after 30s, 1m, 2m, ... up to this, whatever its schedule.",
    )
    stop_timeout: Annotated[Duration, at_most(timedelta(hours=1))] = Field(
        default=timedelta(seconds=30),
        json_schema_extra={"default": "30s"},
        description=(
            "On SIGTERM (and Ctrl-C during `mailmirror sync`): time to finish the batch in flight, record it and "
            "log out before exiting."
        ),
    )
    max_connections: int = Field(
        default=64,
        ge=2,
        le=10000,
        description=(
            "Most IMAP connections open at the same time over all pairs and accounts (each pass takes one per "
            "side, and more for transfer.workers while they are free)."
        ),
    )
    lock_dir: ConfigPath | None = Field(
        default=None,
        description=(
            "Directory of the destination locks (one writer per destination mailbox, whatever the config file or "
            "state database): every mailmirror of the machine must use the same one. Default: /run/mailmirror "
            "when it exists (the systemd units create it) or when run as root, else $XDG_RUNTIME_DIR/mailmirror, "
            "else /tmp/mailmirror-UID. A user who cannot create a lock file in /run/mailmirror locks an existing "
            "one read-only, else the pass ends with exit 78 (never locking elsewhere). Local to one machine: see "
            "docs/architecture.md."
        ),
    )


class LogConfig(_Section):
    """Logging on standard error (journald picks it up under systemd)."""

    format: Literal["text", "json"] = Field(
        default="text", description="text for people, json (one object per line) for log shippers."
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged."
    )


class Account(_Section):
    """An IMAP account: where to connect and how to log in. Referenced by name from pairs."""

    provider: ProviderName | None = Field(
        default=None,
        description=(
            "A preset of the provider's known limits and folder quirks (gmail, office365, generic), applied as "
            "ordinary defaults: host, max_connections, rate limits, and for pairs using the account folders not "
            "to copy, label duplicates, message size limit, throttling retries. What the config sets wins; "
            "`mailmirror plan` shows each preset value; docs/providers.md lists them with their sources."
        ),
    )
    host: str = Field(
        min_length=1, description="IMAP server host name or IP address (with provider: gmail/office365, optional)."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="TCP port; default 993 with tls: implicit, 143 otherwise (see effective_port).",
    )
    tls: Literal["implicit", "starttls", "none"] = Field(
        default="implicit",
        description=(
            "implicit: TLS from the first byte (IMAPS); starttls: plain connection upgraded with STARTTLS, "
            "which must succeed (never silently skipped); none: no encryption at all."
        ),
    )
    tls_verify: bool = Field(
        default=True,
        description="Verify the server certificate and host name. Turn off only for a known lab server.",
    )
    tls_ca: CAFile | None = Field(
        default=None,
        description="PEM file of the CA(s) to trust instead of the system store (must exist).",
    )
    username: str = Field(min_length=1, description="The mailbox user to log in as (whose mail is synced).")
    password: Secret | None = Field(
        default=None,
        description=(
            f"Password: a secret reference, {SECRET_SHAPES}, never inline. With authuser, the admin's "
            "password. Required unless auth is xoauth2/oauthbearer."
        ),
    )
    authuser: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Admin/master user logging in on behalf of username (imapsync --authuser): with auth: plain the "
            "authentication identity, username being the authorization identity."
        ),
    )
    authuser_separator: str | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description=(
            "With authuser: log in as username + this character + authuser (Dovecot's auth_master_user_separator, "
            "e.g. '*': 'alice*admin') instead of SASL PLAIN with an authorization identity."
        ),
    )
    auth: Literal["auto", "login", "plain", "scram-sha-256", "scram-sha-1", "xoauth2", "oauthbearer"] = Field(
        default="auto",
        description=(
            "Login mechanism. auto: the strongest the server offers and the credentials allow (SCRAM-SHA-256, "
            "SCRAM-SHA-1, PLAIN, LOGIN for a password; OAUTHBEARER, XOAUTH2 for OAuth2; PLAIN for authuser); "
            "`mailmirror check` shows the choice. Or one of login (the LOGIN command), plain, scram-sha-256, "
            "scram-sha-1, xoauth2, oauthbearer."
        ),
    )
    oauth2: OAuth2Client | None = Field(
        default=None,
        description=(
            "OAuth2 client mailmirror gets access tokens from itself (refreshed before expiry; rotated refresh "
            "tokens stored in token_file). Instead of password or oauth2_token."
        ),
    )
    oauth2_token: Secret | None = Field(
        default=None,
        description=(
            f"A ready OAuth2 access token: a secret reference, {SECRET_SHAPES}, typically a command printing a "
            "fresh token. Prefer oauth2, which refreshes tokens itself."
        ),
    )
    timeout: Annotated[Duration, at_most(timedelta(hours=1))] = Field(
        default=timedelta(seconds=60),
        json_schema_extra={"default": "60s"},
        description="Network timeout for connecting and for each server response.",
    )
    max_connections: int = Field(
        default=4,
        ge=1,
        le=10000,
        description="Most simultaneous connections to this account, across all pairs using it.",
    )
    max_messages_per_second: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description=(
            "Rate limit: messages fetched from / appended to this account per second, over all pairs and "
            "connections (a token bucket; for providers that throttle). null: no limit."
        ),
    )
    max_bytes_per_second: Size | None = Field(
        default=None,
        ge=1024,
        description="Rate limit: message bytes fetched from / appended to this account per second. null: no limit.",
    )

    @property
    def effective_port(self) -> int:
        """``port`` if set, else 993 for implicit TLS and 143 for STARTTLS or no TLS."""
        if self.port is not None:
            return self.port
        return 993 if self.tls == "implicit" else 143

    @property
    def identity(self) -> MailboxIdentity:
        """Which mailbox this account is, however its host and port are spelled (mailboxes.py)."""
        return mailbox_identity(self.host, self.effective_port, self.username)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: Any) -> Any:
        if not value:
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> Account:
        oauth_sources = [name for name in ("oauth2", "oauth2_token") if getattr(self, name) is not None]
        if len(oauth_sources) > 1:
            raise _field_error("oauth2_token", "give either oauth2 (mailmirror gets tokens itself) or oauth2_token")
        if self.auth in OAUTH_MECHANISMS or (self.auth == "auto" and oauth_sources):
            if not oauth_sources:
                raise _field_error(
                    "oauth2_token",
                    f"required with auth: {self.auth} (a secret: {SECRET_SHAPES}), or oauth2 (an OAuth2 client)",
                )
            if self.password is not None:
                raise _field_error("password", f"not used with {oauth_sources[0]}, which logs in with OAuth2 tokens")
            if self.authuser is not None:
                raise _field_error("authuser", "not used with OAuth2: the token names the user")
        else:
            if self.password is None and self.auth == "auto":
                raise _field_error("password", f"required (a secret: {SECRET_SHAPES}), or oauth2 for OAuth2 logins")
            if self.password is None:
                raise _field_error("password", f"required with auth: {self.auth} (a secret: {SECRET_SHAPES})")
            if oauth_sources:
                raise _field_error(oauth_sources[0], "only used with auth: auto, xoauth2 or oauthbearer")
        if self.authuser_separator is not None and self.authuser is None:
            raise _field_error("authuser_separator", "only used with authuser")
        if self.tls == "none" and self.tls_ca is not None:
            raise _field_error("tls_ca", "has no effect with tls: none")
        return self


class Schedule(_Section):
    """When a pair runs under `mailmirror run`. It always starts with a pass; then every/cron and IDLE push."""

    every: Annotated[Duration, at_most(timedelta(days=366))] | None = Field(
        default=timedelta(minutes=15),
        json_schema_extra={"default": "15m"},
        description="Run a pass this long after the previous one started. Alternative to cron; null for neither.",
    )
    cron: CronExpression | None = Field(
        default=None,
        description=(
            "Run a pass at these times: standard 5-field crontab (minute hour day-of-month month day-of-week, "
            "day of week 0 or 7 = Sunday; when both day fields are restricted, either one matching is enough, "
            "as in cron). Alternative to every."
        ),
    )
    timezone: TimeZoneName | None = Field(
        default=None, description="IANA time zone for cron (e.g. Europe/Berlin); default: the system's."
    )
    idle: list[FolderName] = Field(
        default=[],
        description=(
            "Source folders to watch with IDLE: new mail there is copied within seconds; every/cron passes "
            "remain the safety net."
        ),
    )
    jitter: Annotated[Duration, at_most(timedelta(days=7))] = Field(
        default=timedelta(0),
        json_schema_extra={"default": "0s"},
        description="Delay each scheduled pass by a random time up to this long (spreads load over many pairs).",
    )

    @model_validator(mode="before")
    @classmethod
    def _cron_replaces_every(cls, data: Any) -> Any:
        """``every`` defaults to 15m only when no cron is given: a pair written with cron alone is valid."""
        if isinstance(data, dict) and data.get("cron") is not None and "every" not in data:
            return {**data, "every": None}
        return data

    @field_validator("every")
    @classmethod
    def _positive_interval(cls, value: Any) -> Any:
        if value is not None and not value:
            raise ValueError("must be longer than 0s (use null for no periodic pass)")
        return value

    @model_validator(mode="after")
    def _one_kind_of_schedule(self) -> Schedule:
        if self.every is not None and self.cron is not None:
            raise _field_error(
                "cron",
                "every and cron are alternatives: set one of them (every: null to schedule by cron only)",
            )
        if self.cron is not None and not _cron_ever_fires(self.cron, self.timezone):
            raise _field_error(
                "cron",
                f"{self.cron!r} never fires (no such date, e.g. February 31st): the pair would never run; "
                "check day of month, month and day of week",
            )
        return self


def _cron_ever_fires(expression: str, timezone: str | None) -> bool:
    from mailmirror.config.crontab import cron_trigger  # the scheduler's own reading of the expression

    return cron_trigger(expression, timezone).get_next_fire_time(None, datetime.now(UTC)) is not None


class RenameRule(_Section):
    """A regular-expression rename of destination folder names, applied after the other mapping rules."""

    pattern: Regex = Field(description="Python regular expression, searched in the folder name.")
    replacement: str = Field(description=r"Replacement, with \1 or \g<name> for groups (as Python's re.sub).")

    @model_validator(mode="after")
    def _groups_exist(self) -> RenameRule:
        try:
            re.compile(self.pattern).sub(self.replacement, "")
        except (re.error, IndexError) as error:
            raise _field_error("replacement", f"invalid replacement {self.replacement!r}: {error}") from None
        return self


class FolderRules(_Section):
    """Which folders to sync and what they are called on the destination. Selection comes before mapping."""

    include: list[FolderPattern] = Field(
        default=[],
        description=(
            "Sync only folders matching one of these (empty: every folder). Names are written with '/' between "
            "levels and without the server's prefix ('Archive/2024', never 'INBOX.Archive.2024'); INBOX is "
            "always 'INBOX'. Each entry is a glob matched against the whole name, case-sensitive: * and ? (and "
            "[abc]) stay within one level and ** crosses levels: 'Archive/*' is Archive's direct subfolders, "
            "'Archive/**' is Archive with all its subfolders, '**/Old' is Old at any depth; bracketed names such "
            "as '[Gmail]/All Mail' also match as written. Or a regular expression written 're:...', searched "
            "anywhere in the name. With from_under, this applies to the full source name."
        ),
    )
    exclude: list[FolderPattern] = Field(
        default=[],
        description=(
            "Skip folders matching one of these (same patterns as include: globs, e.g. 'Trash/**' for Trash "
            "with all its subfolders, or 're:...' regexes); wins over include."
        ),
    )
    map: dict[FolderName, FolderName] = Field(
        default={},
        description=(
            "Explicit source → destination folder names; wins over automap, rename and under. Keys are "
            "source names (with from_under, the full source name); the value is final."
        ),
    )
    automap: bool = Field(
        default=True,
        description=(
            "Map special folders (Sent, Drafts, Trash, Junk, Archive) by SPECIAL-USE attributes and "
            "well-known names, e.g. 'Sent Messages' → the destination's \\Sent folder."
        ),
    )
    subscribed_only: bool = Field(default=False, description="Sync only folders subscribed on the source.")
    skip_empty: bool = Field(default=False, description="Do not create destination folders for empty source folders.")
    under: FolderName | None = Field(
        default=None,
        description="Place the whole tree under this destination folder (e.g. Backup/old-server).",
    )
    from_under: FolderName | None = Field(
        default=None,
        description="Take only the tree below this source folder, without it (e.g. to restore Backup/old-server).",
    )
    rename: list[RenameRule] = Field(
        default=[],
        description=(
            "Regular-expression renames of folder names, applied in order (each to the result of the previous "
            "one), after from_under and before under; not to map or automap results."
        ),
    )
    separator: Annotated[str, Field(min_length=1, max_length=1)] | None = Field(
        default=None,
        description="Destination hierarchy separator, instead of the one the server announces.",
    )
    prefix: str | None = Field(
        default=None,
        description="Destination personal-namespace prefix (e.g. 'INBOX.'), instead of NAMESPACE's.",
    )
    subscribe: bool = Field(
        default=True,
        description="Subscribe destination folders that are subscribed on the source.",
    )


class MessageRules(_Section):
    """Which messages to copy, and how a message already on the destination is recognised."""

    max_age: Duration | None = Field(
        default=None, description="Copy only messages younger than this (by INTERNALDATE)."
    )
    min_age: Duration | None = Field(default=None, description="Copy only messages older than this.")
    max_size: Size | None = Field(
        default=None, le=IMAP_NUMBER_MAX, description="Copy only messages up to this size (at most 4GiB - 1 byte)."
    )
    min_size: Size | None = Field(
        default=None,
        le=IMAP_NUMBER_MAX,
        description="Copy only messages of at least this size (at most 4GiB - 1 byte).",
    )
    search: str | None = Field(
        default=None,
        min_length=1,
        description="IMAP SEARCH criteria a message must match, e.g. 'NOT DELETED SINCE 1-Jan-2020'.",
    )
    identity_headers: list[HeaderName] = Field(
        default=["Message-ID", "Date"],
        min_length=1,
        description=(
            "Headers whose values, with the size, identify a message already on the destination "
            "(a destination filled by another tool)."
        ),
    )
    skip_cross_folder_duplicates: bool = Field(
        default=False,
        description=(
            "Copy a message only once even if it is in several folders (Gmail labels): the first folder in "
            "duplicate_priority order keeps it, the others skip it."
        ),
    )
    duplicate_priority: list[FolderPattern] = Field(
        default_factory=lambda: ["INBOX"],
        description=(
            "With skip_cross_folder_duplicates: folders (patterns) whose copy wins, in order; the other "
            "folders follow alphabetically, and the All Mail folder (\\All) always comes last."
        ),
    )

    @model_validator(mode="after")
    def _ranges_not_empty(self) -> MessageRules:
        if self.min_age is not None and self.max_age is not None and self.min_age >= self.max_age:
            raise _field_error(
                "min_age",
                f"must be shorter than max_age ({format_duration(self.min_age)} >= "
                f"{format_duration(self.max_age)}): no message would be copied",
            )
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise _field_error(
                "min_size",
                f"must not exceed max_size ({self.min_size} > {self.max_size} bytes): no message would be copied",
            )
        return self


class FlagRules(_Section):
    """How flags and keywords follow messages (\\Seen, \\Flagged, $Label1, ...)."""

    sync: bool = Field(
        default=True,
        description="Copy flags with new messages and re-sync them on copied ones (source → destination).",
    )
    drop: list[Regex] = Field(
        default=[],
        description="Regular expressions of flags/keywords not to copy (e.g. '^\\$Junk$').",
    )
    rename: dict[Flag, Flag] = Field(
        default={},
        description="Source flag/keyword → destination flag/keyword.",
    )


class DeletionRules(_Section):
    """Deleting is opt-in. A guard refuses to delete more than max_share of a folder in one pass."""

    destination: Literal["keep", "mirror"] = Field(
        default="keep",
        description="mirror: expunge from the destination what was expunged from the source (imapsync --delete2).",
    )
    source: Literal["keep", "after_copy"] = Field(
        default="keep",
        description="after_copy: delete from the source once the copy is confirmed (move; imapsync --delete1).",
    )
    delete_missing_folders: bool = Field(
        default=False,
        description="Delete destination folders that no longer exist on the source (never INBOX).",
    )
    max_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Most a pass may delete of one folder, as a share (0.2 = 20%); more needs force.",
    )
    force: bool = Field(default=False, description="Delete even beyond max_share.")

    @model_validator(mode="after")
    def _not_mirroring_a_move(self) -> DeletionRules:
        if self.destination == "mirror" and self.source == "after_copy":
            raise _field_error(
                "destination",
                "mirror together with source: after_copy would delete from the destination every message "
                "moved off the source; choose one",
            )
        return self


class TransferRules(_Section):
    """How messages move: batches bounded by bytes, parallel connections, retries when the server throttles."""

    workers: int = Field(
        default=3,
        ge=1,
        le=32,
        description=(
            "Connections per side working in parallel on different folders (a large folder is split by UID "
            "ranges), at most each account's max_connections; 1 = one folder at a time."
        ),
    )
    batch_size: Size = Field(
        default=8 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        json_schema_extra={"default": "8MiB"},
        description=(
            "Most message bytes fetched in one UID FETCH and appended in one MULTIAPPEND (a larger message "
            "goes alone). Peak memory grows with it: see docs/architecture.md."
        ),
    )
    batch_messages: int = Field(default=100, ge=1, le=10000, description="Most messages in one batch.")
    memory: Size = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        json_schema_extra={"default": "64MiB"},
        description=(
            "Most message bytes a pass holds at once, over all its workers (batches fetched, waiting or being "
            "appended); a larger message waits for the others, then goes alone. Bounds peak memory."
        ),
    )
    prefetch: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Batches each worker fetches ahead while the current one is appended (0: take turns).",
    )
    split_above: int = Field(
        default=2000,
        ge=100,
        le=100_000_000,
        description="A folder with more messages to copy than this is split into UID ranges for several workers.",
    )
    retries: int = Field(
        default=5,
        ge=0,
        le=100,
        description=(
            "Times a folder's transfer is resumed after the server throttled ([THROTTLED], [UNAVAILABLE]) or "
            "the connection dropped, reconnecting after an exponential backoff; then the pass fails."
        ),
    )
    backoff: Annotated[Duration, at_most(timedelta(minutes=5))] = Field(
        default=timedelta(seconds=2),
        json_schema_extra={"default": "2s"},
        description="First wait before such a retry; doubled each time, at most 5 minutes.",
    )
    late_write_window: Duration = Field(
        default=timedelta(minutes=10),
        json_schema_extra={"default": "10m"},
        description=(
            "After a connection was lost with appends unconfirmed, how long the server might still execute them "
            "late (a stalled server runs what sat in its socket buffer). Messages copied again meanwhile are "
            "watched: each pass of the folder removes a late byte-identical copy of our own (needs UIDPLUS) "
            "and exits 75 until the window ends. 0s: no watch (a late write would go unnoticed)."
        ),
    )

    @field_validator("backoff")
    @classmethod
    def _positive_backoff(cls, value: Any) -> Any:
        if not value:
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("late_write_window")
    @classmethod
    def _bounded_window(cls, value: Any) -> Any:
        if isinstance(value, timedelta) and value > timedelta(days=7):
            raise ValueError("must be at most 7d (a server does not hold commands that long; 0s turns the watch off)")
        return value


_SCHEDULE_DESCRIPTION = "When the pair runs."
_FOLDERS_DESCRIPTION = "Folder selection and naming."
_MESSAGES_DESCRIPTION = "Message selection and identity."
_FLAGS_DESCRIPTION = "Flag and keyword handling."
_DELETIONS_DESCRIPTION = "Opt-in deletions, with a guard."
_TRANSFER_DESCRIPTION = "Batches, parallel connections, throttling retries."


class PairDefaults(_Section):
    """Settings inherited by every pair, key by key; what a pair sets wins (mappings merge, lists are replaced)."""

    schedule: Schedule = Field(default_factory=Schedule, description=_SCHEDULE_DESCRIPTION)
    folders: FolderRules = Field(default_factory=FolderRules, description=_FOLDERS_DESCRIPTION)
    messages: MessageRules = Field(default_factory=MessageRules, description=_MESSAGES_DESCRIPTION)
    flags: FlagRules = Field(default_factory=FlagRules, description=_FLAGS_DESCRIPTION)
    deletions: DeletionRules = Field(default_factory=DeletionRules, description=_DELETIONS_DESCRIPTION)
    transfer: TransferRules = Field(default_factory=TransferRules, description=_TRANSFER_DESCRIPTION)


class Pair(_Section):
    """One mirroring job: everything from the source account copied to the destination account."""

    source: str = Field(min_length=1, description="Name of the account copied from (under accounts).")
    destination: str = Field(min_length=1, description="Name of the account copied to (under accounts).")
    schedule: Schedule = Field(default_factory=Schedule, description=_SCHEDULE_DESCRIPTION)
    folders: FolderRules = Field(default_factory=FolderRules, description=_FOLDERS_DESCRIPTION)
    messages: MessageRules = Field(default_factory=MessageRules, description=_MESSAGES_DESCRIPTION)
    flags: FlagRules = Field(default_factory=FlagRules, description=_FLAGS_DESCRIPTION)
    deletions: DeletionRules = Field(default_factory=DeletionRules, description=_DELETIONS_DESCRIPTION)
    transfer: TransferRules = Field(default_factory=TransferRules, description=_TRANSFER_DESCRIPTION)


class PairSet(_Section):
    """Many pairs from one list of accounts: a CSV file (a header row, then one row per pair) or an imapsync
    sync_loop file, and templates of the accounts and the pair options. Every string of source, destination
    and the options may name a column as {column}. Each row becomes the pair <set>-<first column> (in a
    sync_loop file: <set>-<user1>) with the accounts <pair>.source and <pair>.destination: the engine, the
    daemon, shards and metrics see ordinary pairs. docs/fleet.md has the details."""

    csv: ConfigPath = Field(
        description=(
            "The list: a CSV file with a header row (column names: letters, digits and _), or with format: "
            "sync_loop, imapsync's host1;user1;password1;host2;user2;password2;extra lines. Lines starting "
            "with # and empty lines are skipped. Relative to the config file's directory. A list holding "
            "passwords (a {column: NAME} secret, or passwords in a sync_loop file) must be private to the user "
            "running mailmirror (owned by it, chmod 600), or it is refused."
        )
    )
    format: Literal["csv", "sync_loop"] = Field(
        default="csv",
        description=(
            "csv, or sync_loop (columns host1, user1, password1, host2, user2, password2, extra; source and "
            "destination default to {host1}/{user1} and {host2}/{user2} with the passwords of the line)."
        ),
    )
    source: dict[str, Any] = Field(
        default={},
        description=(
            "Template of each row's source account: the keys of an account (host, username, auth, authuser, "
            'password, ...) with {column} in strings, e.g. username: "{user}". A secret is a template too '
            '({file: "pw/{user}"}, {command: [pass, "mail/{user}"]}) or {column: NAME}: the password is the '
            "row's NAME column."
        ),
    )
    destination: dict[str, Any] = Field(
        default={}, description="Template of each row's destination account (as source)."
    )
    schedule: Schedule | None = Field(default=None, description=_SCHEDULE_DESCRIPTION + " For every row.")
    folders: FolderRules | None = Field(default=None, description=_FOLDERS_DESCRIPTION + " For every row.")
    messages: MessageRules | None = Field(default=None, description=_MESSAGES_DESCRIPTION + " For every row.")
    flags: FlagRules | None = Field(default=None, description=_FLAGS_DESCRIPTION + " For every row.")
    deletions: DeletionRules | None = Field(default=None, description=_DELETIONS_DESCRIPTION + " For every row.")
    transfer: TransferRules | None = Field(default=None, description=_TRANSFER_DESCRIPTION + " For every row.")


_PAIR_SET_COLUMNS_NOTE = ", ".join(ROW_OPTION_COLUMNS)


class Config(_Section):
    """mailmirror configuration: accounts, the pairs that mirror one account to another, and the service."""

    state: StateConfig = Field(default_factory=StateConfig, description="The state database.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics and health.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="`mailmirror run`: concurrency, backoff.")
    defaults: PairDefaults = Field(
        default_factory=PairDefaults,
        description="Inherited by every pair, key by key; a pair overrides what it sets.",
    )
    accounts: dict[Name, Account] = Field(
        min_length=1,
        json_schema_extra={"additionalProperties": False},
        description="IMAP accounts by name (letters, digits, '.', '_', '-'); names become metric labels.",
    )
    pairs: dict[Name, Pair] = Field(
        min_length=1,
        json_schema_extra={"additionalProperties": False},
        description=(
            "Pairs by name, as written (without defaults: use Config.pair(name) / effective_pairs() for the "
            "settings that apply). Optional when pair_sets gives pairs."
        ),
    )
    pair_sets: dict[Name, PairSet] = Field(
        default={},
        json_schema_extra={"additionalProperties": False},
        description=(
            "Pairs from lists of accounts (CSV or imapsync sync_loop files) by set name: each row becomes the "
            "pair <set>-<first column> (with defaults inherited like any pair). Columns named "
            f"{_PAIR_SET_COLUMNS_NOTE} set that option for their row (lists separated by '|'; empty: the "
            "template's value)."
        ),
    )

    _effective_pairs: dict[str, Pair] = PrivateAttr(default_factory=dict)
    _account_presets: list[AppliedPreset] = PrivateAttr(default_factory=list)
    _pair_presets: dict[str, list[AppliedPreset]] = PrivateAttr(default_factory=dict)
    _source_path: Path | None = PrivateAttr(default=None)
    _pair_set_counts: dict[str, int] = PrivateAttr(default_factory=dict)

    @property
    def pair_set_counts(self) -> dict[str, int]:
        """Pair set name -> how many pairs it gave."""
        return dict(self._pair_set_counts)

    @property
    def source_path(self) -> Path | None:
        """The file this config was read from (None when built in memory): named to other processes."""
        return self._source_path

    @model_validator(mode="wrap")
    @classmethod
    def _check_across_sections(
        cls, data: Any, handler: ModelWrapValidatorHandler[Config], info: ValidationInfo
    ) -> Config:
        """Check what no single section can: account references, and each pair once defaults are merged in.
        Pair sets are expanded first, into ordinary accounts and pairs."""
        context = info.context if isinstance(info.context, dict) else {}
        origins = context.get(PAIR_SET_ORIGINS)
        if not isinstance(origins, PairSetOrigins):
            origins = PairSetOrigins()
        data, template_issues = expand_pair_sets(data, context.get(CONFIG_DIR), origins)
        try:
            config = cls._validate_expanded(data, handler, template_issues, origins)
        except ValidationError:
            if origins.problems and context.get(PAIR_SET_ORIGINS) is not origins:
                raise InvalidConfig([list_problem(problem) for problem in origins.problems]) from None
            raise  # load_config reports the lists' problems with these
        if origins.problems:
            problems = sorted((list_problem(problem) for problem in origins.problems), key=_file_and_line)
            raise InvalidConfig(problems)
        config._pair_set_counts = dict(origins.counts)
        return config

    @classmethod
    def _validate_expanded(
        cls,
        data: Any,
        handler: ModelWrapValidatorHandler[Config],
        template_issues: list[TemplateIssue],
        origins: PairSetOrigins,
    ) -> Config:
        reference_errors = [_custom_error(issue.loc, issue.message, None) for issue in template_issues]
        reference_errors += _account_reference_errors(data)
        data, account_presets = apply_account_presets(data)
        try:
            config = handler(data)
        except ValidationError as error:
            raise _validation_error([*_copy_errors(error), *reference_errors]) from None
        if reference_errors:
            raise _validation_error(reference_errors)
        config._account_presets = account_presets
        config._apply_defaults()
        same_mailbox_errors = _same_mailbox_errors(config) + _shared_destination_errors(config, origins)
        if same_mailbox_errors:
            raise _validation_error(same_mailbox_errors)
        config._label_secrets()
        return config

    def _apply_defaults(self) -> None:
        effective: dict[str, Pair] = {}
        errors: list[InitErrorDetails] = []
        for name, pair in self.pairs.items():
            preset, self._pair_presets[name] = self._pair_preset_layer(name, pair)
            try:
                effective[name] = _inherit_defaults(self.defaults, pair, preset)
            except ValidationError as error:
                note = " (with values inherited from defaults" + (" and provider presets)" if preset else ")")
                errors += _copy_errors(error, prefix=("pairs", name), note=note)
        if errors:
            raise _validation_error(errors)
        self._effective_pairs = effective

    def _pair_preset_layer(self, name: str, pair: Pair) -> tuple[dict[str, Any], list[AppliedPreset]]:
        source, destination = self.accounts.get(pair.source), self.accounts.get(pair.destination)
        explicit = (self.defaults.model_dump(exclude_unset=True), pair.model_dump(exclude_unset=True))
        return pair_preset_layer(
            name,
            source.provider if source is not None else None,
            destination.provider if destination is not None else None,
            explicit,
        )

    def _label_secrets(self) -> None:
        for name, account in self.accounts.items():
            for field_name in ("password", "oauth2_token"):
                secret = getattr(account, field_name)
                if isinstance(secret, Secret):
                    secret.attach_label(f"accounts.{name}.{field_name}")
            if account.oauth2 is not None:
                account.oauth2.attach(name, self.state.path.parent / "oauth2" / f"{name}.json")

    def pair(self, name: str) -> Pair:
        """The pair called ``name`` with ``defaults`` merged in. Unknown name → :class:`UsageError` (exit 64)."""
        try:
            return self._effective_pairs[name]
        except KeyError:
            raise UsageError(f"unknown pair {name!r} (known: {_names(self.pairs)})") from None

    def effective_pairs(self) -> dict[str, Pair]:
        """Every pair, in file order, with ``defaults`` merged in."""
        return dict(self._effective_pairs)

    def presets_of(self, pair_name: str) -> list[AppliedPreset]:
        """The provider preset values behind the pair's settings and its two accounts' (see
        :mod:`mailmirror.config.providers`), including those the config overrode."""
        pair = self.pairs.get(pair_name)
        if pair is None:
            return []
        prefixes = tuple(f"accounts.{account}." for account in (pair.source, pair.destination))
        accounts = [row for row in self._account_presets if row.setting.startswith(prefixes)]
        return accounts + self._pair_presets.get(pair_name, [])


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none defined"


# --------------------------------------------------------------------------------------------------
# Cross-section checks and inheritance
# --------------------------------------------------------------------------------------------------


def _account_reference_errors(data: Any) -> list[InitErrorDetails]:
    """Pairs naming an unknown account, or the same account twice; read from the raw data so that they are
    reported together with every other error."""
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict):
        return []
    accounts = data.get("accounts")
    known = {str(name) for name in accounts} if isinstance(accounts, dict) else set()
    errors: list[InitErrorDetails] = []
    for pair_name, pair in data["pairs"].items():
        if isinstance(pair, dict):
            errors += _pair_reference_errors(pair_name, pair, known)
    return errors


def _pair_reference_errors(pair_name: Any, pair: dict[str, Any], known: set[str]) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    for role in ("source", "destination"):
        account = _as_name(pair.get(role))
        if account and account not in known:
            message = f"unknown account {account!r} (known: {_names(known)})"
            errors.append(_custom_error(("pairs", pair_name, role), message, account))
    source, destination = _as_name(pair.get("source")), _as_name(pair.get("destination"))
    if source and source == destination:
        message = f"same account as source ({source!r}): a pair copies from one account to another"
        errors.append(_custom_error(("pairs", pair_name, "destination"), message, destination))
    return errors


def _same_mailbox_errors(config: Config) -> list[InitErrorDetails]:
    """Pairs whose source and destination are one mailbox under two account names: each pass would copy
    the mailbox into itself (with folders.under, nesting one more level every time)."""
    errors: list[InitErrorDetails] = []
    for name, pair in config.pairs.items():
        source, destination = config.accounts[pair.source], config.accounts[pair.destination]
        if source.identity == destination.identity:
            message = (
                f"pair '{name}': source account '{pair.source}' and destination account '{pair.destination}' are "
                f"the same mailbox ({source.identity}): the pair would copy the mailbox into itself. Point the "
                "destination at another mailbox (or remove the pair)"
            )
            errors.append(_custom_error(("pairs", name, "destination"), message, pair.destination))
    return errors


def _shared_destination_errors(config: Config, origins: PairSetOrigins) -> list[InitErrorDetails]:
    """Two rows of pair sets writing into one destination mailbox (at the same place: rows that set
    different folders.under may consolidate two old accounts into one)."""
    first: dict[tuple[MailboxIdentity, str | None], str] = {}
    errors: list[InitErrorDetails] = []
    for name in origins.rows:
        pair = config._effective_pairs.get(name)
        if pair is None:
            continue
        under = pair.folders.under
        # one folder tree however written: "Old/" is "Old" (a trailing '/' is dropped by the mapping), and
        # folder names are compared without case, like user names: a server may not tell them apart
        key = (
            config.accounts[pair.destination].identity,
            None if under is None else (under.rstrip("/") or under).casefold(),
        )
        if key in first:
            other = first[key]
            message = (
                f"the same destination mailbox ({key[0]}) as pair '{other}' (line {origins.rows[other].line}): two "
                "pairs would write into one mailbox; fix the row, or give each row its own folders.under"
            )
            errors.append(_custom_error(("pairs", name, "destination"), message, None))
        else:
            first[key] = name
    return errors


def same_mailbox_accounts(config: Config) -> list[tuple[str, str, MailboxIdentity]]:
    """Pairs of account names (in file order) that are one mailbox: worth a warning, not an error."""
    first: dict[MailboxIdentity, str] = {}
    found: list[tuple[str, str, MailboxIdentity]] = []
    for name, account in config.accounts.items():
        identity = account.identity
        if identity in first:
            found.append((first[identity], name, identity))
        else:
            first[identity] = name
    return found


def _as_name(value: Any) -> str | None:
    """A name as the models will read it (numbers become strings), or None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _inherit_defaults(defaults: PairDefaults, pair: Pair, preset: dict[str, Any] | None = None) -> Pair:
    """The pair with every section merged over the defaults, and those over the accounts' provider presets:
    what the pair set explicitly wins, then what defaults set."""
    inherited = _deep_merge(preset or {}, defaults.model_dump(exclude_unset=True))
    own = pair.model_dump(exclude_unset=True)
    own_schedule = own.get("schedule", {})
    if "every" in own_schedule or "cron" in own_schedule:
        for alternative in ("every", "cron"):
            inherited.get("schedule", {}).pop(alternative, None)
    return Pair.model_validate(_deep_merge(inherited, own))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _custom_error(loc: tuple[Any, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("mailmirror", message), loc=loc, input=value)


def _copy_errors(error: ValidationError, prefix: tuple[Any, ...] = (), note: str = "") -> list[InitErrorDetails]:
    """The errors of ``error`` as raisable details (type, message and context kept as they are)."""
    copied: list[InitErrorDetails] = []
    for detail in error.errors(include_url=False):
        custom = PydanticCustomError(detail["type"], detail["msg"] + note, detail.get("ctx"))
        copied.append(InitErrorDetails(type=custom, loc=(*prefix, *detail["loc"]), input=detail["input"]))
    return copied


def _validation_error(errors: list[InitErrorDetails]) -> ValidationError:
    return ValidationError.from_exception_data(Config.__name__, errors)


# --------------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_RECORDED_LINES = 200_000  # bounds the walk of alias-heavy documents; beyond it, errors point at parents
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Location = tuple[Any, ...]


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


@dataclass
class _YamlDocument:
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


def _parse_yaml(text: str, shown: str) -> _YamlDocument:
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


def _compose_and_construct(loader: yaml.SafeLoader, shown: str) -> _YamlDocument:
    node = loader.get_single_node()
    if node is None:
        raise InvalidConfig([ConfigProblem(shown, None, "", "the file is empty (it needs accounts and pairs)")])
    recorder = _LineRecorder(loader)
    recorder.lines[()] = _line_of(node)
    recorder.walk(node, ())
    _raise_on_duplicates(recorder.duplicates, shown)
    return _YamlDocument(loader.construct_document(node), recorder.lines)


def _raise_on_duplicates(duplicates: list[tuple[Location, int, int]], shown: str) -> None:
    if duplicates:
        problems = [
            ConfigProblem(shown, line, _dotted(path), f"duplicate key (first defined at line {first})")
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


def _top_level_problem(data: Any, shown: str) -> ConfigProblem | None:
    if isinstance(data, dict):
        return None
    sections = ", ".join(Config.model_fields)
    return ConfigProblem(
        shown, 1, "", f"the top level must be a mapping of the sections {sections} (got {_kind_of(data)})"
    )


# --------------------------------------------------------------------------------------------------
# Turning pydantic errors into sentences
# --------------------------------------------------------------------------------------------------

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


def _problems_from(
    error: ValidationError, document: _YamlDocument, shown: str, origins: PairSetOrigins | None = None
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    listed: list[ConfigProblem] = [list_problem(problem) for problem in origins.problems] if origins else []
    for detail in error.errors(include_url=False):
        loc = _data_location(detail)
        if listed and loc in (("accounts",), ("pairs",)):
            continue  # empty because a pair set's list could not be read: its problem says why
        row = origins.row_of(loc) if origins is not None else None
        if row is not None:
            problem = _row_problem(row[0], row[1], _sentence(detail, loc), document, shown)
            if problem.file != shown:
                if problem not in listed:
                    listed.append(problem)
                continue
        else:
            problem = ConfigProblem(shown, document.line_for(loc), _dotted(loc), _sentence(detail, loc))
        if problem not in problems:
            problems.append(problem)
    # stable: same line, order found; the config file first, then its lists
    return sorted(problems, key=lambda problem: problem.line or 0) + sorted(listed, key=_file_and_line)


def _file_and_line(problem: ConfigProblem) -> tuple[str, int]:
    return problem.file, problem.line or 0


def _row_problem(origin: RowOrigin, path: Location, message: str, document: _YamlDocument, shown: str) -> ConfigProblem:
    """An error in a pair made from a row: at the row and its column when a column gave the value, else in
    the pair set's template (the same for every row)."""
    columns = origin.columns_at(path)
    field = ".".join(str(segment) for segment in path)
    if columns:
        return ConfigProblem(origin.file, origin.line, f"column {', '.join(columns)}", f"{message} (in {field})")
    loc = ("pair_sets", origin.set_name, *path)
    return ConfigProblem(shown, document.line_for(loc), _dotted(loc), message)


def _data_location(detail: Mapping[str, Any]) -> Location:
    loc = tuple(segment for segment in detail["loc"] if segment != _NOT_DATA)
    subpath = (detail.get("ctx") or {}).get(_SUBPATH)
    return (*loc, *subpath) if subpath else loc


def _sentence(detail: Mapping[str, Any], loc: Location) -> str:
    kind, ctx = detail["type"], detail.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key_sentence(loc)
    if kind == "literal_error":
        choices = ", ".join(re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", ""))))
        return f"must be one of {choices}{_got(detail, loc)}"
    if kind in _BOUND_WORDS:
        bound_key, words = _BOUND_WORDS[kind]
        return f"must be {words} {ctx.get(bound_key)}{_got(detail, loc)}"
    if kind in ("too_short", "string_too_short"):
        return _too_short_sentence(detail)
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} {'characters' if 'string' in kind else 'items'}"
    if kind in _TYPE_MESSAGES:
        suffix = "" if kind == "missing" else _got(detail, loc)
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


def _unknown_key_sentence(loc: Location) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def _got(detail: Mapping[str, Any], loc: Location) -> str:
    """`` (got 'ssl')`` for a short scalar input, never for anything inside a secret reference."""
    value = detail["input"]
    if isinstance(value, dict | list | tuple) or _inside_secret(loc):
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


def _dotted(loc: Location) -> str:
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


def _types_along(loc: Location) -> Iterator[Any]:
    """The declared type at each step of ``loc``, starting from :class:`Config`."""
    current: Any = Config
    yield current
    for segment in loc:
        current = _child_type(current, segment)
        if current is None:
            return
        yield current


def _model_at(loc: Location) -> type[BaseModel] | None:
    declared_types = list(_types_along(loc))
    if len(declared_types) != len(loc) + 1:
        return None
    model = _unwrap(declared_types[-1])
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inside_secret(loc: Location) -> bool:
    return any(_unwrap(declared) is Secret for declared in _types_along(loc))


def _child_type(declared: Any, segment: Any) -> Any:
    declared = _unwrap(declared)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        model_field = declared.model_fields.get(segment) if isinstance(segment, str) else None
        return model_field.annotation if model_field is not None else None
    origin = get_origin(declared)
    if origin is dict:
        return get_args(declared)[1]
    if origin in (list, tuple):
        return get_args(declared)[0]
    return None


def _unwrap(declared: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` → ``X``."""
    while True:
        origin = get_origin(declared)
        if origin is Annotated:
            declared = get_args(declared)[0]
        elif origin in (Union, types.UnionType):
            options = [option for option in get_args(declared) if option is not type(None)]
            if len(options) != 1:
                return declared
            declared = options[0]
        else:
            return declared


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the config file at ``path``.

    Relative paths inside the file are relative to its directory. Secrets are not read (see
    :meth:`Secret.reveal`). Raises :class:`InvalidConfig` (a ``ConfigError``, exit 78) listing every
    problem as ``<path as given>:<line>: <dotted.path>: <message>``, sorted by line.
    """
    shown = os.fspath(path)
    document = _parse_yaml(_read_text(shown), shown)
    top_level_problem = _top_level_problem(document.data, shown)
    if top_level_problem is not None:
        raise InvalidConfig([top_level_problem])
    config_dir = Path(shown).absolute().parent
    origins = PairSetOrigins()
    try:
        config = Config.model_validate(document.data, context={CONFIG_DIR: config_dir, PAIR_SET_ORIGINS: origins})
    except ValidationError as error:
        raise InvalidConfig(_problems_from(error, document, shown, origins)) from None
    config._source_path = Path(shown).absolute()
    for first, second, identity in same_mailbox_accounts(config):
        line = document.line_for(("accounts", second))
        log.warning(
            "%s:%s: accounts.%s: the same mailbox (%s) as account '%s'; mailmirror treats them as one mailbox "
            "(one writer at a time); use one account name for it",
            shown,
            line,
            second,
            identity,
            first,
        )
    return config


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


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file, for editors: every object closed
    (``additionalProperties: false``), every option with a title, description and default."""
    schema = Config.model_json_schema(mode="validation")
    # accounts and pairs may all come from pair_sets: one of pairs and pair_sets is required
    schema["required"] = [name for name in schema.get("required", []) if name not in ("accounts", "pairs")]
    schema["anyOf"] = [{"required": ["pairs"]}, {"required": ["pair_sets"]}]
    if not schema["required"]:
        del schema["required"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "mailmirror configuration",
    }
