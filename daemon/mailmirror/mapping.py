"""Folder mapping: which source folders a pair syncs, and what each is called on the destination.

Names are handled in three forms:

- the *server name* as each server lists it (Unicode; imapclient does the modified UTF-7 on the wire),
- the *neutral name*: the personal-namespace prefix removed and the hierarchy written with "/",
  e.g. "INBOX.Archive.2024" on a Cyrus-style server and "Archive/2024" on Dovecot are both
  "Archive/2024". Rules in the config (include, exclude, map) are written in neutral names.

Selection comes first, then mapping: a folder that include/exclude leaves out is not synced, whatever a
mapping rule says. Order of mapping: explicit `map` > special-use automap > the same name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailmirror.imap import Folder, Session

if TYPE_CHECKING:
    from mailmirror.config import FolderRules

NEUTRAL_SEPARATOR = "/"


@dataclass(frozen=True)
class Namespace:
    separator: str
    prefix: str

    def to_neutral(self, server_name: str) -> str:
        if server_name.upper() == "INBOX":
            return "INBOX"
        name = server_name
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix) :]
        if self.separator == NEUTRAL_SEPARATOR:
            return name
        return NEUTRAL_SEPARATOR.join(part.replace(NEUTRAL_SEPARATOR, "_") for part in name.split(self.separator))

    def to_server(self, neutral_name: str) -> str:
        if neutral_name.upper() == "INBOX":
            return "INBOX"
        parts = neutral_name.split(NEUTRAL_SEPARATOR)
        if self.separator != NEUTRAL_SEPARATOR:
            parts = [part.replace(self.separator, "_") for part in parts]
        return self.prefix + self.separator.join(parts)


@dataclass(frozen=True)
class FolderMapping:
    source: str  # server name on the source
    destination: str  # server name on the destination
    rule: str  # what decided the destination name: map | automap | default
    selectable: bool = True


def pattern_matches(pattern: str, neutral_name: str) -> bool:
    """Globs match the whole neutral name; ``re:`` patterns are regular expressions searched in it."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], neutral_name) is not None
    return fnmatch.fnmatchcase(neutral_name, pattern)


def is_selected(neutral_name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(pattern_matches(p, neutral_name) for p in include):
        return False
    return not any(pattern_matches(p, neutral_name) for p in exclude)


def sync_order(names: Iterable[str]) -> list[str]:
    """INBOX first, then alphabetical (parents before their children)."""
    return sorted(names, key=lambda name: (name.upper() != "INBOX", name))


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
) -> list[FolderMapping]:
    explicit = explicit or {}
    destination_by_use = {
        folder.special_use: folder.name for folder in destination_folders if folder.special_use is not None
    }
    by_name = {folder.name: folder for folder in source_folders}
    mappings: list[FolderMapping] = []
    for name in sync_order(by_name):
        folder = by_name[name]
        neutral = source_ns.to_neutral(name)
        if not is_selected(neutral, include, exclude):
            continue
        if neutral in explicit:
            mappings.append(FolderMapping(name, destination_ns.to_server(explicit[neutral]), "map", folder.selectable))
            continue
        use = folder.special_use
        if automap and use is not None and use in destination_by_use:
            mappings.append(FolderMapping(name, destination_by_use[use], "automap", folder.selectable))
            continue
        mappings.append(FolderMapping(name, destination_ns.to_server(neutral), "default", folder.selectable))
    return mappings


def pair_mappings(
    rules: FolderRules,
    source: Session,
    destination: Session,
    source_folders: Sequence[Folder] | None = None,
    destination_folders: Sequence[Folder] | None = None,
) -> list[FolderMapping]:
    """The folder mapping of a pair between two open sessions (namespaces from NAMESPACE or overrides)."""
    destination_ns = Namespace(
        rules.separator or destination.separator,
        destination.prefix if rules.prefix is None else rules.prefix,
    )
    return map_folders(
        source.list_folders() if source_folders is None else source_folders,
        destination.list_folders() if destination_folders is None else destination_folders,
        Namespace(source.separator, source.prefix),
        destination_ns,
        include=rules.include,
        exclude=rules.exclude,
        explicit=rules.map,
        automap=rules.automap,
    )
