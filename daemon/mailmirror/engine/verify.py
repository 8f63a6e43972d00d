"""Deep comparison of source and destination: the cutover proof.

Both sides are only EXAMINEd and read with BODY.PEEK: verify changes nothing anywhere. Per mapped folder
it compares the multiset of messages by SHA-256 of their exact bytes, and for each message its flags
(minus \\Recent, and minus keywords the destination does not keep) and INTERNALDATE. It needs no state
database for its comparison: it is independent evidence, not a re-reading of our own records. It reads
the state database (read-only, when there is one) for one thing only: which destination folder a pass
syncs a source folder into, where the mapping is a guess that sticks to what the state knows
(mapping.map_folders, ``known``), so that verify compares the folders a pass fills.

Differences (any one makes `mailmirror verify` exit 65):
- missing: a source message not on the destination;
- duplicate: a source message more than once on the destination;
- flags / date: the message is there, with other flags or another INTERNALDATE;
- altered: the message is there, with other bytes: a source message and a destination message nothing
  else pairs, with the same identity headers (Message-ID and Date by default, 8-bit header bytes read as
  "X") — the destination server rewrote it when storing it (Cyrus munge8bit), it is not missing;
- folder missing: the mapped destination folder does not exist.
Messages on the destination that are not on the source ("extra") are listed, not counted as a
difference: a destination may legitimately hold more (mail delivered to it after the MX switch).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailmirror.engine.identity import loose_identity
from mailmirror.engine.mapping import FolderMapping
from mailmirror.engine.planner import FlagRules, destination_flags
from mailmirror.engine.sync import list_and_map
from mailmirror.errors import MailmirrorError
from mailmirror.imap.session import Session
from mailmirror.imap.types import FolderMissing, MessageDigest

if TYPE_CHECKING:
    from mailmirror.config.config_file import Config
    from mailmirror.config.pair import Pair

BATCH_BYTES = 8 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass
class FolderVerdict:
    source: str
    destination: str
    source_messages: int = 0
    destination_messages: int = 0
    missing: list[int] = field(default_factory=list)  # source UIDs
    duplicates: list[int] = field(default_factory=list)  # destination UIDs in excess
    flag_differences: list[tuple[int, int, str]] = field(default_factory=list)  # (src uid, dst uid, detail)
    date_differences: list[tuple[int, int, str]] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)  # destination UIDs not from the source
    altered: list[tuple[int, int]] = field(default_factory=list)  # (src uid, dst uid): same message, other bytes
    folder_missing: bool = False
    skipped_by_rule: int = 0

    @property
    def differences(self) -> int:
        return (
            len(self.missing)
            + len(self.duplicates)
            + len(self.flag_differences)
            + len(self.date_differences)
            + len(self.altered)
            + int(self.folder_missing)
        )


@dataclass
class PairVerdict:
    pair: str
    folders: list[FolderVerdict] = field(default_factory=list)
    error: MailmirrorError | None = None

    @property
    def differences(self) -> int:
        return sum(folder.differences for folder in self.folders)

    @property
    def clean(self) -> bool:
        return self.error is None and self.differences == 0


def _flag_text(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags)) or "(none)"


def compare_folder(
    verdict: FolderVerdict,
    source: Sequence[MessageDigest],
    destination: Sequence[MessageDigest],
    permanent_flags: frozenset[str] | None,
    *,
    compare_flags: bool = True,
    flag_rules: FlagRules | None = None,
) -> None:
    """Fill `verdict` from both sides' digests (pure; exposed for unit tests)."""
    by_hash_source: dict[str, list[MessageDigest]] = defaultdict(list)
    by_hash_destination: dict[str, list[MessageDigest]] = defaultdict(list)
    for message in source:
        by_hash_source[message.sha256].append(message)
    for message in destination:
        by_hash_destination[message.sha256].append(message)
    missing: list[MessageDigest] = []
    for digest, originals in by_hash_source.items():
        copies = by_hash_destination.get(digest, [])
        originals = sorted(originals, key=_order)
        copies = sorted(copies, key=_order)
        missing += originals[len(copies) :]
        verdict.duplicates.extend(m.uid for m in copies[len(originals) :])
        for original, copy in zip(originals, copies, strict=False):
            _compare_message(verdict, original, copy, permanent_flags, compare_flags, flag_rules)
    extra: list[MessageDigest] = []
    for digest, copies in by_hash_destination.items():
        if digest not in by_hash_source:
            extra += copies
    _pair_altered(verdict, missing, extra)
    verdict.missing.sort()


def _pair_altered(verdict: FolderVerdict, missing: list[MessageDigest], extra: list[MessageDigest]) -> None:
    """A missing source message and an extra destination message with the same identity are one message
    the destination stored with other bytes: altered, neither missing nor extra."""
    unpaired: dict[str, list[MessageDigest]] = defaultdict(list)
    for copy in sorted(extra, key=lambda m: m.uid):
        if copy.identity is not None:
            unpaired[copy.identity].append(copy)
    paired: set[int] = set()
    for original in sorted(missing, key=lambda m: m.uid):
        candidates = unpaired.get(original.identity or "")
        if original.identity is not None and candidates:
            copy = candidates.pop(0)
            verdict.altered.append((original.uid, copy.uid))
            paired.add(copy.uid)
        else:
            verdict.missing.append(original.uid)
    verdict.extra.extend(m.uid for m in extra if m.uid not in paired)


def _order(message: MessageDigest) -> tuple[datetime, str]:
    return message.internaldate, _flag_text(message.flags)


