"""Folder mapping is pure: which source folders a pair syncs and what each is called on the destination."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmirror.config.pair_options import FolderRules, RenameRule
from mailmirror.engine.folder_patterns import NEUTRAL_SEPARATOR, is_selected, pattern_matches
from mailmirror.engine.mapping import (
    FolderMapping,
    Namespace,
    map_folders,
    pair_mappings,
    sync_order,
)
from mailmirror.engine.special_use import WELL_KNOWN_NAMES, special_use_of
from mailmirror.errors import ConfigError
from mailmirror.imap.types import Folder

DOVECOT = Namespace("/", "")
CYRUS = Namespace(".", "INBOX.")

FolderSpec = str | tuple[str, ...]  # a name, or (name, *attributes)


def folders(specs: Sequence[FolderSpec], ns: Namespace = DOVECOT) -> list[Folder]:
    return [
        Folder(spec, ns.separator, frozenset())
        if isinstance(spec, str)
        else Folder(spec[0], ns.separator, frozenset(spec[1:]))
        for spec in specs
    ]


@dataclass(frozen=True)
class Case:
    id: str
    source: list[FolderSpec]
    expected: list[tuple[str, str, str]]  # (source, destination, rule), in sync order
    destination: list[FolderSpec] = field(default_factory=list)
    rules: dict[str, Any] = field(default_factory=dict)  # FolderRules, as written in the config
    source_ns: Namespace = DOVECOT
    destination_ns: Namespace = DOVECOT
    subscribed: set[str] | None = None
    merged: dict[str, str] = field(default_factory=dict)  # source -> merged_into


GMAIL = [
    "INBOX",
    ("[Gmail]", "\\Noselect", "\\HasChildren"),
    ("[Gmail]/All Mail", "\\All"),
    ("[Gmail]/Drafts", "\\Drafts"),
    ("[Gmail]/Important", "\\Important"),
    ("[Gmail]/Sent Mail", "\\Sent"),
    ("[Gmail]/Spam", "\\Junk"),
    ("[Gmail]/Starred", "\\Flagged"),
    ("[Gmail]/Trash", "\\Trash"),
]
DOVECOT_SPECIAL = ["INBOX", ("Drafts", "\\Drafts"), ("Junk", "\\Junk"), ("Sent", "\\Sent"), ("Trash", "\\Trash")]

CASES = [
    # -- names and namespaces --------------------------------------------------------------------------
    Case(
        "default keeps names",
        ["INBOX", "Archive", "Archive/2024", "Work"],
        [
            ("INBOX", "INBOX", "default"),
            ("Archive", "Archive", "default"),
            ("Archive/2024", "Archive/2024", "default"),
            ("Work", "Work", "default"),
        ],
    ),
    Case(
        "dovecot to cyrus",
        ["INBOX", "Archive", "Archive/2024", "Sent Items"],
        [
            ("INBOX", "INBOX", "default"),
            ("Archive", "INBOX.Archive", "default"),
            ("Archive/2024", "INBOX.Archive.2024", "default"),
            ("Sent Items", "INBOX.Sent Items", "default"),
        ],
        destination_ns=CYRUS,
    ),
    Case(
        "cyrus to dovecot",
        ["INBOX", "INBOX.Archive", "INBOX.Archive.2024", "INBOX.a/b"],
        [
            ("INBOX", "INBOX", "default"),
            ("INBOX.Archive", "Archive", "default"),
            ("INBOX.Archive.2024", "Archive/2024", "default"),
            ("INBOX.a/b", "a_b", "default"),  # "/" inside a Cyrus level
        ],
        source_ns=CYRUS,
    ),
    Case(
        "cyrus to cyrus",
        ["INBOX", "INBOX.Lists", "INBOX.Lists.python"],
        [
            ("INBOX", "INBOX", "default"),
            ("INBOX.Lists", "INBOX.Lists", "default"),
            ("INBOX.Lists.python", "INBOX.Lists.python", "default"),
        ],
        source_ns=CYRUS,
        destination_ns=CYRUS,
    ),
    Case(
        "destination separator inside a level",
        ["a.b/c", "v1.2"],
        [("a.b/c", "INBOX.a_b.c", "default"), ("v1.2", "INBOX.v1_2", "default")],
        destination_ns=CYRUS,
    ),
    Case(
        "child of INBOX dovecot to cyrus",
        ["INBOX", "INBOX/Receipts"],
        [("INBOX", "INBOX", "default"), ("INBOX/Receipts", "INBOX.INBOX.Receipts", "default")],
        destination_ns=CYRUS,
    ),
    Case(
        "non-ascii names",
        ["Reçus/Été", "日本語/メール", "Ελληνικά", "Отчёты"],
        [
            ("Reçus/Été", "INBOX.Reçus.Été", "default"),
            ("Ελληνικά", "INBOX.Ελληνικά", "default"),
            ("Отчёты", "INBOX.Отчёты", "default"),
            ("日本語/メール", "INBOX.日本語.メール", "default"),
        ],
        destination_ns=CYRUS,
    ),
    Case(
        "inbox in any case is INBOX",
        ["Inbox", "Work"],
        [("Inbox", "INBOX", "default"), ("Work", "Work", "default")],
        rules={"include": ["INBOX", "Work"]},
    ),
    Case(
        "non-selectable folders are mapped, not selectable",
        [("Lists", "\\Noselect"), "Lists/a", ("Gone", "\\NonExistent")],
        [("Gone", "Gone", "default"), ("Lists", "Lists", "default"), ("Lists/a", "Lists/a", "default")],
    ),
    # -- selection ---------------------------------------------------------------------------------------
    Case(
        "include star is direct children only",
        ["INBOX", "Archive", "Archive/2024", "Archive/2024/Q1", "Other"],
        [("Archive/2024", "Archive/2024", "default")],
        rules={"include": ["Archive/*"]},
    ),
    Case(
        "include double star is the folder and all below",
        ["INBOX", "Archive", "Archive/2024", "Archive/2024/Q1", "Archived", "Other"],
        [
            ("Archive", "Archive", "default"),
            ("Archive/2024", "Archive/2024", "default"),
            ("Archive/2024/Q1", "Archive/2024/Q1", "default"),
        ],
        rules={"include": ["Archive/**"]},
    ),
    Case(
        "leading double star is any depth",
        ["Old", "Older", "a/Old", "a/b/Old", "a/Old/x"],
        [("Old", "Old", "default"), ("a/Old", "a/Old", "default"), ("a/b/Old", "a/b/Old", "default")],
        rules={"include": ["**/Old"]},
    ),
    Case(
        "question mark and classes stay within a level",
        ["A/b", "Axb", "Ayb", "Azb"],
        [("Axb", "Axb", "default"), ("Ayb", "Ayb", "default")],
        rules={"include": ["A?b"], "exclude": ["A[!xy]b"]},
    ),
    Case(
        "exclude wins over include",
        ["INBOX", "Archive", "Archive/2023", "Archive/2024", "Archive/2024/Q1"],
        [("Archive", "Archive", "default"), ("Archive/2023", "Archive/2023", "default")],
        rules={"include": ["Archive/**"], "exclude": ["Archive/2024/**"]},
    ),
    Case(
        "exclude a folder with all its subfolders",
        ["INBOX", "Trash", "Trash/old", "Trash2"],
        [("INBOX", "INBOX", "default"), ("Trash2", "Trash2", "default")],
        rules={"exclude": ["Trash/**"], "automap": False},
    ),
    Case(
        "regex include is searched",
        ["INBOX", "Sent", "Sent/2020", "Work"],
        [("INBOX", "INBOX", "default"), ("Sent", "Sent", "default")],
        rules={"include": ["re:^(INBOX|Sent)$"]},
    ),
    Case(
        "regex exclude anywhere in the name",
        ["INBOX", "Lists/spam-reports", "Lists/python", "Spam"],
        [("INBOX", "INBOX", "default"), ("Lists/python", "Lists/python", "default")],
        rules={"exclude": ["re:(?i)spam"]},
    ),
    Case(
        "globs are case-sensitive",
        ["archive", "Archive"],
        [("Archive", "Archive", "default")],
        rules={"include": ["Archive"], "automap": False},
    ),
    Case(
        "selection uses neutral names on a cyrus source",
        ["INBOX", "INBOX.Archive", "INBOX.Archive.2024", "INBOX.Work"],
        [("INBOX.Archive", "Archive", "default"), ("INBOX.Archive.2024", "Archive/2024", "default")],
        source_ns=CYRUS,
        rules={"include": ["Archive/**"]},
    ),
    Case(
        "subscribed only",
        ["INBOX", "A", "B", "C"],
        [("INBOX", "INBOX", "default"), ("B", "B", "default")],
        rules={"subscribed_only": True},
        subscribed={"B", "Z"},
    ),
    Case(
        "subscribed only with cyrus server names",
        ["INBOX", "INBOX.A", "INBOX.B"],
        [("INBOX", "INBOX", "default"), ("INBOX.A", "A", "default")],
        source_ns=CYRUS,
        rules={"subscribed_only": True},
        subscribed={"INBOX.A"},
    ),
    # -- map and automap -------------------------------------------------------------------------------
    Case(
        "explicit map, then automap by attribute",
        ["INBOX", ("Sent Messages", "\\Sent"), "Junk", ("Old", "\\HasChildren")],
        [("INBOX", "INBOX", "default"), ("Old", "Archive/Old", "map"), ("Sent Messages", "Sent", "automap")],
        destination=["INBOX", ("Sent", "\\Sent")],
        rules={"exclude": ["Junk"], "map": {"Old": "Archive/Old"}},
    ),
    Case(
        "map wins over automap",
        [("Sent Items", "\\Sent")],
        [("Sent Items", "Old Sent", "map")],
        destination=[("Sent", "\\Sent")],
        rules={"map": {"Sent Items": "Old Sent"}},
    ),
    Case(
        "map wins over rename and under, and is final",
        ["INBOX", "Work"],
        [("INBOX", "Backup/INBOX", "under"), ("Work", "Projects/Work", "map")],
        rules={"map": {"Work": "Projects/Work"}, "rename": [{"pattern": "o", "replacement": "0"}], "under": "Backup"},
    ),
    Case(
        "map translated to cyrus",
        ["Old"],
        [("Old", "INBOX.Archive.Old", "map")],
        destination_ns=CYRUS,
        rules={"map": {"Old": "Archive/Old"}},
    ),
    Case(
        "automap by well-known name to the destination attribute",
        ["Gesendete Objekte", "Gelöschte Elemente", "Entwürfe", "Junk-E-Mail"],
        [
            ("Entwürfe", "Drafts", "automap"),
            ("Gelöschte Elemente", "Trash", "automap"),
            ("Gesendete Objekte", "Sent", "automap"),
            ("Junk-E-Mail", "Junk", "automap"),
        ],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "automap by attribute to a well-known destination name",
        [("Sent Messages", "\\Sent"), ("Deleted Messages", "\\Trash")],
        [("Deleted Messages", "Deleted Items", "automap"), ("Sent Messages", "Sent Items", "automap")],
        destination=["INBOX", "Sent Items", "Deleted Items", "Notes"],
    ),
    Case(
        "automap prefers the same name, then the list order",
        ["Deleted Items", "Papierkorb"],
        [("Deleted Items", "Deleted Items", "default"), ("Papierkorb", "Trash", "automap")],
        destination=["Deleted Items", "Trash", "Bin"],
        merged={},
    ),
    Case(
        "automap falls through when the destination has no such folder",
        [("Sent Messages", "\\Sent"), "Spam"],
        [("Sent Messages", "Sent Messages", "default"), ("Spam", "Spam", "default")],
        destination=["INBOX", "Work"],
    ),
    Case(
        "automap off",
        [("Sent Messages", "\\Sent")],
        [("Sent Messages", "Sent Messages", "default")],
        destination=[("Sent", "\\Sent")],
        rules={"automap": False},
    ),
    Case(
        "gmail to dovecot",
        GMAIL,
        [
            ("INBOX", "INBOX", "default"),
            ("[Gmail]", "[Gmail]", "default"),
            ("[Gmail]/All Mail", "[Gmail]/All Mail", "default"),  # no \All on the destination
            ("[Gmail]/Drafts", "Drafts", "automap"),
            ("[Gmail]/Important", "[Gmail]/Important", "default"),
            ("[Gmail]/Sent Mail", "Sent", "automap"),
            ("[Gmail]/Spam", "Junk", "automap"),
            ("[Gmail]/Starred", "[Gmail]/Starred", "default"),  # \Flagged is not automapped
            ("[Gmail]/Trash", "Trash", "automap"),
        ],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "gmail names excluded as written",
        GMAIL,
        [("INBOX", "INBOX", "default"), ("[Gmail]/Sent Mail", "Sent", "automap"), ("[Gmail]/Spam", "Junk", "automap")],
        destination=DOVECOT_SPECIAL,
        rules={"exclude": ["[Gmail]/All Mail", "re:^\\[Gmail\\]/(Important|Starred)$", "[Gmail]", "[Gmail]/?r*"]},
    ),
    Case(
        "dovecot to gmail without attributes in the listing",
        ["INBOX", "Drafts", "Sent", "Trash", "Work"],
        [
            ("INBOX", "INBOX", "default"),
            ("Drafts", "[Gmail]/Drafts", "automap"),
            ("Sent", "[Gmail]/Sent Mail", "automap"),
            ("Trash", "[Gmail]/Trash", "automap"),
            ("Work", "Work", "default"),
        ],
        destination=["INBOX", ("[Gmail]", "\\Noselect"), "[Gmail]/Drafts", "[Gmail]/Sent Mail", "[Gmail]/Trash"],
    ),
    Case(
        "french and russian names",
        ["Brouillons", "Corbeille", "Courrier indésirable", "Éléments envoyés", "Отправленные", "Удаленные"],
        [
            ("Brouillons", "Drafts", "automap"),
            ("Corbeille", "Trash", "automap"),
            ("Courrier indésirable", "Junk", "automap"),
            ("Éléments envoyés", "Sent", "automap"),
            ("Отправленные", "Отправленные", "default"),  # Sent receives Éléments envoyés: no merge by name
            ("Удаленные", "Удаленные", "default"),
        ],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "spanish italian dutch names, case-insensitive",
        ["ELEMENTOS ENVIADOS", "posta indesiderata", "Verwijderde Items", "Archivio"],
        [
            ("Archivio", "INBOX.Archive", "automap"),
            ("ELEMENTOS ENVIADOS", "INBOX.Sent", "automap"),
            ("Verwijderde Items", "INBOX.Trash", "automap"),
            ("posta indesiderata", "INBOX.Spam", "automap"),
        ],
        destination=["INBOX", ("INBOX.Sent", "\\Sent"), "INBOX.Trash", "INBOX.Spam", ("INBOX.Archive", "\\Archive")],
        destination_ns=CYRUS,
    ),
    Case(
        "automap from a cyrus source",
        ["INBOX", ("INBOX.Sent", "\\Sent"), "INBOX.Deleted Messages"],
        [
            ("INBOX", "INBOX", "default"),
            ("INBOX.Deleted Messages", "Trash", "automap"),
            ("INBOX.Sent", "Sent", "default"),  # the name automap found is the one it has anyway
        ],
        source_ns=CYRUS,
        destination=DOVECOT_SPECIAL,
    ),
    # -- rename and under ------------------------------------------------------------------------------
    Case(
        "rename by regex",
        ["INBOX", "Old 2019", "Old 2020", "Work"],
        [
            ("INBOX", "INBOX", "default"),
            ("Old 2019", "Archive/2019", "rename"),
            ("Old 2020", "Archive/2020", "rename"),
            ("Work", "Work", "default"),
        ],
        rules={"rename": [{"pattern": r"^Old (\d{4})$", "replacement": r"Archive/\1"}]},
    ),
    Case(
        "rename rules apply in order, cumulatively",
        ["Projekte/Alpha", "Projekte"],
        [("Projekte", "Work/Projects", "rename"), ("Projekte/Alpha", "Work/Projects/Alpha", "rename")],
        rules={
            "rename": [
                {"pattern": "^Projekte", "replacement": "Projects"},
                {"pattern": "^Projects", "replacement": "Work/Projects"},
            ]
        },
    ),
    Case(
        "rename drops empty levels",
        ["Lists/python", "Lists"],
        [("Lists", "Lists", "default"), ("Lists/python", "python", "rename")],
        rules={"rename": [{"pattern": "^Lists/", "replacement": "/"}]},
    ),
    Case(
        "under with INBOX",
        ["INBOX", "Archive/2024", ("Sent", "\\Sent")],
        [
            ("INBOX", "Backup/old/INBOX", "under"),
            ("Archive/2024", "Backup/old/Archive/2024", "under"),
            ("Sent", "Backup/old/Sent", "under"),  # no automap out of a backup tree
        ],
        destination=DOVECOT_SPECIAL,
        rules={"under": "Backup/old"},
    ),
    Case(
        "under on a cyrus destination",
        ["INBOX", "Work"],
        [("INBOX", "INBOX.Backup.INBOX", "under"), ("Work", "INBOX.Backup.Work", "under")],
        destination_ns=CYRUS,
        rules={"under": "Backup"},
    ),
    Case(
        "rename plus under",
        ["INBOX", "Old Stuff"],
        [("INBOX", "Backup/INBOX", "under"), ("Old Stuff", "Backup/Stuff", "rename+under")],
        rules={"rename": [{"pattern": "^Old ", "replacement": ""}], "under": "Backup"},
    ),
    # -- from_under ------------------------------------------------------------------------------------
    Case(
        "from_under restores a backup tree",
        ["INBOX", "Backup", "Backup/old", "Backup/old/INBOX", "Backup/old/Work", "Backup/old/Work/2024", "Other"],
        [
            ("Backup/old/INBOX", "INBOX", "default"),
            ("Backup/old/Work", "Work", "default"),
            ("Backup/old/Work/2024", "Work/2024", "default"),
        ],
        rules={"from_under": "Backup/old"},
    ),
    Case(
        "from_under automaps the restored names",
        ["Backup/old/Sent Items", "Backup/old/Trash"],
        [("Backup/old/Sent Items", "INBOX.Sent", "automap"), ("Backup/old/Trash", "INBOX.Trash", "default")],
        destination=["INBOX", ("INBOX.Sent", "\\Sent"), ("INBOX.Trash", "\\Trash")],
        destination_ns=CYRUS,
        rules={"from_under": "Backup/old"},
    ),
    Case(
        "from_under selects and maps on the full source name",
        ["Backup/old/INBOX", "Backup/old/Trash", "Backup/old/Notes", "Backup/old/Work"],
        [("Backup/old/INBOX", "INBOX", "default"), ("Backup/old/Notes", "Archive/Notes", "map")],
        rules={
            "from_under": "Backup/old",
            "exclude": ["Backup/old/Trash", "Backup/old/Work/**"],
            "map": {"Backup/old/Notes": "Archive/Notes"},
        },
    ),
    Case(
        "from_under from a cyrus source, then under",
        ["INBOX", "INBOX.Old", "INBOX.Old.INBOX", "INBOX.Old.Lists.python"],
        [("INBOX.Old.INBOX", "New/INBOX", "under"), ("INBOX.Old.Lists.python", "New/Lists/python", "under")],
        source_ns=CYRUS,
        rules={"from_under": "Old", "under": "New"},
    ),
    # -- merges ----------------------------------------------------------------------------------------
    Case(
        "case variants merge into the first",
        ["INBOX", "Projects", "PROJECTS", "projects/x"],
        [
            ("INBOX", "INBOX", "default"),
            ("PROJECTS", "PROJECTS", "default"),
            ("Projects", "PROJECTS", "default"),
            ("projects/x", "projects/x", "default"),
        ],
        merged={"Projects": "PROJECTS"},
    ),
    Case(
        "an existing destination case variant is used as is",
        ["Projects", "Reports/Q1"],
        [("Projects", "projects", "default"), ("Reports/Q1", "REPORTS/q1", "default")],
        destination=["projects", "REPORTS", "REPORTS/q1"],
    ),
    Case(
        "an exact destination match wins over a case variant",
        ["Projects"],
        [("Projects", "Projects", "default")],
        destination=["PROJECTS", "Projects"],
    ),
    Case(
        "separator replacement collisions merge",
        ["a.b", "a_b"],
        [("a.b", "INBOX.a_b", "default"), ("a_b", "INBOX.a_b", "default")],
        destination_ns=CYRUS,
        merged={"a_b": "a.b"},
    ),
    Case(
        "a name guess never merges two source folders: the later one keeps its name",
        [("Sent", "\\Sent"), "Sent Items"],
        [("Sent", "Sent", "default"), ("Sent Items", "Sent Items", "default")],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "an attribute and a well-known name for one use (the Drafts of issue 14)",
        [("Drafts", "\\Drafts"), "Entwürfe"],
        [("Drafts", "Drafts", "default"), ("Entwürfe", "Entwürfe", "default")],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "the same, onto an empty destination",
        [("Drafts", "\\Drafts"), "Entwürfe"],
        [("Drafts", "Drafts", "default"), ("Entwürfe", "Entwürfe", "default")],
    ),
    Case(
        "the same, on the next pass (labels do not change)",
        [("Drafts", "\\Drafts"), "Entwürfe"],
        [("Drafts", "Drafts", "default"), ("Entwürfe", "Entwürfe", "default")],
        destination=[("Drafts", "\\Drafts"), "Entwürfe"],
    ),
    Case(
        "the attribute wins the target, whatever the alphabet says",
        ["Bozze", ("Entwürfe", "\\Drafts")],
        [("Bozze", "Bozze", "default"), ("Entwürfe", "Drafts", "automap")],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "two attributes for one use: no merge either",
        [("Drafts", "\\Drafts"), ("Old Drafts", "\\Drafts")],
        [("Drafts", "Drafts", "default"), ("Old Drafts", "Old Drafts", "default")],
        destination=DOVECOT_SPECIAL,
    ),
    Case(
        "a folder that keeps its own name may still meet its target's name: merged, and marked",
        ["Drafts", ("Entwürfe", "\\Drafts")],
        [("Drafts", "Drafts", "default"), ("Entwürfe", "Drafts", "automap")],
        destination=DOVECOT_SPECIAL,
        merged={"Entwürfe": "Drafts"},
    ),
    Case(
        "an explicit map onto a special folder's own name merges there, marked",
        [("Sent", "\\Sent"), "Sent 2019"],
        [("Sent", "Sent", "default"), ("Sent 2019", "Sent", "map")],
        destination=DOVECOT_SPECIAL,
        rules={"map": {"Sent 2019": "Sent"}},
        merged={"Sent 2019": "Sent"},
    ),
    Case(
        "an explicit map of two folders to one merges them, marked",
        ["Sent", "Sent 2019"],
        [("Sent", "Sent", "default"), ("Sent 2019", "Sent", "map")],
        destination=DOVECOT_SPECIAL,
        rules={"map": {"Sent 2019": "Sent"}},
        merged={"Sent 2019": "Sent"},
    ),
    Case(
        "a rename onto an existing source name merges",
        ["Archive", "Archiv"],
        [("Archiv", "Archive", "rename"), ("Archive", "Archive", "default")],
        rules={"automap": False, "rename": [{"pattern": "^Archiv$", "replacement": "Archive"}]},
        merged={"Archive": "Archiv"},
    ),
]


def _mappings(case: Case) -> list[FolderMapping]:
    return pair_mappings(
        FolderRules.model_validate(case.rules),
        folders(case.source, case.source_ns),
        folders(case.destination, case.destination_ns),
        case.source_ns,
        case.destination_ns,
        subscribed=case.subscribed,
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_folder_rules(case: Case) -> None:
    mappings = _mappings(case)
    assert [(m.source, m.destination, m.rule) for m in mappings] == case.expected
    assert {m.source: m.merged_into for m in mappings if m.merged_into} == case.merged
    selectable = {f.name: f.selectable for f in folders(case.source, case.source_ns)}
    assert all(m.selectable == selectable[m.source] for m in mappings)


def test_table_covers_every_rule() -> None:
    rules = {m.rule for case in CASES for m in _mappings(case)}
    assert rules == {"map", "automap", "rename", "under", "rename+under", "default"}
    assert len(CASES) >= 30


def test_old_keyword_api_still_works() -> None:
    source = folders(["INBOX", ("Sent Messages", "\\Sent"), "Junk", ("Old", "\\HasChildren")])
    destination = folders(["INBOX", ("Sent", "\\Sent")])
    mappings = map_folders(source, destination, DOVECOT, DOVECOT, exclude=["Junk"], explicit={"Old": "Archive/Old"})
    assert [(m.source, m.destination, m.rule) for m in mappings] == [
        ("INBOX", "INBOX", "default"),
        ("Old", "Archive/Old", "map"),
        ("Sent Messages", "Sent", "automap"),
    ]
    assert map_folders(folders(["Old"]), [], DOVECOT, DOVECOT, rename=[RenameRule(pattern="O", replacement="B")]) == [
        FolderMapping("Old", "Bld", "rename")
    ]


@pytest.mark.parametrize(
    ("server_name", "source_ns", "destination_ns", "expected"),
    [
        ("INBOX", DOVECOT, CYRUS, "INBOX"),
        ("inbox", DOVECOT, CYRUS, "INBOX"),
        ("Archive/2024", DOVECOT, CYRUS, "INBOX.Archive.2024"),
        ("INBOX.Archive.2024", CYRUS, DOVECOT, "Archive/2024"),
        ("Reçus/Été", DOVECOT, DOVECOT, "Reçus/Été"),
        ("a.b/c", DOVECOT, Namespace(".", ""), "a_b.c"),
        ("Sent Items", DOVECOT, CYRUS, "INBOX.Sent Items"),
        ("ınbox", DOVECOT, CYRUS, "INBOX.ınbox"),  # a dotless i: not INBOX
    ],
)
def test_names_translate_between_separators_and_prefixes(
    server_name: str, source_ns: Namespace, destination_ns: Namespace, expected: str
) -> None:
    assert destination_ns.to_server(source_ns.to_neutral(server_name)) == expected


def test_inbox_first_then_alphabetical() -> None:
    assert sync_order(["b", "INBOX", "a/x", "a"]) == ["INBOX", "a", "a/x", "b"]
    assert sync_order(["A", "inbox"]) == ["inbox", "A"]


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("Archive/*", "Archive/2024", True),
        ("Archive/*", "Archive/2024/Q1", False),
        ("Archive/*", "Archive", False),
        ("Archive", "Archive/2024", False),
        ("Archive/**", "Archive", True),
        ("Archive/**", "Archive/2024/Q1", True),
        ("Archive/**", "Archived", False),
        ("Archive**", "Archive/2024", True),
        ("**", "a/b/c", True),
        ("**/Old", "Old", True),
        ("**/Old", "x/y/Old", True),
        ("**/Old", "xOld", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/xb", False),
        ("a/**/**/b", "a/b", True),
        ("*", "Work", True),
        ("*", "Work/x", False),
        ("?", "/", False),
        ("[!a]", "/", False),
        ("[!a]", "b", True),
        ("[a-c]x", "bx", True),
        ("[c-a]x", "bx", False),
        ("[]]", "]", True),
        ("[", "[", True),
        ("[Gmail]/*", "G/Sent Mail", True),  # a character class, as in fnmatch…
        ("[Gmail]/*", "[Gmail]/Sent Mail", True),  # …and the brackets as written
        ("[Gmail]/**", "[Gmail]", True),
        ("[Gmail]/All Mail", "[Gmail]/All Mail", True),
        ("[Gmail]/All Mail", "[Gmail]/All Mail2", False),
        ("[[]Gmail]/*", "[Gmail]/Sent Mail", True),
        ("[!x]y", "[!x]y", True),
        ("Sent.Mail", "SentxMail", False),
        ("sent", "Sent", False),
        ("re:^Arch", "Archive/2024", True),
        ("re:2024", "Archive/2024", True),
        ("re:^2024", "Archive/2024", False),
        ("INBOX", "INBOX", True),
    ],
)
def test_patterns_are_globs_or_regexes(pattern: str, name: str, matches: bool) -> None:
    assert pattern_matches(pattern, name) is matches


def test_exclude_wins_over_include() -> None:
    assert is_selected("Work", [], [])
    assert not is_selected("Work", ["Archive/**"], [])
    assert not is_selected("Archive/x", ["Archive/**"], ["re:x$"])


SPEC_NAMES = {
    "\\Sent": [
        "Sent", "Sent Messages", "Sent Items", "Sent Mail", "[Gmail]/Sent Mail", "Gesendete Objekte",
        "Gesendete Elemente", "Gesendet", "Éléments envoyés", "Envoyés", "Enviados", "Elementos enviados",
        "Posta inviata", "Verzonden items", "Отправленные",
    ],
    "\\Trash": [
        "Trash", "Deleted Items", "Deleted Messages", "Bin", "[Gmail]/Trash", "[Gmail]/Bin", "Gelöschte Objekte",
        "Gelöschte Elemente", "Papierkorb", "Éléments supprimés", "Corbeille", "Papelera", "Elementos eliminados",
        "Cestino", "Verwijderde items", "Удаленные", "Корзина",
    ],
    "\\Junk": [
        "Junk", "Junk E-mail", "Junk Email", "Spam", "[Gmail]/Spam", "Junk-E-Mail", "Spam-Verdacht",
        "Courrier indésirable", "Correo no deseado", "Posta indesiderata", "Ongewenste e-mail", "Спам",
    ],
    "\\Drafts": ["Drafts", "[Gmail]/Drafts", "Entwürfe", "Brouillons", "Borradores", "Bozze", "Concepten", "Черновики"],
    "\\Archive": ["Archive", "Archives", "Archiv", "Archivio", "Archivo"],
    "\\All": ["[Gmail]/All Mail", "All Mail"],
}  # fmt: skip


@pytest.mark.parametrize(("use", "name"), [(use, name) for use, names in SPEC_NAMES.items() for name in names])
def test_well_known_names_give_their_special_use(use: str, name: str) -> None:
    plain = Folder(name, "/", frozenset())
    assert special_use_of(plain, name) == use
    assert special_use_of(plain, name.upper()) == use
    assert special_use_of(Folder(name, "/", frozenset({"\\Drafts"})), name) == "\\Drafts"  # the attribute wins


def test_well_known_names_belong_to_one_use_only() -> None:
    names = [name.casefold() for names in WELL_KNOWN_NAMES.values() for name in names]
    assert len(names) == len(set(names))


def test_a_rename_leaving_no_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Lists"):
        map_folders(folders(["Lists"]), [], DOVECOT, DOVECOT, rename=[RenameRule(pattern=".*", replacement="")])


def test_subscribed_only_needs_the_subscriptions() -> None:
    with pytest.raises(ValueError, match="subscribed"):
        pair_mappings(FolderRules(subscribed_only=True), [], [], DOVECOT, DOVECOT)


def test_pair_mappings_takes_the_subscriptions_and_honours_namespace_overrides() -> None:
    source = folders(["INBOX", "INBOX.A", "INBOX.B"], CYRUS)
    rules = FolderRules(subscribed_only=True, separator="|", prefix="Mail|")
    mappings = pair_mappings(rules, source, [], CYRUS, DOVECOT, subscribed={"INBOX.B"})
    assert [(m.source, m.destination) for m in mappings] == [("INBOX", "INBOX"), ("INBOX.B", "Mail|B")]
    mappings = pair_mappings(FolderRules(subscribed_only=True), source, [], CYRUS, DOVECOT, subscribed={"INBOX.A"})
    assert [(m.source, m.destination) for m in mappings] == [("INBOX", "INBOX"), ("INBOX.A", "A")]


# -- properties ------------------------------------------------------------------------------------------

NAMESPACES = st.sampled_from([DOVECOT, CYRUS, Namespace(".", ""), Namespace("/", "INBOX/")])
# Levels from a few names with case variants (Sent/SENT, ß/SS, Σ/ς, INBOX/inbox, "_" as a replaced ".") to
# make merges likely, or any text without a separator.
LEVEL = st.one_of(
    st.sampled_from(["INBOX", "inbox", "Sent", "SENT", "sent", "Straße", "STRASSE", "ΟΔΟΣ", "οδος", "a_b", "A_B", "x"]),
    st.text(st.characters(exclude_characters="/."), min_size=1, max_size=8),
)
NEUTRAL_NAMES = st.lists(st.lists(LEVEL, min_size=1, max_size=3).map(NEUTRAL_SEPARATOR.join), max_size=12)


def _source(neutral_names: list[str], ns: Namespace) -> list[Folder]:
    return [Folder(name, ns.separator, frozenset()) for name in {ns.to_server(n) for n in neutral_names}]


@given(NEUTRAL_NAMES, NAMESPACES, NAMESPACES)
def test_default_rules_round_trip_and_merge_only_case_variants(
    neutral_names: list[str], source_ns: Namespace, destination_ns: Namespace
) -> None:
    source = _source(neutral_names, source_ns)
    mappings = pair_mappings(FolderRules(), source, [], source_ns, destination_ns)
    assert [m.source for m in mappings] == sync_order(f.name for f in source)  # every folder, once, in order
    by_source = {m.source: m for m in mappings}
    for mapping in mappings:
        neutral = source_ns.to_neutral(mapping.source)
        if mapping.merged_into is None:
            assert mapping.rule == "default"
            assert destination_ns.to_neutral(mapping.destination) == neutral
        else:
            first = by_source[mapping.merged_into]
            assert first.merged_into is None
            assert mapping.destination == first.destination
            assert source_ns.to_neutral(first.source).casefold() == neutral.casefold()


@given(NEUTRAL_NAMES, NEUTRAL_NAMES, NAMESPACES, NAMESPACES, st.randoms(use_true_random=False))
def test_destinations_differ_case_insensitively_and_input_order_does_not_matter(
    neutral_names: list[str],
    existing: list[str],
    source_ns: Namespace,
    destination_ns: Namespace,
    shuffler: random.Random,
) -> None:
    source = _source(neutral_names, source_ns)
    destination = _source(existing, destination_ns)
    rules = FolderRules(rename=[RenameRule(pattern="a", replacement="A")])
    mappings = pair_mappings(rules, source, destination, source_ns, destination_ns)
    first_by_key: dict[str, str] = {}
    for mapping in mappings:  # one destination name per case-insensitive key
        assert first_by_key.setdefault(mapping.destination.casefold(), mapping.destination) == mapping.destination
    existing_names = {f.name for f in destination}
    for mapping in mappings:  # an existing folder is used as it is spelled
        variants = {name for name in existing_names if name.casefold() == mapping.destination.casefold()}
        assert not variants or mapping.destination in variants
    shuffler.shuffle(source)
    shuffler.shuffle(destination)
    assert pair_mappings(rules, source, destination, source_ns, destination_ns) == mappings


@given(st.text(st.characters(exclude_characters="*?[]/"), min_size=1), NEUTRAL_NAMES)
def test_a_folder_with_all_its_subfolders(top: str, names: list[str]) -> None:
    for name in [top, *names, *(f"{top}/{n}" for n in names)]:
        expected = name == top or name.startswith(f"{top}/")
        assert pattern_matches(f"{top}/**", name) is expected
        assert pattern_matches("*", name) is (NEUTRAL_SEPARATOR not in name)
