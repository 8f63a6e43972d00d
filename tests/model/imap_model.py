"""An in-memory model of IMAP servers, for property tests of the engine (never the only proof: the
behaviour it stands for is tested against Dovecot elsewhere).

What it keeps, per account and folder: UIDs, UIDVALIDITY, UIDNEXT, flags and keywords, MODSEQ and
HIGHESTMODSEQ, INTERNALDATE, subscriptions, SPECIAL-USE. What it can do to a client:

* switch capabilities off (UIDPLUS, CONDSTORE, MULTIAPPEND, LITERAL+, LIST-STATUS, LIST-EXTENDED, ...),
  seen by sessions opened afterwards, as after a server upgrade;
* answer the k-th command (of any session, optionally only commands of one kind) with NO, a throttling
  NO (after executing it, as Office 365 does), a cut connection, or a crash of the client process
  (`ProcessCrash`, a BaseException the engine does not catch);
* for a cut APPEND: not stored, stored with the answer lost, or stored *late* -- queued and executed
  after the client gave up (when the server has run `late_after` more commands, or on `execute_late()`),
  as a server does with the commands still in its socket buffer;
* show a session only its own appends until it SELECTs again (``stale_views``, as Dovecot does until a
  sync point), and run a test's hook at the k-th command (mail arriving, a stop request in mid-pass).

`ModelSession` implements `mailmirror.imap.interface.ImapSession` against it; `ModelProcess.connect` is the
`connect` callable a `PairPass` takes. Everything goes under one lock: a pass's workers and its fetch
thread may call at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from mailmirror.errors import ConnectionFailure, ServerRefused, Throttled
from mailmirror.imap.types import AppendRefused, Folder, FolderMissing, MailboxStatus, MessageMeta, MessageToAppend

if TYPE_CHECKING:
    from mailmirror.config.account import Account

ALL_CAPABILITIES = frozenset(
    {
        "IMAP4REV1",
        "UIDPLUS",
        "CONDSTORE",
        "ENABLE",
        "MULTIAPPEND",
        "LITERAL+",
        "LIST-STATUS",
        "LIST-EXTENDED",
        "SPECIAL-USE",
        "NAMESPACE",
        "UNSELECT",
    }
)
#: Capabilities a test may switch off (the rest of ALL_CAPABILITIES stays).
OPTIONAL_CAPABILITIES = ("UIDPLUS", "CONDSTORE", "MULTIAPPEND", "LITERAL+", "LIST-STATUS", "LIST-EXTENDED", "ENABLE")
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})

FaultAction = Literal["cut", "no", "throttle", "crash", "hook"]
#: What happens to a cut APPEND: never stored, stored but the answer lost, stored after the client gave up.
CutAppend = Literal["before", "after", "late"]


class ProcessCrash(BaseException):  # the process dying, not an error to handle
    """The client process died (kill -9, power loss): nothing after it runs in that process."""


@dataclass
class StoredMessage:
    uid: int
    raw: bytes
    flags: frozenset[str]
    internaldate: datetime
    modseq: int


@dataclass
class Mailbox:
    name: str
    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    special_use: str | None = None
    subscribed: bool = True

    def status(self, condstore: bool) -> MailboxStatus:
        return MailboxStatus(
            self.uidvalidity, self.uidnext, len(self.messages), self.highestmodseq if condstore else None
        )

    def store(self, raw: bytes, flags: Iterable[str], internaldate: datetime) -> int:
        self.highestmodseq += 1
        uid = self.uidnext
        self.messages[uid] = StoredMessage(uid, raw, frozenset(flags), internaldate, self.highestmodseq)
        self.uidnext += 1
        return uid

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        message = self.messages[uid]
        if message.flags != flags:
            self.highestmodseq += 1
            message.flags, message.modseq = flags, self.highestmodseq

    def expunge(self, uids: Iterable[int]) -> None:
        for uid in uids:
            if self.messages.pop(uid, None) is not None:
                self.highestmodseq += 1


@dataclass
class Fault:
    """Fires at the `at`-th command (1 = the next) counted from when it was armed, among commands named
    `command` (None: any command; "LOGIN" counts the opening of a connection)."""

    action: FaultAction
    at: int
    command: str | None = None
    cut_append: CutAppend = "before"  # for a cut APPEND
    late_after: int | None = None  # for a late APPEND: executed after this many more commands (None: on demand)
    hook: Callable[[], object] | None = None  # for action "hook": run, then the command goes on
    seen: int = 0
    fired: bool = False


@dataclass
class LateAppend:
    mailbox: str
    uidvalidity: int
    message: MessageToAppend
    due: int | None  # the server's command count at which it executes (None: on demand)


class Server:
    """One IMAP server with its accounts (username -> folders)."""

    def __init__(self, name: str, lock: threading.RLock, *, separator: str = "/", prefix: str = "") -> None:
        self.name = name
        self.lock = lock
        self.separator = separator
        self.prefix = prefix
        self.capabilities: set[str] = set(ALL_CAPABILITIES)
        self.accounts: dict[str, dict[str, Mailbox]] = {}
        self.faults: list[Fault] = []
        self.late: list[LateAppend] = []
        self.commands = 0
        self.stale_views = False
        self._next_uidvalidity = 1000 if name == "source" else 5000

    # -- setting up and inspecting (the test's side, no faults) -----------------------------------------

    def add_account(self, username: str) -> dict[str, Mailbox]:
        with self.lock:
            folders = self.accounts.setdefault(username, {})
            if "INBOX" not in folders:
                folders["INBOX"] = Mailbox("INBOX", self.new_uidvalidity())
            return folders

    def new_uidvalidity(self) -> int:
        self._next_uidvalidity += 7
        return self._next_uidvalidity

    def create(self, username: str, name: str, special_use: str | None = None) -> Mailbox:
        with self.lock:
            folders = self.accounts[username]
            parts = name.split(self.separator)
            for depth in range(1, len(parts)):  # superior names are created too (RFC 3501 6.3.3)
                parent = self.separator.join(parts[:depth])
                folders.setdefault(parent, Mailbox(parent, self.new_uidvalidity()))
            if name not in folders:
                folders[name] = Mailbox(name, self.new_uidvalidity(), special_use=special_use)
            return folders[name]

    def deliver(self, username: str, folder: str, raw: bytes, flags: Iterable[str], internaldate: datetime) -> int:
        with self.lock:
            return self.accounts[username][folder].store(raw, flags, internaldate)

    def reset_uidvalidity(self, username: str, folder: str) -> None:
        """The folder's index rebuilt: a new UIDVALIDITY and new UIDs, same messages in the same order."""
        with self.lock:
            box = self.accounts[username][folder]
            old = sorted(box.messages.values(), key=lambda m: m.uid)
            box.uidvalidity = self.new_uidvalidity()
            box.messages, box.uidnext = {}, 1
            for message in old:
                box.store(message.raw, message.flags, message.internaldate)

    def arm(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
            return fault

    def disarm(self) -> None:
        with self.lock:
            self.faults.clear()

    def execute_late(self) -> int:
        """Store every late APPEND now; returns how many were stored."""
        with self.lock:
            due, self.late = self.late, []
            return sum(self._store_late(late) for late in due)

    def _store_late(self, late: LateAppend) -> bool:
        for folders in self.accounts.values():
            box = folders.get(late.mailbox)
            if box is not None and box.uidvalidity == late.uidvalidity:
                box.store(late.message.raw, late.message.flags, late.message.internaldate)
                return True
        return False  # the folder went away meanwhile: the server drops it

    # -- the command loop ------------------------------------------------------------------------------

    def command(self, name: str) -> Fault | None:
        """Count a command, run late APPENDs that are due, and return the fault that fires on it."""
        self.commands += 1
        if self.late:
            due = [late for late in self.late if late.due is not None and late.due <= self.commands]
            self.late = [late for late in self.late if late not in due]
            for late in due:
                self._store_late(late)
        firing = None
        for fault in self.faults:
            if fault.fired or (fault.command is not None and fault.command != name):
                continue
            fault.seen += 1
            if fault.seen == fault.at and firing is None:
                fault.fired = True
                firing = fault
        if firing is not None and firing.action == "hook":
            assert firing.hook is not None
            firing.hook()
            return None
        return firing


class World:
    """The source and destination servers of a pair, under one lock."""

    def __init__(self, *, destination_separator: str = "/") -> None:
        self.lock = threading.RLock()
        self.source = Server("source", self.lock)
        self.destination = Server("destination", self.lock, separator=destination_separator)
        self.source.add_account("alice")
        self.destination.add_account("backup")
        self.servers = {"src": (self.source, "alice"), "dst": (self.destination, "backup")}
        self.clock_offset = timedelta(0)  # the passes' clock runs this far ahead of the real one

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset


class ModelProcess:
    """One client process: its sessions all die with it (`ProcessCrash`)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.crashed = False
        self.sessions: list[ModelSession] = []

    def connect(self, account_name: str, account: Account) -> ModelSession:
        server, username = self.world.servers[account_name]
        with server.lock:
            if self.crashed:
                raise ProcessCrash("the process is gone")
            fault = server.command("LOGIN")
            if fault is not None and fault.action == "crash":
                self.crashed = True
                raise ProcessCrash(f"simulated crash at LOGIN on {server.name}")
            if fault is not None:
                raise ConnectionFailure(f"account '{account_name}' (model {server.name}): connection lost at login")
            session = ModelSession(self, server, account_name, username)
            self.sessions.append(session)
            return session


class ModelSession:
    """A logged-in session on a model server: `mailmirror.imap.interface.ImapSession`."""

    def __init__(self, process: ModelProcess, server: Server, account_name: str, username: str) -> None:
        self.process = process
        self.server = server
        self.account_name = account_name
        self.folders = server.accounts[username]
        self.capabilities = frozenset(server.capabilities)
        self.separator = server.separator
        self.prefix = server.prefix
        self.selected: str | None = None
        self.selected_readonly = True
        self.cut = False
        self.view: set[int] = set()  # with stale_views: the UIDs this session has been shown
        self.view_uidvalidity = 0

    # -- plumbing ----------------------------------------------------------------------------------------

    def _lost(self, doing: str) -> ConnectionFailure:
        self.cut = True
        return ConnectionFailure(f"account '{self.account_name}' (model {self.server.name}): connection lost {doing}")

    def _begin(self, name: str) -> Fault | None:
        """Start a command: refuse on a dead session, count it, return an APPEND's fault (others fire here)."""
        if self.process.crashed:
            raise ProcessCrash("the process is gone")
        if self.cut:
            raise self._lost(f"before {name} (the connection was cut)")
        fault = self.server.command(name)
        if fault is None or name == "APPEND":
            return fault
        self._fire(fault, name)
        return None

    def _fire(self, fault: Fault, name: str) -> None:
        if fault.action == "crash":
            self.process.crashed = True
            raise ProcessCrash(f"simulated crash at {name} on {self.server.name}")
        if fault.action == "cut":
            raise self._lost(f"while running {name} (simulated cut)")
        if fault.action == "throttle":
            raise Throttled(f"account '{self.account_name}': NO [UNAVAILABLE] simulated throttling of {name}")
        if name in ("SELECT", "EXAMINE", "STATUS"):
            raise FolderMissing(f"simulated NO to {name}")
        raise ServerRefused(f"account '{self.account_name}': the server refused {name}: simulated NO")

    def _box(self, name: str) -> Mailbox:
        box = self.folders.get(name)
        if box is None:
            raise FolderMissing(f"{name}: NO Mailbox doesn't exist")
        return box

    def _open(self) -> Mailbox:
        if self.selected is None or self.selected not in self.folders:
            raise ServerRefused(f"account '{self.account_name}': no folder selected")
        return self.folders[self.selected]

    def _visible(self, box: Mailbox) -> list[StoredMessage]:
        messages = sorted(box.messages.values(), key=lambda m: m.uid)
        if self.server.stale_views and self.view_uidvalidity == box.uidvalidity:
            return [m for m in messages if m.uid in self.view]
        return messages

    def _writable(self, doing: str) -> Mailbox:
        box = self._open()
        if self.selected_readonly:  # the engine must never write where it only EXAMINEd (the source)
            raise ServerRefused(f"account '{self.account_name}': NO {doing} in a read-only (EXAMINEd) folder")
        return box

    # -- the session ---------------------------------------------------------------------------------------

    def close(self) -> None:
        self.cut = True

    def __enter__(self) -> ModelSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @property
    def append_limit(self) -> int | None:
        return None

    def list_folders(self) -> list[Folder]:
        with self.server.lock:
            self._begin("LIST")
            return self._folders()

    def _folders(self) -> list[Folder]:
        names = sorted(self.folders)
        result = []
        for name in names:
            children = any(other.startswith(name + self.separator) for other in names)
            flags = {"\\HasChildren" if children else "\\HasNoChildren"}
            special = self.folders[name].special_use
            if special and self.has("SPECIAL-USE"):
                flags.add(special)
            result.append(Folder(name, self.separator, frozenset(flags)))
        return result

    def list_folders_with_status(self) -> tuple[list[Folder], dict[str, MailboxStatus], set[str] | None]:
        with self.server.lock:
            self._begin("LIST")
            statuses = {}
            if self.has("LIST-STATUS"):
                statuses = {name: box.status(self.has("CONDSTORE")) for name, box in self.folders.items()}
            subscriptions = None
            if self.has("LIST-EXTENDED"):
                subscriptions = {name for name, box in self.folders.items() if box.subscribed}
            return self._folders(), statuses, subscriptions

    def subscribed_folders(self) -> set[str]:
        with self.server.lock:
            self._begin("LSUB")
            return {name for name, box in self.folders.items() if box.subscribed}

    def create_folder(self, name: str) -> None:
        with self.server.lock:
            self._begin("CREATE")
            if name not in self.folders:
                self.server.create(self._username(), name).subscribed = False

    def _username(self) -> str:
        return next(user for user, folders in self.server.accounts.items() if folders is self.folders)

    def delete_folder(self, name: str) -> None:
        with self.server.lock:
            self._begin("DELETE")
            if name.upper() == "INBOX" or name not in self.folders:
                raise ServerRefused(f"account '{self.account_name}': the server refused to delete folder '{name}'")
            del self.folders[name]
            if self.selected == name:
                self.selected = None

    def rename_folder(self, old: str, new: str) -> None:
        with self.server.lock:
            self._begin("RENAME")
            if old not in self.folders or new in self.folders:
                raise ServerRefused(f"account '{self.account_name}': the server refused to rename '{old}'")
            for name in sorted(self.folders):
                if name == old or name.startswith(old + self.separator):
                    box = self.folders.pop(name)
                    box.name = new + name[len(old) :]
                    self.folders[box.name] = box

    def subscribe(self, name: str) -> None:
        with self.server.lock:
            self._begin("SUBSCRIBE")
            if name in self.folders:
                self.folders[name].subscribed = True

    def status(self, name: str) -> MailboxStatus:
        with self.server.lock:
            self._begin("STATUS")
            return self._box(name).status(self.has("CONDSTORE"))

    def folder_size(self, name: str) -> tuple[int, int]:
        with self.server.lock:
            self._begin("STATUS")
            box = self._box(name)
            return len(box.messages), sum(len(m.raw) for m in box.messages.values())

    def select(self, name: str, *, readonly: bool) -> MailboxStatus:
        with self.server.lock:
            self._begin("EXAMINE" if readonly else "SELECT")
            box = self._box(name)
            self.selected, self.selected_readonly = name, readonly
            self.view, self.view_uidvalidity = set(box.messages), box.uidvalidity
            permanent = None if readonly else SYSTEM_FLAGS | {"\\*"}
            status = box.status(self.has("CONDSTORE"))
            return MailboxStatus(status.uidvalidity, status.uidnext, status.messages, status.highestmodseq, permanent)

    def enable_condstore(self) -> None:
        with self.server.lock:
            if self.has("CONDSTORE") and self.has("ENABLE"):
                self._begin("ENABLE")

    def ensure_selected(self, name: str, *, readonly: bool) -> None:
        if self.selected != name or self.selected_readonly != readonly:
            self.select(name, readonly=readonly)

    # -- messages ------------------------------------------------------------------------------------

    def all_uids(self) -> list[int]:
        with self.server.lock:
            self._begin("SEARCH")
            return [m.uid for m in self._visible(self._open())]

    def search(self, criteria: str) -> list[int]:
        with self.server.lock:
            self._begin("SEARCH")
            wanted = {"ALL": None, "FLAGGED": "\\Flagged", "SEEN": "\\Seen", "DELETED": "\\Deleted"}
            if criteria.upper() not in wanted:
                raise ServerRefused(f"the model does not know the search criteria {criteria!r}")
            flag = wanted[criteria.upper()]
            return [m.uid for m in self._visible(self._open()) if flag is None or flag in m.flags]

    def uids_between(self, first_uid: int, last_uid: int) -> list[int]:
        if last_uid < first_uid:
            return []
        with self.server.lock:
            self._begin("SEARCH")
            return [m.uid for m in self._visible(self._open()) if first_uid <= m.uid <= last_uid]

    def uids_from(self, first_uid: int) -> list[int]:
        with self.server.lock:
            self._begin("SEARCH")
            return [m.uid for m in self._visible(self._open()) if m.uid >= first_uid]

    def fetch_flags_changed(self, last_uid: int | None, since_modseq: int | None) -> dict[int, frozenset[str]]:
        if last_uid is not None and last_uid < 1:
            return {}
        with self.server.lock:
            self._begin("FETCH")
            if since_modseq is not None and not self.has("CONDSTORE"):
                raise ServerRefused("BAD CHANGEDSINCE without CONDSTORE")
            return {
                m.uid: m.flags
                for m in self._visible(self._open())
                if (last_uid is None or m.uid <= last_uid) and (since_modseq is None or m.modseq > since_modseq)
            }

    def fetch_meta(self, uids: Sequence[int], header_fields: Sequence[str]) -> list[MessageMeta]:
        if not uids:
            return []
        with self.server.lock:
            self._begin("FETCH")
            wanted = set(uids)
            return [
                MessageMeta(m.uid, len(m.raw), m.flags, m.internaldate, header_fields_of(m.raw, header_fields))
                for m in self._visible(self._open())
                if m.uid in wanted
            ]

    def fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        if not uids:
            return {}
        with self.server.lock:
            self._begin("FETCH")
            wanted = set(uids)
            return {m.uid: m.raw for m in self._visible(self._open()) if m.uid in wanted}

    def fetch_stored(
        self, sizes_of: Sequence[int], headers_of: Sequence[int] = ()
    ) -> dict[int, tuple[int, bytes | None]]:
        """RFC822.SIZE (and BODY[HEADER] for `headers_of`) of just appended messages: stored byte for byte."""
        if not sizes_of:
            return {}
        with self.server.lock:
            self._begin("FETCH")
            wanted, headers = set(sizes_of), set(headers_of)
            return {
                m.uid: (len(m.raw), header_section_of(m.raw) if m.uid in headers else None)
                for m in self._visible(self._open())
                if m.uid in wanted
            }

    def store_flags(self, uids: Sequence[int], add: Iterable[str], remove: Iterable[str]) -> None:
        add, remove = frozenset(add), frozenset(remove)
        with self.server.lock:
            self._begin("STORE")
            box = self._writable("STORE")
            for uid in uids:
                if uid in box.messages:
                    box.set_flags(uid, (box.messages[uid].flags | add) - remove)

    def delete_messages(self, uids: Sequence[int]) -> bool:
        if not uids:
            return True
        with self.server.lock:
            self._begin("STORE")
            box = self._writable("STORE")
            for uid in uids:
                if uid in box.messages:
                    box.set_flags(uid, box.messages[uid].flags | {"\\Deleted"})
            self._begin("EXPUNGE")
            if self.has("UIDPLUS"):
                box.expunge(uids)
                return True
            if {m.uid for m in box.messages.values() if "\\Deleted" in m.flags} - set(uids):
                return False
            box.expunge(list(uids))
            return True

    # -- appending -----------------------------------------------------------------------------------

    def append(self, folder: str, messages: Sequence[MessageToAppend]) -> list[int | None]:
        """As `Session.append`: one atomic command (MULTIAPPEND, or LITERAL+ for one message), else one
        APPEND per message, the first NO ending the call."""
        if not messages:
            return []
        with self.server.lock:
            if len(messages) == 1 or self.has("MULTIAPPEND"):
                return self._append_command(folder, list(messages))
            uids: list[int | None] = []
            for message in messages:
                uids.extend(self._append_command(folder, [message]))
            return uids

    def append_each(self, folder: str, messages: Sequence[MessageToAppend]) -> list[int | AppendRefused | None]:
        """As `Session.append_each`: with LITERAL+ every APPEND is sent before any answer is read (a cut
        or a late execution takes the rest of the pipeline along; a throttling answer is raised after all
        answers are read); without it, one after the other."""
        results: list[int | AppendRefused | None] = []
        with self.server.lock:
            if not self.has("LITERAL+"):
                for message in messages:
                    try:
                        results.extend(self._append_command(folder, [message]))
                    except AppendRefused as refusal:
                        results.append(refusal)
                return results
            throttled: Throttled | None = None
            for index, message in enumerate(messages):
                try:
                    results.extend(self._append_command(folder, [message], pipeline=list(messages[index + 1 :])))
                except AppendRefused as refusal:
                    results.append(refusal)
                except Throttled as error:
                    throttled = error
                    results.append(AppendRefused(str(error)))
            if throttled is not None:
                raise throttled
            return results

    def _append_command(
        self, folder: str, messages: list[MessageToAppend], pipeline: list[MessageToAppend] | None = None
    ) -> list[int | None]:
        """One APPEND command (of one or several messages, atomic); `pipeline`: the APPENDs sent after it
        before any answer (LITERAL+), which a cut takes along."""
        fault = self._begin("APPEND")
        box = self.folders.get(folder)
        if box is None:
            raise AppendRefused("[TRYCREATE] Mailbox doesn't exist")
        if fault is None:
            return self._stored(box, messages)
        if fault.action == "no":
            raise AppendRefused("simulated NO to APPEND")
        if fault.action == "throttle":  # stored, then answered "slow down": the client must find it
            self._stored(box, messages)
            raise Throttled(f"account '{self.account_name}': NO [UNAVAILABLE] Server Unavailable. 15 (simulated)")
        if fault.action == "crash":  # stored; the process dies before it reads the answer
            self._stored(box, messages)
            self.process.crashed = True
            raise ProcessCrash(f"simulated crash after an APPEND to {folder} on {self.server.name}")
        sent = messages + (pipeline or [])
        if fault.cut_append == "after":
            self._stored(box, sent)
        elif fault.cut_append == "late":
            due = None if fault.late_after is None else self.server.commands + fault.late_after
            self.server.late += [LateAppend(folder, box.uidvalidity, m, due) for m in sent]
        raise self._lost(f"while appending to '{folder}' (simulated cut, {fault.cut_append})")

    def _stored(self, box: Mailbox, messages: list[MessageToAppend]) -> list[int | None]:
        uids = [box.store(m.raw, m.flags, m.internaldate) for m in messages]
        if self.selected == box.name:
            self.view.update(uids)  # a session sees its own appends
        return list(uids) if self.has("UIDPLUS") else [None] * len(uids)


def header_section_of(raw: bytes) -> bytes:
    """``BODY[HEADER]``: the header section with the empty line that ends it."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 4]


def header_fields_of(raw: bytes, names: Sequence[str]) -> bytes:
    """``BODY.PEEK[HEADER.FIELDS (...)]``: the named header lines (folded lines kept), then a blank line."""
    header = raw.split(b"\r\n\r\n", 1)[0]
    wanted = {name.lower().encode() for name in names}
    kept: list[bytes] = []
    keeping = False
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keeping:
                kept.append(line)
            continue
        keeping = line.split(b":", 1)[0].strip().lower() in wanted
        if keeping:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept) + b"\r\n"