def _compare_message(
    verdict: FolderVerdict,
    original: MessageDigest,
    copy: MessageDigest,
    permanent_flags: frozenset[str] | None,
    compare_flags: bool,
    flag_rules: FlagRules | None,
) -> None:
    if compare_flags:
        expected, _dropped = destination_flags(original.flags, permanent_flags, flag_rules)
        actual, _ = destination_flags(copy.flags, None)
        if expected != actual:
            verdict.flag_differences.append(
                (original.uid, copy.uid, f"source {_flag_text(expected)} / destination {_flag_text(actual)}")
            )
    if original.internaldate != copy.internaldate:
        verdict.date_differences.append(
            (original.uid, copy.uid, f"source {original.internaldate} / destination {copy.internaldate}")
        )


class _Expectations:
    """Which source messages a pass is meant to copy: the pair's message rules, as the sync applies them."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.rules = pair.messages
        self.now = datetime.now(UTC)
        self.kept: set[str] = set()  # skip_cross_folder_duplicates: digests of folders verified before

    def identity(self, raw: bytes) -> str:
        return loose_identity(raw, self.rules.identity_headers)

    def select(self, session: Session, digests: list[MessageDigest], sizes: dict[int, int]) -> list[MessageDigest]:
        rules = self.rules
        matches = frozenset(session.search(rules.search)) if rules.search is not None else None
        chosen = []
        for message in digests:
            size = sizes.get(message.uid, 0)
            if (
                (rules.max_size is not None and size > rules.max_size)
                or (rules.min_size is not None and size < rules.min_size)
                or (rules.max_age is not None and message.internaldate < self.now - rules.max_age)
                or (rules.min_age is not None and message.internaldate > self.now - rules.min_age)
                or (matches is not None and message.uid not in matches)
                or (rules.skip_cross_folder_duplicates and message.sha256 in self.kept)
            ):
                continue
            chosen.append(message)
        if rules.skip_cross_folder_duplicates:
            self.kept |= {message.sha256 for message in chosen}
        return chosen


def _source_digests(session: Session, folder: str, expectations: _Expectations) -> tuple[list[MessageDigest], int]:
    status = session.select(folder, readonly=True)
    if status.messages == 0:
        return [], 0
    sizes = session.fetch_sizes()
    everything = list(session.fetch_digests(sorted(sizes), sizes, BATCH_BYTES, expectations.identity))
    chosen = expectations.select(session, everything, sizes)
    return chosen, len(everything) - len(chosen)


def verify_pair(name: str, pair: Pair, config: Config) -> PairVerdict:
    verdict = PairVerdict(name)
    try:
        with (
            Session.open(pair.source, config.accounts[pair.source]) as source,
            Session.open(pair.destination, config.accounts[pair.destination]) as destination,
        ):
            expectations = _Expectations(pair)
            known = known_destination_folders(config.state.path, name)
            for group in _grouped_by_destination(_mappings(pair, source, destination, known)):
                verdict.folders.append(_verify_folder(pair, group, source, destination, expectations))
    except MailmirrorError as error:
        verdict.error = error
    return verdict


def _mappings(pair: Pair, source: Session, destination: Session, known: dict[str, str]) -> list[FolderMapping]:
    """The mapping a pass uses (the same listing, rules and known folders: sync.list_and_map), selectable
    folders only."""
    _source_view, _destination_view, mappings = list_and_map(pair, source, destination, known)
    return [mapping for mapping in mappings if mapping.selectable]


def known_destination_folders(path: Path, pair: str) -> dict[str, str]:
    """Source folder -> destination folder of a pair in the state database, read-only (verify writes
    nothing, and creates no database); empty without a readable one."""
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT src_folder, dst_folder FROM folders WHERE pair = ?", [pair]).fetchall()
        finally:
            db.close()
    except sqlite3.Error as error:
        log.warning(
            "pair '%s': state database %s not readable (%s): folders are mapped by the rules alone", pair, path, error
        )
        return {}
    return {str(source): str(destination) for source, destination in rows}


def _grouped_by_destination(mappings: list[FolderMapping]) -> list[list[FolderMapping]]:
    """Source folders merged into one destination folder (case variants) are compared together."""
    groups: dict[str, list[FolderMapping]] = {}
    for mapping in mappings:
        groups.setdefault(mapping.destination, []).append(mapping)
    return list(groups.values())


def _verify_folder(
    pair: Pair, group: list[FolderMapping], source: Session, destination: Session, expectations: _Expectations
) -> FolderVerdict:
    verdict = FolderVerdict(" + ".join(m.source for m in group), group[0].destination)
    source_digests: list[MessageDigest] = []
    for mapping in group:
        digests, skipped = _source_digests(source, mapping.source, expectations)
        source_digests += digests
        verdict.skipped_by_rule += skipped
    verdict.source_messages = len(source_digests)
    try:
        destination_status = destination.select(verdict.destination, readonly=True)
    except FolderMissing:
        verdict.folder_missing = bool(source_digests) or not pair.folders.skip_empty
        verdict.missing = [m.uid for m in source_digests]
        return verdict
    destination_digests: list[MessageDigest] = []
    if destination_status.messages:
        sizes = destination.fetch_sizes()
        destination_digests = list(destination.fetch_digests(sorted(sizes), sizes, BATCH_BYTES, expectations.identity))
    verdict.destination_messages = len(destination_digests)
    compare_folder(
        verdict,
        source_digests,
        destination_digests,
        destination_status.permanent_flags,
        compare_flags=pair.flags.sync,
        flag_rules=FlagRules(tuple(re.compile(p) for p in pair.flags.drop), dict(pair.flags.rename)),
    )
    return verdict
