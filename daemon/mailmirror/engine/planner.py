"""The sync planner: listings + state in, actions out. Pure: no socket, no database, no clock.

For one folder it decides, for every source message, exactly one of:

- adopt: an identical message (same fingerprint) is already on the destination and not yet claimed by
  another source message: record it, copy nothing (no duplicates after another tool's partial run or a
  lost state database);
- copy: append it to the destination;
- skip: a rule leaves it out (with the reason);
- fail: the destination cannot take it (e.g. above its APPENDLIMIT), with the reason;

and, for messages synced earlier, which flags to add and remove on the destination (a diff against the
flags last synced, so flags set by a user on the destination alone are left alone).

Beside it the executor's other pure decisions: which messages the rules select (shared with verify),
the batches of a copy run, which pending appends were found on the destination, and the folder order
of skip_cross_folder_duplicates.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailmirror.engine.folder_patterns import pattern_matches
from mailmirror.engine.identity import without_size
from mailmirror.engine.special_use import WELL_KNOWN_NAMES
from mailmirror.state.records import SyncedMessage

if TYPE_CHECKING:
    from mailmirror.engine.mapping import FolderMapping, Namespace
    from mailmirror.imap.types import Folder

RECENT = "\\Recent"
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})


@dataclass(frozen=True)
class SourceMessage:
    uid: int
    size: int
    flags: frozenset[str]
    internaldate: datetime
    fingerprint: str


@dataclass(frozen=True)
class DestinationMessage:
    uid: int
    fingerprint: str
    flags: frozenset[str]


@dataclass(frozen=True)
class Copy:
    message: SourceMessage
    flags: frozenset[str]  # what to set on the destination


@dataclass(frozen=True)
class Adopt:
    message: SourceMessage
    dst_uid: int
    flags: frozenset[str]  # the flags the destination message will have after the pass


@dataclass(frozen=True)
class FlagChange:
    src_uid: int
    dst_uid: int
    add: frozenset[str]
    remove: frozenset[str]
    flags: frozenset[str]  # the flags the destination message will have after the change


@dataclass(frozen=True)
class Skip:
    src_uid: int
    size: int
    reason: str
    #: the verdict can change later (min_age: the message gets old enough; search: its flags change)
    deferred: bool = False
    eligible_at: datetime | None = None  # min_age: when the message becomes old enough


@dataclass(frozen=True)
class Fail:
    src_uid: int
    size: int
    reason: str


@dataclass
class FolderPlan:
    adopt: list[Adopt] = field(default_factory=list)
    copy: list[Copy] = field(default_factory=list)
    flag_changes: list[FlagChange] = field(default_factory=list)
    skip: list[Skip] = field(default_factory=list)
    fail: list[Fail] = field(default_factory=list)
    dropped_keywords: frozenset[str] = frozenset()

    @property
    def copy_bytes(self) -> int:
        return sum(action.message.size for action in self.copy)


@dataclass(frozen=True)
class FlagRules:
    drop: tuple[re.Pattern[str], ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    sync_flags: bool = True
    append_limit: int | None = None
    max_size: int | None = None
    min_size: int | None = None
    #: PERMANENTFLAGS of the destination folder; None = unknown (accept everything)
    destination_permanent_flags: frozenset[str] | None = None
    now: datetime | None = None  # needed with max_age / min_age
    max_age: timedelta | None = None
    min_age: timedelta | None = None
    #: UIDs matching messages.search in this folder; None when the pair has no search rule
    search_matches: frozenset[int] | None = None
    #: fingerprints kept by folders that come first (messages.skip_cross_folder_duplicates)
    kept_elsewhere: frozenset[str] = frozenset()
    flag_rules: FlagRules = FlagRules()


def destination_flags(
    flags: Iterable[str], permanent: frozenset[str] | None, rules: FlagRules | None = None
) -> tuple[frozenset[str], set[str]]:
    """Flags to set on the destination: \\Recent never; the pair's drop and rename rules applied; keywords
    only where the destination keeps them (the second value: keywords dropped for that reason)."""
    kept: set[str] = set()
    dropped: set[str] = set()
    rules = rules or FlagRules()
    for original in flags:
        if original.lower() == RECENT.lower() or any(p.search(original) for p in rules.drop):
            continue
        flag = rules.rename.get(original, original)
        if permanent is None or flag in permanent or "\\*" in permanent or flag in SYSTEM_FLAGS:
            kept.add(flag)
        else:
            dropped.add(flag)
    return frozenset(kept), dropped


def _age_and_search_rules(message: SourceMessage, policy: Policy) -> Skip | None:
    if policy.search_matches is not None and message.uid not in policy.search_matches:
        return Skip(message.uid, message.size, "does not match messages.search", deferred=True)
    if policy.now is not None and policy.max_age is not None and message.internaldate < policy.now - policy.max_age:
        return Skip(message.uid, message.size, "older than messages.max_age")
    if policy.now is not None and policy.min_age is not None:
        eligible_at = message.internaldate + policy.min_age
        if eligible_at > policy.now:
            return Skip(message.uid, message.size, "younger than messages.min_age", True, eligible_at)
    if message.fingerprint in policy.kept_elsewhere:
        return Skip(message.uid, message.size, "already copied from another folder (skip_cross_folder_duplicates)")
    return None


def _size_rule(message: SourceMessage, policy: Policy) -> Skip | Fail | None:
    if policy.max_size is not None and message.size > policy.max_size:
        return Skip(message.uid, message.size, f"larger than messages.max_size ({policy.max_size} bytes)")
    if policy.min_size is not None and message.size < policy.min_size:
        return Skip(message.uid, message.size, f"smaller than messages.min_size ({policy.min_size} bytes)")
    if policy.append_limit is not None and message.size > policy.append_limit:
        return Fail(
            message.uid,
            message.size,
            f"{message.size} bytes is above the destination's APPENDLIMIT of {policy.append_limit} bytes",
        )
    return None


def rule_skip(message: SourceMessage, policy: Policy) -> Skip | None:
    """The message rule that leaves a source message out (messages.search, the ages, a copy kept from an
    earlier folder, the sizes), or None: the selection sync plans with and verify compares with."""
    verdict = _age_and_search_rules(message, policy) or _size_rule(message, policy)
    return verdict if isinstance(verdict, Skip) else None


def plan_folder(
    new_messages: Sequence[SourceMessage],
    current_flags: Mapping[int, frozenset[str]],
    synced: Mapping[int, SyncedMessage],
    destination: Sequence[DestinationMessage] | None,
    policy: Policy,
) -> FolderPlan:
    """Plan one folder.

    new_messages: source messages with no 'done' row in the state (their metadata was fetched).
    current_flags: every source message present now, UID → flags.
    synced: the state's UID map for this folder ('done' rows only).
    destination: destination messages to match new messages against by fingerprint (None: skip matching,
    e.g. when the folder was just created).
    """
    plan = FolderPlan()
    dropped: set[str] = set()
    if policy.sync_flags:
        plan.flag_changes = _flag_changes(current_flags, synced, policy, dropped)
    unclaimed = _unclaimed_destination(destination or (), synced)
    for message in sorted(new_messages, key=lambda m: m.uid):
        verdict = _age_and_search_rules(message, policy) or _size_rule(message, policy)
        if isinstance(verdict, Skip):
            plan.skip.append(verdict)
            continue
        if isinstance(verdict, Fail):
            plan.fail.append(verdict)
            continue
        wanted, lost = destination_flags(message.flags, policy.destination_permanent_flags, policy.flag_rules)
        dropped |= lost
        candidates = unclaimed.get(message.fingerprint)
        if candidates:
            existing = candidates.pop(0)
            has = frozenset(flag for flag in existing.flags if flag.lower() != RECENT.lower())
            flags = wanted if policy.sync_flags else has
            plan.adopt.append(Adopt(message, existing.uid, flags))
            if policy.sync_flags and flags != has:
                plan.flag_changes.append(FlagChange(message.uid, existing.uid, flags - has, has - flags, flags))
            continue
        plan.copy.append(Copy(message, wanted if policy.sync_flags else frozenset()))
    plan.dropped_keywords = frozenset(dropped)
    return plan


def _flag_changes(
    current_flags: Mapping[int, frozenset[str]],
    synced: Mapping[int, SyncedMessage],
    policy: Policy,
    dropped: set[str],
) -> list[FlagChange]:
    changes: list[FlagChange] = []
    for uid, entry in sorted(synced.items()):
        if entry.status != "done" or entry.dst_uid is None or uid not in current_flags:
            continue
        wanted, lost = destination_flags(current_flags[uid], policy.destination_permanent_flags, policy.flag_rules)
        dropped |= lost
        if wanted != entry.flags:
            changes.append(FlagChange(uid, entry.dst_uid, wanted - entry.flags, entry.flags - wanted, wanted))
    return changes


def _unclaimed_destination(
    destination: Iterable[DestinationMessage], synced: Mapping[int, SyncedMessage]
) -> dict[str, list[DestinationMessage]]:
    claimed = {entry.dst_uid for entry in synced.values() if entry.dst_uid is not None}
    unclaimed: dict[str, list[DestinationMessage]] = defaultdict(list)
    for message in sorted(destination, key=lambda m: m.uid):
        if message.uid not in claimed:
            unclaimed[message.fingerprint].append(message)
    return unclaimed


def group_flag_changes(
    changes: Iterable[FlagChange],
) -> dict[tuple[frozenset[str], frozenset[str]], list[int]]:
    """Destination UIDs grouped by (add, remove), so that one UID STORE serves many messages."""
    groups: dict[tuple[frozenset[str], frozenset[str]], list[int]] = defaultdict(list)
    for change in changes:
        groups[(change.add, change.remove)].append(change.dst_uid)
    return dict(groups)


@dataclass(frozen=True)
class Deletions:
    """Destination copies of messages expunged on the source (deletions.destination: mirror)."""

    src_uids: tuple[int, ...] = ()
    dst_uids: tuple[int, ...] = ()
    refused: str | None = None  # the guard's reason when it refuses


def plan_destination_deletions(
    vanished_src_uids: Iterable[int],
    synced: Mapping[int, SyncedMessage],
    destination_messages: int,
    *,
    max_share: float,
    force: bool,
) -> Deletions:
    """Which destination messages to delete, or why not: never more than max_share of the folder unless
    forced (a source folder emptied by accident must not empty the destination)."""
    src_uids = tuple(sorted(uid for uid in vanished_src_uids if uid in synced))
    dst_uids = tuple(uid for uid in (synced[src].dst_uid for src in src_uids) if uid is not None)
    if not dst_uids:
        return Deletions(src_uids=src_uids)
    limit = max_share * max(destination_messages, 1)
    if len(dst_uids) > limit and not force:
        share = len(dst_uids) / max(destination_messages, 1)
        return Deletions(
            src_uids,
            dst_uids,
            refused=(
                f"refusing to delete {len(dst_uids)} of {destination_messages} messages ({share:.0%}) on the "
                f"destination: more than deletions.max_share ({max_share:.0%}). If the source really lost them, "
                "set deletions.force: true for one pass (or run `mailmirror sync --force-deletions PAIR`)."
            ),
        )
    return Deletions(src_uids, dst_uids)


def batches(copies: Sequence[Copy], max_bytes: int, max_count: int) -> Iterator[list[Copy]]:
    """Copies in order, in batches of at most ``max_bytes`` (one larger message goes alone) and
    ``max_count`` messages: what one fetch and one append carry."""
    batch: list[Copy] = []
    size = 0
    for action in copies:
        if batch and (size + action.message.size > max_bytes or len(batch) >= max_count):
            yield batch
            batch, size = [], 0
        batch.append(action)
        size += action.message.size
    if batch:
        yield batch


def duplicate_priority_order(
    mappings: Sequence[FolderMapping],
    source_folders: Sequence[Folder],
    priority: Sequence[str],
    source_ns: Namespace,
) -> list[FolderMapping]:
    """skip_cross_folder_duplicates: the folders named in duplicate_priority first (in that order), then the
    others in the usual order, and the All Mail folder (\\All, else by its well-known name) last: its copy of a
    message loses."""
    all_mail = {folder.name for folder in source_folders if folder.special_use == "\\All"}
    if not all_mail:  # a server that does not announce \All (or a listing without SPECIAL-USE)
        known = {name.casefold() for name in WELL_KNOWN_NAMES["\\All"]}
        all_mail = {f.name for f in source_folders if source_ns.to_neutral(f.name).casefold() in known}

    def rank(mapping: FolderMapping) -> tuple[int, int]:
        if mapping.source in all_mail:
            return (2, 0)
        for index, pattern in enumerate(priority):
            if pattern_matches(pattern, source_ns.to_neutral(mapping.source)):
                return (0, index)
        return (1, 0)

    return sorted(mappings, key=rank)  # stable: ties keep INBOX-first, alphabetical order


def match_pending(
    pending: Sequence[SyncedMessage], candidates: Sequence[DestinationMessage], *, loose: bool = True
) -> tuple[list[SyncedMessage], list[SyncedMessage]]:
    """Pending appends found among destination messages: exact fingerprint first, then (loose) without the
    size, for servers that change a message when storing it. Never loose in move mode: a wrong match there
    would delete a source message that was not copied."""
    exact: dict[str, list[int]] = {}
    by_headers: dict[str, list[int]] = {}
    for candidate in sorted(candidates, key=lambda m: m.uid):
        exact.setdefault(candidate.fingerprint, []).append(candidate.uid)
        by_headers.setdefault(without_size(candidate.fingerprint), []).append(candidate.uid)
    taken: set[int] = set()

    def take(pool: dict[str, list[int]], key: str) -> int | None:
        uids = pool.get(key, [])
        while uids:
            uid = uids.pop(0)
            if uid not in taken:
                taken.add(uid)
                return uid
        return None

    found: list[SyncedMessage] = []
    remaining: list[SyncedMessage] = []
    for entry in pending:
        uid = take(exact, entry.fingerprint)
        if uid is None:
            remaining.append(entry)
        else:
            found.append(_done(entry, uid))
    missing: list[SyncedMessage] = []
    if not loose:
        return found, remaining
    for entry in remaining:
        uid = take(by_headers, without_size(entry.fingerprint))
        if uid is None:
            missing.append(entry)
        else:
            found.append(_done(entry, uid))
    return found, missing


def _done(entry: SyncedMessage, dst_uid: int) -> SyncedMessage:
    return SyncedMessage(entry.src_uid, dst_uid, "done", entry.fingerprint, entry.size, entry.flags)
