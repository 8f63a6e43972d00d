"""Folder mapping: which source folders a pair syncs, and what each is called on the destination.

Names are handled in three forms:

- the *server name* as each server lists it (Unicode; imapclient does the modified UTF-7 on the wire),
- the *neutral name*: the personal-namespace prefix removed and the hierarchy written with "/",
  e.g. "INBOX.Archive.2024" on a Cyrus-style server and "Archive/2024" on Dovecot are both
  "Archive/2024". INBOX is "INBOX" whatever case the server lists it in. Every rule in the config
  (include, exclude, map, rename, under, from_under) is written in neutral names.

Everything here is pure (no I/O): the caller lists both sides' folders (and, for ``subscribed_only``,
the source's subscriptions) and gives them with each side's namespace.

Order of decisions for each source folder
-----------------------------------------

1. ``from_under: F`` (restores): only folders strictly below F are synced, and "F/" is stripped from their
   name ("Backup/old/INBOX" -> "INBOX"). F itself is not synced. The stripped name is the *relative
   name* that the naming rules below work on; without from_under it is the neutral name.
2. Selection, on the source's neutral name (the full one, before from_under stripping): ``include``
   (empty: every folder), then ``exclude``, which wins. A pattern is either

   - a glob matched against the whole name (case-sensitive), as fnmatch but aware of levels: ``*``,
     ``?`` and ``[abc]`` / ``[!abc]`` stay within one level (never match "/"), ``**`` matches across
     levels. ``**`` as a whole level matches any number of levels, none included: "Archive/**" is
     Archive *and* every folder below it (a folder with all its subfolders), "**/Old" is Old at any
     depth, "a/**/b" is a/b, a/x/b, a/x/y/b… "Archive/*" is the direct children of Archive only,
     without Archive itself. A pattern with brackets also matches with the brackets read literally, so
     Gmail's "[Gmail]/All Mail" and "[Gmail]/**" work as written.
   - a regular expression written ``re:...``, searched (``re.search``) in the name.

3. ``subscribed_only``: only folders subscribed on the source (INBOX always).
4. Naming, the first rule that applies wins; its name is :attr:`FolderMapping.rule`:

   - ``map`` (rule "map"): the key is the source's neutral name (as for selection), the value the
     destination's neutral name, final: neither rename nor under is applied to it.
   - ``automap`` (rule "automap"), only when ``under`` is not set (a backup tree stays inside its
     folder): the folder's special use, from its RFC 6154 attribute (\\Sent, \\Trash, \\Junk, \\Drafts,
     \\Archive, \\All), else from a well-known name in several languages (:data:`special_use.WELL_KNOWN_NAMES`,
     compared case-insensitively with the whole relative name), goes to the destination folder with the
     same attribute, else to an existing destination folder with a well-known name for that use (the
     same name as the source's preferred, then the list order; a folder known only by its name prefers a
     destination folder of the same name to one with the attribute). Nothing found: the next rules apply.
     Folders with the attribute choose first, then those known by name (each in sync order), and automap
     never sends two source folders to one destination folder: a folder whose target already receives
     another source folder (by any rule) keeps the name the next rules give it, with a warning. The rule
     is "automap" only when automap changed the name, so a folder's rule does not change once the first
     pass has created its destination folder.
   - ``rename``: every rule, in order, ``re.sub(pattern, replacement, name)`` on the relative name
     (cumulatively); rule "rename" when the name changed. Empty levels a rename leaves ("a//b", "/b")
     are dropped; a rename that leaves nothing at all is a :class:`ConfigError`.
   - ``under: U`` (backups): "U/" + the name, INBOX included ("U/INBOX"); rule "under", or
     "rename+under" when a rename changed the name too.
   - otherwise rule "default": the relative name unchanged.

5. Translation to the destination's server name with its namespace (prefix + separator); a destination
   separator inside a level becomes "_" ("a.b" -> "a_b" on a "." server). Automap already yields a
   destination server name.
6. Merges: folders are taken INBOX first, then alphabetically (:func:`sync_order`). A destination name
   equal case-insensitively (Unicode case folding) to an existing destination folder becomes that
   folder's name (an exact match preferred). A source folder whose destination name equals,
   case-insensitively, the one of an earlier folder ("Sent" and "SENT"; or a.b and a_b onto a "."
   server; or an explicit map of two folders to one) goes to that earlier folder's destination, as
   imapsync merges them: its mapping keeps its rule and gets :attr:`FolderMapping.merged_into` = the
   earlier source folder's server name (shown in `plan` and the pass table).
7. Non-selectable source folders (\\Noselect, \\NonExistent) still get a mapping, with
   ``selectable=False``: the sync skips them (their children imply them on the destination).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from mailmirror.engine.folder_patterns import NEUTRAL_SEPARATOR, compiled, is_selected
from mailmirror.engine.special_use import WELL_KNOWN_NAMES, attribute_use, special_use_of, use_by_name
from mailmirror.errors import ConfigError
from mailmirror.imap.types import Folder

if TYPE_CHECKING:
    from mailmirror.config.pair_options import FolderRules

log = logging.getLogger(__name__)

INBOX = "INBOX"

# Rule names (FolderMapping.rule).
RULE_MAP = "map"
RULE_AUTOMAP = "automap"
RULE_RENAME = "rename"
RULE_UNDER = "under"
RULE_RENAME_UNDER = "rename+under"
RULE_DEFAULT = "default"


def is_inbox(name: str) -> bool:
    """INBOX is case-insensitive (ASCII only: "ınbox" with a dotless i is another folder)."""
    return name.isascii() and name.upper() == INBOX


@dataclass(frozen=True)
class Namespace:
    separator: str
    prefix: str

    def to_neutral(self, server_name: str) -> str:
        if is_inbox(server_name):
            return INBOX
        name = server_name
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix) :]
        if self.separator == NEUTRAL_SEPARATOR:
            return name
        return NEUTRAL_SEPARATOR.join(part.replace(NEUTRAL_SEPARATOR, "_") for part in name.split(self.separator))

    def to_server(self, neutral_name: str) -> str:
        if is_inbox(neutral_name):
            return INBOX
        parts = neutral_name.split(NEUTRAL_SEPARATOR)
        if self.separator != NEUTRAL_SEPARATOR:
            parts = [part.replace(self.separator, "_") for part in parts]
        return self.prefix + self.separator.join(parts)


@dataclass(frozen=True)
class FolderMapping:
    source: str  # server name on the source
    destination: str  # server name on the destination
    rule: str  # what decided the destination name: map | automap | rename | under | rename+under | default
    selectable: bool = True
    # Source server name of the earlier folder (in sync order) whose destination this one shares, when two
    # source folders land in one destination folder (case variants, automap, explicit map); None otherwise.
    merged_into: str | None = None


class RenameLike(Protocol):
    """What a rename rule needs (config's RenameRule has it)."""

    @property
    def pattern(self) -> str: ...

    @property
    def replacement(self) -> str: ...


# -- order ---------------------------------------------------------------------------------------------


def sync_order(names: Iterable[str]) -> list[str]:
    """INBOX first, then alphabetical (parents before their children)."""
    return sorted(names, key=lambda name: (not is_inbox(name), name))


def _case_key(name: str) -> str:
    """Names equal case-insensitively have the same key (Unicode case folding: per character, no context)."""
    return name.casefold()


# -- mapping -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Destination:
    """The destination's existing folders, as automap and the case merge need them."""

    by_use: dict[str, list[Folder]]
    by_well_known_use: dict[str, list[tuple[str, Folder]]]  # use -> (neutral name, folder)
    names: frozenset[str]
    by_case: dict[str, str]  # case key -> first existing name in sync order

    @classmethod
    def of(cls, folders: Sequence[Folder], ns: Namespace) -> _Destination:
        by_name = {folder.name: folder for folder in folders}
        by_use: dict[str, list[Folder]] = {}
        by_well_known_use: dict[str, list[tuple[str, Folder]]] = {}
        by_case: dict[str, str] = {}
        for name in sync_order(by_name):
            folder = by_name[name]
            by_case.setdefault(_case_key(name), name)
            if not folder.selectable:
                continue
            attribute = attribute_use(folder)
            if attribute is not None:
                by_use.setdefault(attribute, []).append(folder)
            neutral = ns.to_neutral(name)
            use = use_by_name(neutral)
            if use is not None and attribute in (None, use):
                by_well_known_use.setdefault(use, []).append((neutral, folder))
        return cls(by_use, by_well_known_use, frozenset(by_name), by_case)

    def automap_target(self, use: str, relative_name: str, ns: Namespace, *, by_attribute: bool = True) -> str | None:
        """The destination folder for a special use: the same name with that attribute, else the first
        folder with it, else a well-known name for it (the same name first). A source folder known only
        by its name goes to a destination folder of the same name before one with the attribute."""
        wanted = relative_name.casefold()
        with_attribute = self.by_use.get(use, [])
        for folder in with_attribute:
            if ns.to_neutral(folder.name).casefold() == wanted:
                return folder.name
        candidates = self.by_well_known_use.get(use, [])
        if not by_attribute:
            same = [folder for neutral, folder in candidates if neutral.casefold() == wanted]
            if same:
                return same[0].name
        if with_attribute:
            return with_attribute[0].name
        if not candidates:
            return None
        rank = {name.casefold(): position for position, name in enumerate(WELL_KNOWN_NAMES[use])}
        _neutral, folder = min(candidates, key=lambda c: (c[0].casefold() != wanted, rank[c[0].casefold()]))
        return folder.name


@dataclass(frozen=True)
class _Rules:
    include: Sequence[str]
    exclude: Sequence[str]
    explicit: Mapping[str, str]
    automap: bool
    subscribed: frozenset[str] | None
    under: str | None
    from_under: str | None
    rename: Sequence[tuple[re.Pattern[str], str]]


def _neutral_rule_name(name: str) -> str:
    """INBOX in any case is INBOX; a trailing "/" is dropped."""
    name = name.rstrip(NEUTRAL_SEPARATOR) or name
    return INBOX if is_inbox(name) else name


def map_folders(
    source_folders: Sequence[Folder],
    destination_folders: Sequence[Folder],
    source_ns: Namespace,
    destination_ns: Namespace,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    explicit: Mapping[str, str] | None = None,
    automap: bool = True,
    subscribed: Iterable[str] | None = None,
    under: str | None = None,
    from_under: str | None = None,
    rename: Sequence[RenameLike] = (),
    known: Mapping[str, str] | None = None,
) -> list[FolderMapping]:
    """The mapping of every source folder the rules select, INBOX first then alphabetical.

    ``subscribed``: the source's subscribed folders (server names); None syncs every folder, a set only
    those in it (and INBOX). ``known``: source server name -> the destination folder the state already
    syncs it into (see :func:`_keep_known`). The other arguments are the FolderRules fields of the same
    name (``explicit`` is ``map``); see the module docstring for the order in which they apply.
    """
    rules = _Rules(
        include=include,
        exclude=exclude,
        explicit={_neutral_rule_name(k): _neutral_rule_name(v) for k, v in (explicit or {}).items()},
        automap=automap,
        subscribed=None if subscribed is None else frozenset(subscribed),
        under=None if under is None else _neutral_rule_name(under),
        from_under=None if from_under is None else _neutral_rule_name(from_under),
        rename=[(compiled(rule.pattern), rule.replacement) for rule in rename],
    )
    destination = _Destination.of(destination_folders, destination_ns)
    by_name = {folder.name: folder for folder in source_folders}
    chosen: list[_Chosen] = []
    for name in sync_order(by_name):
        selected = _select_one(by_name[name], rules, source_ns, destination_ns)
        if selected is not None:
            chosen.append(selected)
    targets = _keep_known(chosen, _automap(chosen, rules, destination_ns, destination), known or {}, destination)
    mappings = []
    for one in chosen:
        target, rule = targets.get(one.folder.name, (one.name, one.rule))
        mappings.append(FolderMapping(one.folder.name, target, rule, one.folder.selectable))
    return _merge_case_variants(mappings, destination)


@dataclass(frozen=True)
class _Chosen:
    """A selected source folder, with the destination name and rule it gets without automap."""

    folder: Folder
    relative: str
    name: str  # destination server name by map / rename / under / default
    rule: str
    use: str | None  # the special use automap follows (None: automap does not apply)
    by_attribute: bool  # the use comes from an RFC 6154 attribute, not from a well-known name


def _select_one(folder: Folder, rules: _Rules, source_ns: Namespace, destination_ns: Namespace) -> _Chosen | None:
    neutral = source_ns.to_neutral(folder.name)
    relative = neutral
    if rules.from_under is not None:
        below = rules.from_under + NEUTRAL_SEPARATOR
        if not neutral.startswith(below) or neutral == below:
            return None
        relative = _neutral_rule_name(neutral[len(below) :])
    if not is_selected(neutral, rules.include, rules.exclude):
        return None
    if rules.subscribed is not None and neutral != INBOX and folder.name not in rules.subscribed:
        return None
    if neutral in rules.explicit:
        return _Chosen(folder, relative, destination_ns.to_server(rules.explicit[neutral]), RULE_MAP, None, False)
    name, rule = _destination_name(relative, rules, destination_ns)
    use = special_use_of(folder, relative) if rules.automap and rules.under is None and relative != INBOX else None
    return _Chosen(folder, relative, name, rule, use, use is not None and attribute_use(folder) == use)


def _automap(
    chosen: Sequence[_Chosen], rules: _Rules, destination_ns: Namespace, destination: _Destination
) -> dict[str, tuple[str, str]]:
    """Source server name -> (destination name, rule) of every folder automap applies to.

    Folders with a special-use attribute pick their destination folder first, then those known by name,
    each in sync order. Automap never pours two source folders into one: a folder whose automap target
    already receives another source folder (by a rule or by automap) keeps the name the other rules give
    it, with a warning. The rule is "automap" only where automap changed the name: a folder that keeps its
    name keeps its label on the next pass too, when the folder the first pass created is its target.
    """
    receiving = {_case_key(one.name): one.folder.name for one in chosen if one.use is None}
    targets: dict[str, tuple[str, str]] = {}
    for one in sorted((c for c in chosen if c.use is not None), key=lambda c: not c.by_attribute):
        assert one.use is not None
        target = destination.automap_target(one.use, one.relative, destination_ns, by_attribute=one.by_attribute)
        other = None if target is None else receiving.get(_case_key(target))
        if target is not None and _case_key(target) == _case_key(one.name):
            other = None  # its target is its own name: a merge there is the names' (and marked), not automap's
        if target is not None and other is not None and other != one.folder.name:
            log.warning(
                "automap: source folder '%s' (%s) is not merged into destination folder '%s', which already "
                "receives source folder '%s'; it keeps its own name '%s' (folders.map merges them if wanted)",
                one.folder.name,
                one.use,
                target,
                other,
                one.name,
            )
            target = None
        final = one.name if target is None else target
        receiving.setdefault(_case_key(final), one.folder.name)
        targets[one.folder.name] = (final, one.rule if final == one.name else RULE_AUTOMAP)
    return targets


def _keep_known(
    chosen: Sequence[_Chosen],
    targets: dict[str, tuple[str, str]],
    known: Mapping[str, str],
    destination: _Destination,
) -> dict[str, tuple[str, str]]:
    """Guessed names (automap, default) stick to the destination folder the state already syncs into.

    A guess can change between passes without any change on the source: automap follows the destination's
    special-use attributes, and the first pass (or a mail client) may create a folder the server marks
    (Dovecot marks a new "Sent" as \\Sent). Following the new guess would copy the whole folder again. So
    a folder whose mapping is a guess keeps the destination folder its state knows, as long as that
    folder exists and receives no other source folder; an explicit rule (map, rename, under) still wins.
    """
    kept = dict(targets)
    final = {one.folder.name: targets.get(one.folder.name, (one.name, one.rule)) for one in chosen}
    for one in chosen:
        target, rule = final[one.folder.name]
        previous = known.get(one.folder.name)
        if previous is None or previous == target or rule not in (RULE_AUTOMAP, RULE_DEFAULT):
            continue
        if previous not in destination.names:
            continue
        taken = {_case_key(other) for name, (other, _rule) in final.items() if name != one.folder.name}
        if _case_key(previous) in taken:
            continue  # another source folder goes there now: sticking would merge the two
        final[one.folder.name] = kept[one.folder.name] = (previous, one.rule if previous == one.name else RULE_AUTOMAP)
    return kept


def _destination_name(relative: str, rules: _Rules, destination_ns: Namespace) -> tuple[str, str]:
    """The destination server name by rename / under / default, and the rule that decided it."""
    name = relative
    for regex, replacement in rules.rename:
        name = regex.sub(replacement, name)
    if name != relative:
        levels = [level for level in name.split(NEUTRAL_SEPARATOR) if level]
        if not levels:
            raise ConfigError(
                f"folders.rename turns folder '{relative}' into '{name}', which is not a folder name: change "
                "the rename rules (or exclude the folder)."
            )
        name = _neutral_rule_name(NEUTRAL_SEPARATOR.join(levels))
    renamed = name != relative
    if rules.under is not None:
        name = rules.under + NEUTRAL_SEPARATOR + name
        rule = RULE_RENAME_UNDER if renamed else RULE_UNDER
    else:
        rule = RULE_RENAME if renamed else RULE_DEFAULT
    return destination_ns.to_server(name), rule


def _merge_case_variants(mappings: list[FolderMapping], destination: _Destination) -> list[FolderMapping]:
    claimed: dict[str, FolderMapping] = {}  # case key of a destination name -> the first mapping to it
    merged: list[FolderMapping] = []
    for mapping in mappings:
        key = _case_key(mapping.destination)
        first = claimed.get(key)
        if first is not None:
            mapping = replace(mapping, destination=first.destination, merged_into=first.source)
        else:
            existing = destination.by_case.get(key)
            if existing is not None and mapping.destination not in destination.names:
                mapping = replace(mapping, destination=existing)
            claimed[key] = mapping
        merged.append(mapping)
    return merged


def pair_mappings(
    rules: FolderRules,
    source_folders: Sequence[Folder],
    destination_folders: Sequence[Folder],
    source_ns: Namespace,
    destination_ns: Namespace,
    *,
    subscribed: Iterable[str] | None = None,
    known: Mapping[str, str] | None = None,
) -> list[FolderMapping]:
    """The folder mapping of a pair: :func:`map_folders` with the pair's FolderRules, from both sides'
    folder listings and namespaces (as their servers answer NAMESPACE: the rules' ``separator`` and
    ``prefix`` override the destination's here). ``subscribed`` (source server names) is needed, and only
    used, when ``rules.subscribed_only`` is set; ``known`` as in :func:`map_folders`."""
    if rules.subscribed_only and subscribed is None:
        raise ValueError("subscribed_only needs the source's subscribed folders")
    prefix = destination_ns.prefix if rules.prefix is None else rules.prefix
    return map_folders(
        source_folders,
        destination_folders,
        source_ns,
        Namespace(rules.separator or destination_ns.separator, prefix),
        include=rules.include,
        exclude=rules.exclude,
        explicit=rules.map,
        automap=rules.automap,
        subscribed=subscribed if rules.subscribed_only else None,
        under=rules.under,
        from_under=rules.from_under,
        rename=rules.rename,
        known=known,
    )
