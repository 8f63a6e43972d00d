"""What every part of one pass shares: the pair, its rules, the state, the stop signal, the memory budget,
the progress sink, the lock around the report, how sessions are opened and the clock.

A PassContext is made once per pass (by PairPass) and handed to the folder passes, the transfer queue
and its workers, so that none of them reaches back into PairPass.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailmirror.engine.identity import header_fields_to_fetch
from mailmirror.engine.planner import FlagRules
from mailmirror.engine.transfer import ByteBudget
from mailmirror.errors import Stopped

if TYPE_CHECKING:
    from mailmirror.config.account import Account
    from mailmirror.config.config_file import Config
    from mailmirror.config.pair import Pair
    from mailmirror.engine.mapping import FolderMapping
    from mailmirror.engine.outcome import FolderReport, Progress
    from mailmirror.imap.interface import Connect
    from mailmirror.state.store import StateStore


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PassContext:
    name: str
    pair: Pair
    config: Config
    store: StateStore
    progress: Progress
    connect: Connect  # how sessions are opened: the real IMAP client unless a test models one
    stop: threading.Event | None = None  # a stop request (SIGTERM): the pass ends between batches
    full: bool = False  # --full: no fast path, every folder listed completely
    force_deletions: bool = False
    clock: Callable[[], datetime] = utc_now  # the engine's wall clock (ages, late-write windows)
    abort: threading.Event = field(default_factory=threading.Event)  # a worker failed for good
    lock: threading.RLock = field(default_factory=threading.RLock)  # the report and progress, shared by workers
    header_fields: list[str] = field(init=False)
    flag_rules: FlagRules = field(init=False)
    budget: ByteBudget = field(init=False)  # message bytes in memory, over all workers

    def __post_init__(self) -> None:
        flags = self.pair.flags
        object.__setattr__(self, "header_fields", header_fields_to_fetch(self.pair.messages.identity_headers))
        object.__setattr__(self, "flag_rules", FlagRules(tuple(re.compile(p) for p in flags.drop), dict(flags.rename)))
        object.__setattr__(self, "budget", ByteBudget(self.pair.transfer.memory))

    @property
    def source_account(self) -> Account:
        return self.config.accounts[self.pair.source]

    @property
    def destination_account(self) -> Account:
        return self.config.accounts[self.pair.destination]

    def interrupted(self) -> bool:
        """A stop request, or another worker failed: what check_stop raises on."""
        return (self.stop is not None and self.stop.is_set()) or self.abort.is_set()

    def check_stop(self) -> None:
        """Between batches and folders: a stop request (SIGTERM) ends the pass here, state consistent."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped(f"pair '{self.name}': pass stopped (shutdown requested); the next pass goes on")
        if self.abort.is_set():
            raise Stopped(f"pair '{self.name}': pass stopped (another worker failed)")


@dataclass
class FolderOrder:
    """The mapped source folders in the order a full pass takes them, and what a dry run planned so far:
    messages.skip_cross_folder_duplicates keeps a message in the first folder that has it."""

    store: StateStore
    pair: str
    enabled: bool  # messages.skip_cross_folder_duplicates
    folders: list[str] = field(default_factory=list)
    #: dry run: fingerprints each source folder would copy or adopt (kept_before of the folders after it)
    planned: dict[str, frozenset[str]] = field(default_factory=dict)
    to_create: set[str] = field(default_factory=set)  # dry run: destination folders a pass would create

    def kept_before(self, src_folder: str) -> frozenset[str]:
        """Fingerprints copied (or planned) from the folders processed before this one."""
        if not self.enabled or src_folder not in self.folders:
            return frozenset()
        before = self.folders[: self.folders.index(src_folder)]
        planned = frozenset().union(*(self.planned.get(folder, frozenset()) for folder in before))
        return self.store.fingerprints(self.pair, before) | planned


class FolderScope:
    """Base of the parts of one folder's work (folder pass, copier, journal): the pass context, the
    folder's mapping and its report."""

    def __init__(self, ctx: PassContext, mapping: FolderMapping, report: FolderReport) -> None:
        self.ctx = ctx
        self.pair = ctx.name
        self.store = ctx.store
        self.mapping = mapping
        self.report = report
