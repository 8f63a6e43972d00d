"""What an imapsync conversion collects and writes: the accounts and pairs of the config, the options it
could not convert, notes for the admin, and the YAML text (with those as a comment at the top).

While one imapsync invocation is read, an :class:`Invocation` holds its options as the handlers
(:mod:`mailmirror.config.imapsync_handlers`) set them, side by side (1: source, 2: destination).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

SIDES = (1, 2)
ROLE = {1: "source", 2: "destination"}
AUTH_MECHANISMS = {"LOGIN": "login", "PLAIN": "plain", "XOAUTH2": "xoauth2", "OAUTHBEARER": "oauthbearer"}


@dataclass
class Conversion:
    """What one imapsync invocation (or sync_loop file) becomes."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_path: str | None = None
    unsupported: list[str] = field(default_factory=list)  # options that change behaviour: cannot be expressed
    notes: list[str] = field(default_factory=list)  # what the admin must do or know (exports, differences)

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {}
        if self.state_path is not None:
            document["state"] = {"path": self.state_path}
        document["accounts"] = self.accounts
        document["pairs"] = self.pairs
        return document

    def yaml_text(self) -> str:
        header = ["mailmirror config converted from imapsync options by `mailmirror import imapsync`."]
        if self.unsupported:
            header += ["", "NOT CONVERTED (mailmirror cannot express these; the passes behave differently):"]
            header += [f"  {line}" for line in self.unsupported]
        if self.notes:
            header += ["", "Notes:"]
            header += [f"  {line}" for line in self.notes]
        comment = "".join(f"# {line}".rstrip() + "\n" for line in header)
        body = yaml.safe_dump(self.document(), sort_keys=False, allow_unicode=True, default_flow_style=None, width=1000)
        return comment + body

    def add_note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add_unsupported(self, text: str) -> None:
        if text not in self.unsupported:
            self.unsupported.append(text)


@dataclass
class SideOptions:
    """One side's options as read: the account's keys, and the TLS and login choices settled at the end."""

    values: dict[str, Any] = field(default_factory=dict)  # the account's config keys
    ssl: bool | None = None
    tls: bool | None = None
    authmech: str | None = None


@dataclass
class Invocation:
    """The options of one imapsync run, as they are read."""

    conversion: Conversion
    secret_source: Callable[[int, str], dict[str, Any]]  # (side, "password"/"oauth2_token") → a secret reference
    sides: dict[int, SideOptions] = field(default_factory=lambda: {side: SideOptions() for side in SIDES})
    pair: dict[str, dict[str, Any]] = field(default_factory=dict)
    automap: bool = False
    folder_deletion_narrowed: bool = False  # --delete2foldersonly/--delete2foldersbutnot: not expressible
    selection_widened: bool = False  # an option that narrowed which folders/messages imapsync takes was dropped

    def section(self, name: str) -> dict[str, Any]:
        return self.pair.setdefault(name, {})

    def listed(self, section: str, key: str) -> list[Any]:
        values: list[Any] = self.section(section).setdefault(key, [])
        return values

    def unsupported(self, option: str, why: str) -> None:
        self.conversion.add_unsupported(f"--{option}: {why}")

    def note(self, text: str) -> None:
        self.conversion.add_note(text)


Handler = Callable[[Invocation, int, str], None]  # (invocation, side 1/2 or 0, value or "")


@dataclass(frozen=True)
class Option:
    """An imapsync option: whether it takes a value, and what the importer does with it."""

    takes_value: bool
    handler: Handler
    mapping: str  # for docs/imapsync.md: the mailmirror config it becomes, or "not supported: why"
