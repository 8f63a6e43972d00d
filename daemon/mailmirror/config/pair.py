"""A pair of the config (one mirroring job: source account → destination account with its options), the
``defaults`` every pair inherits, and a pair set (many pairs from a list of accounts, :mod:`pairsets`).

Inheritance from ``defaults``
    Each pair inherits the ``defaults`` sections (schedule, folders, messages, flags, deletions) key by
    key; what the pair sets wins. Mappings (``folders.map``, ``flags.rename``) merge entry by entry,
    lists (``folders.include``, ``schedule.idle``, ...) are replaced whole. ``schedule.every`` and
    ``schedule.cron`` are alternatives: a pair that sets either one replaces both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from mailmirror.config.pair_options import (
    DeletionRules,
    FlagConfig,
    FolderRules,
    MessageRules,
    Schedule,
    TransferRules,
)
from mailmirror.config.section import Section
from mailmirror.config.units import ConfigPath

_SCHEDULE_DESCRIPTION = "When the pair runs."
_FOLDERS_DESCRIPTION = "Folder selection and naming."
_MESSAGES_DESCRIPTION = "Message selection and identity."
_FLAGS_DESCRIPTION = "Flag and keyword handling."
_DELETIONS_DESCRIPTION = "Opt-in deletions, with a guard."
_TRANSFER_DESCRIPTION = "Batches, parallel connections, throttling retries."


class PairDefaults(Section):
    """Settings inherited by every pair, key by key; what a pair sets wins (mappings merge, lists are replaced)."""

    schedule: Schedule = Field(default_factory=Schedule, description=_SCHEDULE_DESCRIPTION)
    folders: FolderRules = Field(default_factory=FolderRules, description=_FOLDERS_DESCRIPTION)
    messages: MessageRules = Field(default_factory=MessageRules, description=_MESSAGES_DESCRIPTION)
    flags: FlagConfig = Field(default_factory=FlagConfig, description=_FLAGS_DESCRIPTION)
    deletions: DeletionRules = Field(default_factory=DeletionRules, description=_DELETIONS_DESCRIPTION)
    transfer: TransferRules = Field(default_factory=TransferRules, description=_TRANSFER_DESCRIPTION)


class Pair(Section):
    """One mirroring job: everything from the source account copied to the destination account."""

    source: str = Field(min_length=1, description="Name of the account copied from (under accounts).")
    destination: str = Field(min_length=1, description="Name of the account copied to (under accounts).")
    schedule: Schedule = Field(default_factory=Schedule, description=_SCHEDULE_DESCRIPTION)
    folders: FolderRules = Field(default_factory=FolderRules, description=_FOLDERS_DESCRIPTION)
    messages: MessageRules = Field(default_factory=MessageRules, description=_MESSAGES_DESCRIPTION)
    flags: FlagConfig = Field(default_factory=FlagConfig, description=_FLAGS_DESCRIPTION)
    deletions: DeletionRules = Field(default_factory=DeletionRules, description=_DELETIONS_DESCRIPTION)
    transfer: TransferRules = Field(default_factory=TransferRules, description=_TRANSFER_DESCRIPTION)


class PairSet(Section):
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
    flags: FlagConfig | None = Field(default=None, description=_FLAGS_DESCRIPTION + " For every row.")
    deletions: DeletionRules | None = Field(default=None, description=_DELETIONS_DESCRIPTION + " For every row.")
    transfer: TransferRules | None = Field(default=None, description=_TRANSFER_DESCRIPTION + " For every row.")


SECTIONS = ("schedule", "folders", "messages", "flags", "deletions", "transfer")


class SectionCache:
    """Validated sections by content, for one config load: the pairs of a pair set mostly share their
    sections, and a frozen section validated once can serve every pair that spells it the same way."""

    def __init__(self, defaults: PairDefaults) -> None:
        self.defaults = defaults.model_dump(exclude_unset=True)
        self._sections: dict[tuple[str, str], Section] = {}

    def validated(self, merged: dict[str, Any]) -> Pair:
        # a section neither the pair nor defaults set is the default one: shared too, not one per pair
        merged = {**{name: {} for name in SECTIONS if name not in merged}, **merged}
        keys = {name: _content_key(merged[name]) for name in SECTIONS}
        known = {name: self._sections[(name, key)] for name, key in keys.items() if (name, key) in self._sections}
        # the sections not seen yet are validated here: errors name the pair's own fields, as without the cache
        pair = Pair.model_validate({**merged, **known})
        for name, key in keys.items():
            self._sections.setdefault((name, key), getattr(pair, name))
        return pair


def share_default_sections(pairs: Iterable[Pair]) -> None:
    """The sections a pair as written leaves unset hold their defaults: one shared (frozen) instance per
    section instead of one per pair, which a fleet of 10,000 pairs would hold 50,000 times. What was set
    stays the pair's own; ``model_fields_set`` is untouched, so dumps with ``exclude_unset`` are too."""
    shared: dict[str, Any] = {}
    for pair in pairs:
        for name in SECTIONS:
            if name not in pair.model_fields_set:
                pair.__dict__[name] = shared.setdefault(name, pair.__dict__[name])


def _content_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=lambda item: f"{type(item).__name__}:{item!r}")


def inherit_defaults(
    defaults: PairDefaults, pair: Pair, preset: dict[str, Any] | None = None, cache: SectionCache | None = None
) -> Pair:
    """The pair with every section merged over the defaults, and those over the accounts' provider presets:
    what the pair set explicitly wins, then what defaults set."""
    cache = cache or SectionCache(defaults)
    inherited = _deep_merge(preset or {}, cache.defaults)
    own = pair.model_dump(exclude_unset=True)
    own_schedule = own.get("schedule", {})
    if "every" in own_schedule or "cron" in own_schedule:
        for alternative in ("every", "cron"):
            inherited.get("schedule", {}).pop(alternative, None)
    return cache.validated(_deep_merge(inherited, own))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:  # dicts copied: the merge may be edited (schedule alternatives), its inputs are shared
            merged[key] = _deep_merge({}, value) if isinstance(value, dict) else value
    return merged
