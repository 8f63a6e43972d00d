"""The options of a pair, one model per section: schedule, folders, messages, flags, deletions, transfer.

A pair (:mod:`mailmirror.config.pair`) holds one of each, and so do ``defaults`` and a pair set's template.
The engine reads them as they are, except the flag options: :class:`FlagConfig` is the config's shape of
the flag rules the planner applies (``engine.planner.FlagRules``, with compiled patterns).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mailmirror.config.section import Section, field_error
from mailmirror.config.units import Duration, Size, at_most, format_duration
from mailmirror.config.values import CronExpression, Flag, FolderName, FolderPattern, HeaderName, Regex, TimeZoneName

IMAP_NUMBER_MAX = 2**32 - 1  # sizes in SEARCH LARGER/SMALLER are 32-bit numbers


class Schedule(Section):
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
        description=(
            "Delay each scheduled pass by a random time up to this long. Without it, a daemon with more pairs "
            "than daemon.max_parallel_passes already spreads `every` schedules: each pair's passes keep a fixed "
            "point of the interval drawn from its name."
        ),
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
            raise field_error(
                "cron",
                "every and cron are alternatives: set one of them (every: null to schedule by cron only)",
            )
        if self.cron is not None and not _cron_ever_fires(self.cron, self.timezone):
            raise field_error(
                "cron",
                f"{self.cron!r} never fires (no such date, e.g. February 31st): the pair would never run; "
                "check day of month, month and day of week",
            )
        return self


def _cron_ever_fires(expression: str, timezone: str | None) -> bool:
    from mailmirror.config.crontab import cron_trigger  # the scheduler's own reading of the expression

    return cron_trigger(expression, timezone).get_next_fire_time(None, datetime.now(UTC)) is not None


class RenameRule(Section):
    """A regular-expression rename of destination folder names, applied after the other mapping rules."""

    pattern: Regex = Field(description="Python regular expression, searched in the folder name.")
    replacement: str = Field(description=r"Replacement, with \1 or \g<name> for groups (as Python's re.sub).")

    @model_validator(mode="after")
    def _groups_exist(self) -> RenameRule:
        try:
            re.compile(self.pattern).sub(self.replacement, "")
        except (re.error, IndexError) as error:
            raise field_error("replacement", f"invalid replacement {self.replacement!r}: {error}") from None
        return self


class FolderRules(Section):
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


class MessageRules(Section):
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
            raise field_error(
                "min_age",
                f"must be shorter than max_age ({format_duration(self.min_age)} >= "
                f"{format_duration(self.max_age)}): no message would be copied",
            )
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise field_error(
                "min_size",
                f"must not exceed max_size ({self.min_size} > {self.max_size} bytes): no message would be copied",
            )
        return self


class FlagConfig(Section):
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


class DeletionRules(Section):
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
            raise field_error(
                "destination",
                "mirror together with source: after_copy would delete from the destination every message "
                "moved off the source; choose one",
            )
        return self


class TransferRules(Section):
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
