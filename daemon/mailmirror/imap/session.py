"""IMAP session handling: connect, TLS, login, and the few commands a pass needs, with clear errors.

Every error that leaves this module is a `MailmirrorError` naming the account and the server; no secret
is ever part of a message (imapclient's LoginError carries only the server's reply).
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient, SocketTimeout
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import CapabilityError, IMAPClientAbortError, IMAPClientError, LoginError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.response_parser import parse_fetch_response, parse_response

from mailmirror.errors import AuthenticationFailure, ConfigError, ConnectionFailure, ServerRefused, Throttled
from mailmirror.imap import auth

if TYPE_CHECKING:
    from mailmirror.config.account import Account

log = logging.getLogger(__name__)

#: Capabilities `mailmirror check` reports, in this order.
REPORTED_CAPABILITIES = (
    "UIDPLUS",
    "CONDSTORE",
    "QRESYNC",
    "MULTIAPPEND",
    "LITERAL+",
    "LIST-STATUS",
    "SPECIAL-USE",
    "IDLE",
    "APPENDLIMIT",
    "NAMESPACE",
)

SPECIAL_USE_FLAGS = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([\d:,]+)\]", re.IGNORECASE)
_RESP_CODE = re.compile(rb"^\[([A-Z-]+)")
#: Answers of servers asking a client to slow down (Office 365: "Server Unavailable. 15", "Request is
#: throttled"; Gmail: "[THROTTLED]", "Account exceeded command or bandwidth limits"; RFC 5530 [UNAVAILABLE]).
_THROTTLED = re.compile(
    r"\[(THROTTLED|UNAVAILABLE)\]|throttled|server unavailable|exceeded command or bandwidth limits", re.IGNORECASE
)
#: LITERAL- (RFC 7888): non-synchronising literals only up to this size.
LITERAL_MINUS_MAX = 4096


def is_throttling(text: str) -> bool:
    """Whether a server's NO/BAD text asks to slow down (retry later) rather than refusing for good."""
    return _THROTTLED.search(text) is not None


class FolderVanished(ConnectionFailure):
    """The selected folder was deleted (by someone else) during the pass: the server closed the connection."""


#: BYE texts of servers closing a session whose selected mailbox was deleted (Dovecot: "Mailbox was deleted
#: under us", "Selected mailbox was deleted, have to disconnect.").
_MAILBOX_GONE = re.compile(r"mailbox (was|has been) (deleted|removed)|deleted under us|\[NONEXISTENT\]", re.IGNORECASE)


_LOST_CONNECTION = re.compile(r"(^|=> )socket error", re.IGNORECASE)


class FolderMissing(Exception):
    """The folder does not exist (or is not selectable) on the server."""


class AppendRefused(Exception):
    """The server answered NO to an APPEND: the message is refused, the connection is fine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Folder:
    name: str  # Unicode, as the server names it (imapclient decodes modified UTF-7)
    delimiter: str | None
    flags: frozenset[str]

    @property
    def selectable(self) -> bool:
        lowered = {flag.lower() for flag in self.flags}
        return "\\noselect" not in lowered and "\\nonexistent" not in lowered

    @property
    def special_use(self) -> str | None:
        for flag in SPECIAL_USE_FLAGS:
            if flag in self.flags:
                return flag
        return None


@dataclass(frozen=True)
class MailboxStatus:
    uidvalidity: int
    #: Never 0 after `Session.select()` (learned when the SELECT answer lacks it, as Courier's does); 0 in a
    #: STATUS / LIST-STATUS answer that did not give it: unknown, never stored nor sent.
    uidnext: int
    messages: int
    highestmodseq: int | None
    permanent_flags: frozenset[str] | None = None  # only known after SELECT/EXAMINE

    def accepts_keyword(self, keyword: str) -> bool:
        if self.permanent_flags is None or "\\*" in self.permanent_flags:
            return True
        return keyword in self.permanent_flags


@dataclass(frozen=True)
class MessageMeta:
    """What a pass knows of a message without its body."""

    uid: int
    size: int
    flags: frozenset[str]
    internaldate: datetime
    header: bytes  # the identity header fields, as the server returned them


@dataclass(frozen=True)
class MessageDigest:
    uid: int
    sha256: str
    flags: frozenset[str]
    internaldate: datetime
    identity: str | None = None  # what `fetch_digests(identity=...)` made of the message's bytes


@dataclass(frozen=True)
class MessageToAppend:
    raw: bytes
    flags: frozenset[str]
    internaldate: datetime


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flags(values: Iterable[Any]) -> frozenset[str]:
    return frozenset(_text(value) for value in values)


def _ssl_context(account: Account) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(account.tls_ca) if account.tls_ca else None)
    if not account.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Session:
    """One logged-in IMAP connection to one account.

    Use `Session.open(name, account)` (or the `connect` context manager); all methods raise
    MailmirrorError subclasses on connection problems, naming the account and server.
    """

    def __init__(self, account_name: str, account: Account, client: IMAPClient) -> None:
        self.account_name = account_name
        self.account = account
        self.client = client
        self.capabilities = frozenset(_text(c).upper() for c in client.capabilities())
        self.separator, self.prefix = self._namespace()
        self.selected: str | None = None
        self.selected_readonly = True
        self.mechanism = "LOGIN"  # how it logged in (auth.login's choice)
        # Learned on the first SELECT/STATUS that lacks UIDNEXT (Courier): None until known.
        self.uidnext_in_select: bool | None = None
        self.uidnext_in_status: bool | None = None

    # -- connecting --------------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"{self.account.host}:{self.account.effective_port}"

    @classmethod
    def open(cls, account_name: str, account: Account) -> Session:
        try:
            return cls._open(account_name, account)
        except (ConnectionFailure, AuthenticationFailure) as error:
            error.account = account_name
            raise

    @classmethod
    def _open(cls, account_name: str, account: Account) -> Session:
        where = f"{account.host}:{account.effective_port}"
        what = f"account '{account_name}' ({where})"
        client = _connect_client(account, what)
        try:
            mechanism = auth.login(client, account_name, account, what, _login)
            client.normalise_times = False
            session = cls(account_name, account, client)  # asks CAPABILITY and NAMESPACE
            session.mechanism = mechanism
        except (IMAPClientAbortError, OSError, EOFError) as error:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise ConnectionFailure(f"{what}: connection lost right after login: {error}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        log.debug("%s: logged in, capabilities %s", what, " ".join(sorted(session.capabilities)))
        return session

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.logout()
        with contextlib.suppress(Exception):
            self.client.shutdown()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    @property
    def append_limit(self) -> int | None:
        for capability in self.capabilities:
            if capability.startswith("APPENDLIMIT="):
                value = capability.split("=", 1)[1]
                return int(value) if value.isdigit() else None
        return None

    # -- error translation -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (IMAPClientAbortError, OSError, EOFError) as error:
            bye = self._bye_text()
            if self.selected is not None and _MAILBOX_GONE.search(f"{bye} {error}"):
                raise FolderVanished(
                    f"account '{self.account_name}' ({self.server}): folder '{self.selected}' was deleted on the "
                    f"server during the pass ({bye or error}); it is left out of this pass",
                    account=self.account_name,
                ) from None
            raise ConnectionFailure(
                f"account '{self.account_name}' ({self.server}): connection lost while {doing}: {error}",
                account=self.account_name,
            ) from None
        except IMAPClientError as error:  # a NO or BAD the caller did not handle itself
            if is_throttling(_text(error)):
                raise self._throttled(doing, _text(error)) from None
            raise self._refused(doing, error) from None

    def _bye_text(self) -> str:
        """The server's last BYE (why it closed the connection), or ""."""
        with contextlib.suppress(Exception):
            byes = self.client._imap.untagged_responses.get("BYE") or []
            if byes:
                return _text(byes[-1]).strip()[:200]
        return ""

    def _throttled(self, doing: str, reason: str) -> Throttled:
        return Throttled(
            f"account '{self.account_name}' ({self.server}): the server asked to slow down while {doing}: "
            f"{reason.strip()}"
        )

    def _refused(self, doing: str, error: Exception) -> ServerRefused:
        return ServerRefused(
            f"account '{self.account_name}' ({self.server}): the server refused {doing}: {_text(error)}"
        )

    # -- folders -----------------------------------------------------------------------------------------

    def _namespace(self) -> tuple[str, str]:
        if self.has("NAMESPACE"):
            try:
                personal = self.client.namespace().personal
            except IMAPClientError:
                personal = None
            if personal:
                prefix, separator = personal[0]
                return (_text(separator) if separator else "/"), _text(prefix)
        folders = self.client.list_folders(pattern="%")
        for _attributes, delimiter, _name in folders:
            if delimiter:
                return _text(delimiter), ""
        return "/", ""

    def list_folders(self) -> list[Folder]:
        with self._talking("listing folders"):
            rows = self.client.list_folders()
        folders = [Folder(name=_text(name), delimiter=_text(d) if d else None, flags=_flags(f)) for f, d, name in rows]
        return folders

    def status_items(self) -> list[str]:
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if self.has("CONDSTORE"):
            items.append("HIGHESTMODSEQ")
        return items

    def list_folders_with_status(self) -> tuple[list[Folder], dict[str, MailboxStatus], set[str] | None]:
        """Folders, and in the same round trip what the server can add to its LIST answer: the status of
        every folder (LIST-STATUS, RFC 5819) and which are subscribed (LIST-EXTENDED, RFC 5258).

        What the server cannot answer comes back empty (statuses) or None (subscriptions): callers ask
        STATUS / LSUB for what they need.
        """
        returns = []
        if self.has("LIST-EXTENDED") and self.has("SPECIAL-USE"):
            # RFC 6154: a server may leave the special-use attributes out of an extended LIST unless they are
            # asked for (Dovecot does), while its plain LIST has them: ask, so that every listing agrees.
            returns.append("SPECIAL-USE")
        if self.has("LIST-EXTENDED"):
            returns.append("SUBSCRIBED")
        if self.has("LIST-STATUS"):
            returns.append(f"STATUS ({' '.join(self.status_items())})")
        if not returns:
            return self.list_folders(), {}, None
        imap = self.client._imap
        with self._talking("listing folders"):
            typ, data = imap._simple_command("LIST", '""', '"*"', f"RETURN ({' '.join(returns)})")
            self.client._checkok("list", typ, data)
            _typ, listing = imap._untagged_response(typ, data, "LIST")
            _typ, status_lines = imap._untagged_response(typ, data, "STATUS")
        folders = []
        subscribed: set[str] = set()
        for attributes, delimiter, name in self.client._proc_folder_list(listing):
            flags = _flags(attributes)
            if "\\Subscribed" in flags:
                subscribed.add(_text(name))
                flags = flags - {"\\Subscribed"}
            folders.append(Folder(name=_text(name), delimiter=_text(delimiter) if delimiter else None, flags=flags))
        statuses: dict[str, MailboxStatus] = {}
        for line in status_lines:
            if line is None:
                continue
            parsed = parse_response([line])
            name = str(parsed[0]) if isinstance(parsed[0], int) else decode_utf7(parsed[0])
            pairs = parsed[1]
            values = {_text(k).upper(): int(v) for k, v in zip(pairs[::2], pairs[1::2], strict=True)}
            statuses[name] = _status_from(values)
        # With SUBSCRIBED, LIST also names subscribed folders that no longer exist (\NonExistent).
        folders = [f for f in folders if "\\NonExistent" not in f.flags]
        return folders, statuses, subscribed if self.has("LIST-EXTENDED") else None

    def subscribed_folders(self) -> set[str]:
        with self._talking("listing subscribed folders"):
            rows = self.client.list_sub_folders()
        return {_text(name) for _flags_, _delimiter, name in rows}

    def create_folder(self, name: str) -> None:
        with self._talking(f"creating folder '{name}'"):
            try:
                self.client.create_folder(name)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                if b"ALREADYEXISTS" in str(error).encode().upper() or "already exists" in str(error).lower():
                    return
                raise self._refused(f"to create folder '{name}'", error) from None

    def delete_folder(self, name: str) -> None:
        if self.selected == name:
            with self._talking(f"closing '{name}'"):
                self.client.unselect_folder() if self.has("UNSELECT") else self.client.close_folder()
            self.selected = None
        with self._talking(f"deleting folder '{name}'"):
            try:
                self.client.delete_folder(name)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                raise self._refused(f"to delete folder '{name}'", error) from None

    def rename_folder(self, old: str, new: str) -> None:
        with self._talking(f"renaming folder '{old}'"):
            try:
                self.client.rename_folder(old, new)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                raise self._refused(f"to rename folder '{old}' to '{new}'", error) from None

    def subscribe(self, name: str) -> None:
        with self._talking(f"subscribing folder '{name}'"):
            try:
                self.client.subscribe_folder(name)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                log.warning("account '%s': could not subscribe '%s': %s", self.account_name, name, error)

    def status(self, name: str) -> MailboxStatus:
        items = self.status_items()
        with self._talking(f"asking the status of '{name}'"):
            try:
                result = self.client.folder_status(name, items)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                raise FolderMissing(f"{name}: {error}") from None
        return _status_from({_text(k).upper(): int(v) for k, v in result.items()})

    def folder_size(self, name: str) -> tuple[int, int]:
        """(messages, bytes) of a folder: STATUS SIZE (RFC 8438) when offered, else the sum of RFC822.SIZE."""
        if self.has("STATUS=SIZE"):
            with self._talking(f"asking the size of '{name}'"):
                try:
                    result = self.client.folder_status(name, ["MESSAGES", "SIZE"])
                except IMAPClientAbortError:
                    raise
                except IMAPClientError as error:
                    raise FolderMissing(f"{name}: {error}") from None
            return int(result[b"MESSAGES"]), int(result[b"SIZE"])
        status = self.select(name, readonly=True)
        sizes = self.fetch_sizes() if status.messages else {}
        return len(sizes), sum(sizes.values())

    def select(self, name: str, *, readonly: bool) -> MailboxStatus:
        """SELECT (or EXAMINE when readonly: the source is never opened read-write).

        The UIDNEXT returned is never 0. A server whose SELECT answer lacks it (Courier) is asked STATUS
        UIDNEXT just *before* the SELECT (so every message below it is in the opened view), else the
        highest UID in the view + 1 (``UID FETCH * (UID)``): at most the true UIDNEXT, so a later pass
        looking above it misses nothing.
        """
        told = self._status_uidnext(name) if self.uidnext_in_select is False else None
        response = self._select(name, readonly)
        uidnext = response.get(b"UIDNEXT")
        if uidnext is None and self.uidnext_in_select is None:
            self.uidnext_in_select = False
            log.debug("account '%s': SELECT answers no UIDNEXT; it is learned otherwise", self.account_name)
            told = self._status_uidnext(name)
            if told is not None:  # open it again after the STATUS: the view then holds every UID below
                response = self._select(name, readonly)
        elif uidnext is not None:
            self.uidnext_in_select = True
        if uidnext is None:
            uidnext = told if told is not None else self._highest_uid(int(response[b"EXISTS"])) + 1
        modseq = response.get(b"HIGHESTMODSEQ")
        permanent = response.get(b"PERMANENTFLAGS")
        return MailboxStatus(
            uidvalidity=int(response[b"UIDVALIDITY"]),
            uidnext=max(1, int(uidnext)),
            messages=int(response[b"EXISTS"]),
            highestmodseq=int(modseq) if modseq is not None else None,
            # EXAMINE answers PERMANENTFLAGS () whatever the folder keeps: only SELECT tells.
            permanent_flags=_flags(permanent) if permanent is not None and not readonly else None,
        )

    def _select(self, name: str, readonly: bool) -> dict[bytes, Any]:
        with self._talking(f"opening '{name}'"):
            try:
                response: dict[bytes, Any] = self.client.select_folder(name, readonly=readonly)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                raise FolderMissing(f"{name}: {error}") from None
        self.selected, self.selected_readonly = name, readonly
        return response

    def _status_uidnext(self, name: str) -> int | None:
        """STATUS (UIDNEXT) of a folder, None when the server does not answer it (remembered: the highest UID
        + 1 is used from then on, which is never above the true UIDNEXT)."""
        if self.uidnext_in_status is False:
            return None
        with self._talking(f"asking the status of '{name}'"):
            try:
                result = self.client.folder_status(name, ["UIDNEXT"])
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:  # the SELECT says whether the folder exists
                log.debug("account '%s': STATUS UIDNEXT of '%s' refused: %s", self.account_name, name, error)
                result = {}
        value = result.get(b"UIDNEXT")
        if value is None or int(value) < 1:
            self.uidnext_in_status = False
            return None
        self.uidnext_in_status = True
        return int(value)

    def _highest_uid(self, exists: int) -> int:
        """The highest UID in the selected folder's view (0 when it is empty): ``UID FETCH * (UID)``."""
        if exists == 0:
            return 0
        with self._talking(f"fetching the last UID in '{self.selected}'"):
            response = self._fetch("*", ["UID"])
        return max((int(uid) for uid in response), default=0)

    def enable_condstore(self) -> None:
        """ENABLE CONDSTORE (RFC 7162), so that SELECT answers HIGHESTMODSEQ as on the pass's first
        connection (where the LIST-STATUS asking for it enabled CONDSTORE implicitly)."""
        if self.has("CONDSTORE") and self.has("ENABLE"):
            with self._talking("enabling CONDSTORE"):
                try:
                    self.client.enable("CONDSTORE")
                except IMAPClientAbortError:
                    raise
                except IMAPClientError as error:
                    log.debug("account '%s': ENABLE CONDSTORE refused: %s", self.account_name, error)

    def ensure_selected(self, name: str, *, readonly: bool) -> None:
        """Open a folder unless it is the one already open in that mode (workers take turns on folders)."""
        if self.selected != name or self.selected_readonly != readonly:
            self.select(name, readonly=readonly)

    # -- messages ----------------------------------------------------------------------------------------

    def _fetch(
        self, message_set: str, items: Sequence[str], modifiers: Sequence[str] = ()
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH with a message set such as ``1:*`` or ``4,7:90``.

        imapclient 4 drops every response whose UID was not listed one by one in the request, which
        rules out ranges; this sends the same command and parses with imapclient's own parser.
        """
        imap = self.client._imap
        arguments = ["UID", "FETCH", message_set, "(" + " ".join(items) + ")"]
        if modifiers:
            arguments.append("(" + " ".join(modifiers) + ")")
        tag = imap._command(*arguments)
        typ, data = imap._command_complete("FETCH", tag)
        self.client._checkok("fetch", typ, data)
        typ, data = imap._untagged_response(typ, data, "FETCH")
        parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(data, self.client.normalise_times, True)
        return parsed

    def all_uids(self) -> list[int]:
        with self._talking(f"searching '{self.selected}'"):
            return sorted(int(uid) for uid in self.client.search(["ALL"]))

    def search(self, criteria: str) -> list[int]:
        """UIDs matching raw IMAP SEARCH criteria (e.g. ``NOT DELETED SINCE 1-Jan-2024``)."""
        with self._talking(f"searching '{self.selected}'"):
            try:
                found = self.client.search(criteria)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                raise self._refused(f"the search criteria {criteria!r} (messages.search)", error) from None
        return sorted(int(uid) for uid in found)

    def uids_between(self, first_uid: int, last_uid: int) -> list[int]:
        """UIDs present in [first_uid, last_uid] of the selected folder."""
        first_uid = max(1, first_uid)  # UID 0 does not exist: "0:n" is refused (Courier: NO)
        if last_uid < first_uid:
            return []
        with self._talking(f"searching '{self.selected}'"):
            found = self.client.search(["UID", f"{first_uid}:{last_uid}"])
        return sorted(int(uid) for uid in found if first_uid <= int(uid) <= last_uid)

    def fetch_flags_changed(self, last_uid: int | None, since_modseq: int | None) -> dict[int, frozenset[str]]:
        """Flags of messages with UID <= last_uid (None: all): only those changed since the mod-sequence
        when given (CONDSTORE ``CHANGEDSINCE``), else all of them."""
        if last_uid is not None and last_uid < 1:
            return {}
        modifiers = [f"CHANGEDSINCE {since_modseq}"] if since_modseq is not None else []
        with self._talking(f"fetching flags in '{self.selected}'"):
            response = self._fetch(f"1:{last_uid or '*'}", ["FLAGS"], modifiers)
        return {
            uid: _flags(data.get(b"FLAGS", ()))
            for uid, data in response.items()
            if b"FLAGS" in data and (last_uid is None or uid <= last_uid)
        }

    def delete_messages(self, uids: Sequence[int]) -> bool:
        """Mark messages \\Deleted and expunge exactly those (UID EXPUNGE, RFC 4315).

        Without UIDPLUS a plain EXPUNGE would also remove messages someone else marked \\Deleted: then
        it is only done when no other message is so marked; otherwise ours stay marked and False is
        returned (the caller warns).
        """
        if not uids:
            return True
        with self._talking(f"deleting messages in '{self.selected}'"):
            try:
                for chunk in _chunks(sorted(uids), 500):
                    self.client.add_flags(chunk, ["\\Deleted"], silent=True)
                if self.has("UIDPLUS"):
                    for chunk in _chunks(sorted(uids), 500):
                        self.client.uid_expunge(chunk)
                    return True
                marked = {int(uid) for uid in self.client.search(["DELETED"])}
                if marked - set(uids):
                    return False
                self.client.expunge()
                return True
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:
                raise self._refused(f"to delete messages in '{self.selected}'", error) from None

    def uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= first_uid (``UID SEARCH UID n:*`` answers the highest UID even when below n)."""
        first_uid = max(1, first_uid)  # UID 0 does not exist: "0:*" is refused (Courier: NO)
        with self._talking(f"searching '{self.selected}'"):
            found = self.client.search(["UID", f"{first_uid}:*"])
        return sorted(int(uid) for uid in found if int(uid) >= first_uid)

    def fetch_flags(self, uids: Sequence[int] | str) -> dict[int, frozenset[str]]:
        if not uids:
            return {}
        with self._talking(f"fetching flags in '{self.selected}'"):
            response = self._fetch(uids if isinstance(uids, str) else uid_set(uids), ["FLAGS"])
        return {int(uid): _flags(data.get(b"FLAGS", ())) for uid, data in response.items()}

    def fetch_sizes(self) -> dict[int, int]:
        """UID → RFC822.SIZE of every message in the selected folder."""
        with self._talking(f"fetching sizes in '{self.selected}'"):
            response = self._fetch("1:*", ["RFC822.SIZE"])
        return {int(uid): int(data[b"RFC822.SIZE"]) for uid, data in response.items() if b"RFC822.SIZE" in data}

    def fetch_stored(
        self, sizes_of: Sequence[int], headers_of: Sequence[int] = ()
    ) -> dict[int, tuple[int, bytes | None]]:
        """UID -> (RFC822.SIZE, header section or None) of messages just appended to the selected folder, in
        one FETCH: the header only for ``headers_of`` (asked for all of them when there are any)."""
        if not sizes_of:
            return {}
        items = ["RFC822.SIZE", "BODY.PEEK[HEADER]"] if headers_of else ["RFC822.SIZE"]
        with self._talking(f"checking appended messages in '{self.selected}'"):
            try:
                response = self._fetch(uid_set(sizes_of), items)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as error:  # a check only: the copies are confirmed, the folder goes on
                log.debug("account '%s': no check of appended messages: %s", self.account_name, error)
                return {}
        wanted = set(headers_of)
        return {
            int(uid): (int(data[b"RFC822.SIZE"]), bytes(data[b"BODY[HEADER]"]) if int(uid) in wanted else None)
            for uid, data in response.items()
            if b"RFC822.SIZE" in data and (int(uid) not in wanted or b"BODY[HEADER]" in data)
        }

    def fetch_meta(self, uids: Sequence[int], header_fields: Sequence[str]) -> list[MessageMeta]:
        """Size, flags, INTERNALDATE and the identity header fields, without bodies, in chunks."""
        fields = " ".join(field.upper() for field in header_fields)
        header_item = f"BODY.PEEK[HEADER.FIELDS ({fields})]"
        metas: list[MessageMeta] = []
        for chunk in _chunks(list(uids), 2000):
            with self._talking(f"fetching headers in '{self.selected}'"):
                response = self._fetch(uid_set(chunk), ["RFC822.SIZE", "FLAGS", "INTERNALDATE", header_item])
            for uid, data in response.items():
                if b"RFC822.SIZE" not in data:
                    continue  # expunged meanwhile, or an unsolicited FETCH
                header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), b"") or b""
                metas.append(
                    MessageMeta(
                        uid=int(uid),
                        size=int(data[b"RFC822.SIZE"]),
                        flags=_flags(data.get(b"FLAGS", ())),
                        internaldate=data[b"INTERNALDATE"],
                        header=bytes(header),
                    )
                )
        metas.sort(key=lambda meta: meta.uid)
        return metas

    def fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The exact bytes of each message, with BODY.PEEK so that \\Seen is never set."""
        if not uids:
            return {}
        with self._talking(f"fetching messages in '{self.selected}'"):
            response = self._fetch(uid_set(uids), ["BODY.PEEK[]"])
        # BODY[] NIL: expunged by another session meanwhile (Dovecot answers OK [EXPUNGEISSUED]): not returned
        return {int(uid): bytes(body) for uid, data in response.items() if (body := data.get(b"BODY[]")) is not None}

    def fetch_digests(
        self,
        uids: Sequence[int],
        sizes: dict[int, int],
        max_bytes: int,
        identity: Callable[[bytes], str] | None = None,
    ) -> Iterator[MessageDigest]:
        """SHA-256 of each message's exact bytes with its flags and INTERNALDATE, fetched in bounded batches;
        with ``identity``, also what it makes of the bytes (e.g. a fingerprint of identity headers)."""
        batch: list[int] = []
        batch_bytes = 0
        for uid in [*uids, None]:
            if uid is not None and not (batch and batch_bytes + sizes.get(uid, 0) > max_bytes):
                batch.append(uid)
                batch_bytes += sizes.get(uid, 0)
                continue
            if batch:
                with self._talking(f"fetching messages in '{self.selected}'"):
                    response = self._fetch(uid_set(batch), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
                for got_uid, data in sorted(response.items()):
                    if data.get(b"BODY[]") is not None:  # NIL: expunged meanwhile
                        raw = bytes(data[b"BODY[]"])
                        yield MessageDigest(
                            int(got_uid),
                            hashlib.sha256(raw).hexdigest(),
                            _flags(data.get(b"FLAGS", ())),
                            data[b"INTERNALDATE"],
                            identity(raw) if identity is not None else None,
                        )
            if uid is not None:
                batch, batch_bytes = [uid], sizes.get(uid, 0)

    def _appended(self, folder: str, typ: object, data: list[object], count: int) -> list[int | None]:
        """The UIDs of a (MULTI)APPEND's tagged answer; raises on NO (Throttled when it asks to slow down)."""
        text = b" ".join(part for part in data if isinstance(part, bytes))
        if _text(typ).upper() != "OK":
            if is_throttling(_text(text)):
                raise self._throttled(f"appending to '{folder}'", _text(text))
            raise AppendRefused(_text(text).strip())
        return _appended_uids(text, count)

    def append(self, folder: str, messages: Sequence[MessageToAppend]) -> list[int | None]:
        """Append messages; returns the new UIDs (APPENDUID) or None where the server does not say.

        Uses MULTIAPPEND for several messages when offered (atomic: all or none). Raises AppendRefused
        when the server answers NO, so the caller can isolate the refused message; Throttled when the NO
        asks to slow down (nothing was appended by that command).
        """
        if not messages:
            return []
        with self._talking(f"appending to '{folder}'"):
            try:
                if self.has("LITERAL+") and (len(messages) == 1 or self.has("MULTIAPPEND")):
                    # written by us: imapclient/imaplib copy every message once or twice on the way (memory)
                    typ, data = self._multiappend_literal_plus(folder, messages)
                    return self._appended(folder, typ, data, len(messages))
                if len(messages) > 1 and self.has("MULTIAPPEND"):
                    # imapclient returns (typ, data) here instead of raising on NO: check it ourselves.
                    typ, data = self.client.multiappend(
                        folder,
                        [{"msg": m.raw, "flags": sorted(m.flags), "date": m.internaldate} for m in messages],
                    )
                    return self._appended(folder, typ, data, len(messages))
                uids: list[int | None] = []
                for message in messages:
                    response = self.client.append(folder, message.raw, sorted(message.flags), message.internaldate)
                    uids.extend(_appended_uids(response, 1))
                return uids
            except (CapabilityError, IMAPClientAbortError):
                raise
            except IMAPClientError as error:
                reason = _server_reason(error)
                if is_throttling(reason):
                    raise self._throttled(f"appending to '{folder}'", reason) from None
                raise AppendRefused(reason) from None

    def _multiappend_literal_plus(self, folder: str, messages: Sequence[MessageToAppend]) -> tuple[str, list[Any]]:
        """One MULTIAPPEND (RFC 3502) with non-synchronising literals, each message sent as it is (no
        copy): ``tag APPEND mailbox (flags) "date" {n+}<CRLF>bytes (flags) "date" {n+}<CRLF>bytes<CRLF>``."""
        imap = self.client._imap
        tag = imap._new_tag()
        imap.send(b"%s APPEND %s" % (tag, self._mailbox_bytes(folder)))
        for message in messages:
            imap.send(b" " + _append_arguments(message))
            imap.send(message.raw)
        imap.send(b"\r\n")
        typ, data = imap._command_complete("APPEND", tag)
        return str(typ), list(data)

    def _mailbox_bytes(self, folder: str) -> bytes:
        mailbox = self.client._normalise_folder(folder)
        return mailbox if isinstance(mailbox, bytes) else mailbox.encode("ascii")

    @property
    def pipelines_appends(self) -> bool:
        """Whether `append_each` sends its APPENDs back to back (LITERAL+ or LITERAL-, RFC 7888)."""
        return self.has("LITERAL+") or self.has("LITERAL-")

    def append_each(self, folder: str, messages: Sequence[MessageToAppend]) -> list[int | AppendRefused | None]:
        """One APPEND per message, each with its own outcome: the new UID (or None when the server does
        not say), or the AppendRefused of a NO. Throttled / ConnectionFailure for the whole call.

        With LITERAL+ (or LITERAL- for messages up to 4096 bytes) the APPENDs are pipelined: every
        command goes out with a non-synchronising literal (``{n+}``) without waiting for a continuation
        or an answer, then the answers are read in order. imaplib always waits for the ``+``
        continuation, so this writes the commands to the connection itself. Otherwise: one plain APPEND
        after the other.
        """
        if not messages:
            return []
        limit = None if self.has("LITERAL+") else LITERAL_MINUS_MAX if self.has("LITERAL-") else 0
        results: list[int | AppendRefused | None] = []
        pending: list[MessageToAppend] = []
        for message in messages:
            if limit is None or len(message.raw) <= limit:
                pending.append(message)
                continue
            results.extend(self._append_pipelined(folder, pending))
            pending = []
            try:
                results.extend(self.append(folder, [message]))
            except AppendRefused as refusal:
                results.append(refusal)
        results.extend(self._append_pipelined(folder, pending))
        return results

    def _append_pipelined(self, folder: str, messages: Sequence[MessageToAppend]) -> list[int | AppendRefused | None]:
        if not messages:
            return []
        imap = self.client._imap
        mailbox_bytes = self._mailbox_bytes(folder)
        doing = f"appending to '{folder}'"
        results: list[int | AppendRefused | None] = []
        with self._talking(doing):
            tags = []
            for message in messages:
                tag = imap._new_tag()
                imap.send(b"%s APPEND %s %s" % (tag, mailbox_bytes, _append_arguments(message)))
                imap.send(message.raw)
                imap.send(b"\r\n")
                tags.append(tag)
            throttled: str | None = None
            for tag in tags:  # read every answer, even after a refusal: the connection stays in step
                try:
                    typ, data = imap._command_complete("APPEND", tag)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error as error:  # BAD
                    reason = _server_reason(error)
                    if is_throttling(reason):
                        throttled = reason
                    results.append(AppendRefused(reason))
                    continue
                text = b" ".join(part for part in data if isinstance(part, bytes))
                if _text(typ).upper() == "OK":
                    results.extend(_appended_uids(text, 1))
                elif is_throttling(_text(text)):
                    throttled = _text(text)
                    results.append(AppendRefused(_text(text).strip()))
                else:
                    results.append(AppendRefused(_text(text).strip()))
            if throttled is not None:  # what did go in is found by the caller's journal resolution
                raise self._throttled(doing, throttled)
        return results

    def store_flags(self, uids: Sequence[int], add: Iterable[str], remove: Iterable[str]) -> None:
        add_list, remove_list = sorted(add), sorted(remove)
        with self._talking(f"storing flags in '{self.selected}'"):
            for chunk in _chunks(list(uids), 500):
                try:
                    if add_list:
                        self.client.add_flags(chunk, add_list, silent=True)
                    if remove_list:
                        self.client.remove_flags(chunk, remove_list, silent=True)
                except IMAPClientAbortError:
                    raise
                except IMAPClientError as error:
                    raise self._refused(f"to store flags in '{self.selected}'", error) from None


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1:3,7,9:10"``: short commands for long UID lists."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    start = previous = ordered[0] if ordered else 0
    for uid in ordered[1:]:
        if uid == previous + 1:
            previous = uid
            continue
        ranges.append(f"{start}:{previous}" if previous > start else str(start))
        start = previous = uid
    if ordered:
        ranges.append(f"{start}:{previous}" if previous > start else str(start))
    return ",".join(ranges)


def _append_arguments(message: MessageToAppend) -> bytes:
    """``(flags) "INTERNALDATE" {size+}<CRLF>``: an APPEND's arguments up to its literal (LITERAL+)."""
    flags = " ".join(sorted(message.flags)).encode("utf-8")
    date = datetime_to_INTERNALDATE(message.internaldate).encode("ascii")
    return b'(%s) "%s" {%d+}\r\n' % (flags, date, len(message.raw))


def _status_from(values: dict[str, int]) -> MailboxStatus:
    return MailboxStatus(
        uidvalidity=values["UIDVALIDITY"],
        uidnext=values.get("UIDNEXT", 0),  # 0: the server did not say (never stored, never sent)
        messages=values["MESSAGES"],
        highestmodseq=values.get("HIGHESTMODSEQ"),
    )


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _server_reason(error: Exception) -> str:
    text = _text(error.args[0] if error.args else error)
    return text.removeprefix("append failed: ").removeprefix("APPEND command error: BAD ").strip()


def _appended_uids(response: Any, count: int) -> list[int | None]:
    raw = response if isinstance(response, bytes) else _text(response).encode()
    match = _APPENDUID.search(raw)
    if not match:
        return [None] * count
    uids: list[int] = []
    for part in match.group(2).decode().split(","):
        if ":" in part:
            low, high = (int(v) for v in part.split(":"))
            uids.extend(range(low, high + 1))
        else:
            uids.append(int(part))
    if len(uids) != count:
        return [None] * count
    return list(uids)


#: A server sends its greeting at once; when none came within this long (or the account's timeout, if
#: shorter), mailmirror looks whether the port speaks TLS from the first byte (a tls: starttls/none account
#: pointed at an IMAPS port waits for a greeting that never comes), then waits the full timeout.
GREETING_PROBE_SECONDS = 5.0
#: TLS alerts and errors meaning "what came back was not TLS": a plain-text port.
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE")
CERT_NOT_YET_VALID, CERT_EXPIRED = 9, 10  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def _connect_client(account: Account, what: str) -> IMAPClient:
    timeout = account.timeout.total_seconds()
    context = _checked_ssl_context(account, what) if account.tls != "none" else None
    try:
        client = _client_with_greeting(account, context, timeout, what)
        # imapclient sets imaplib's debug level to 5, which formats every response (bodies included) for a
        # logger that discards it: half the CPU of a first pass. Nothing of ours reads it.
        client._imap.debug = 0
        if account.tls == "starttls":
            if b"STARTTLS" not in client.capabilities():
                client.shutdown()
                raise ConnectionFailure(
                    f"{what}: the server does not offer STARTTLS, and the account requires it (tls: starttls). "
                    "Use tls: implicit (port 993) if the server speaks TLS from the start."
                )
            _starttls(client, context, what)
        return client
    except ssl.SSLCertVerificationError as error:
        if error.verify_code in NAME_MISMATCH and context is not None:
            raise ConnectionFailure(_hostname_mismatch(account, context, what)) from None
        if error.verify_code in (CERT_NOT_YET_VALID, CERT_EXPIRED):
            raise ConnectionFailure(
                f"{what}: the server's TLS certificate {error.verify_message}: the server's administrator must "
                "renew it (or this machine's clock is wrong: check date); tls_ca does not help"
            ) from None
        raise ConnectionFailure(
            f"{what}: the server's TLS certificate could not be verified ({error.verify_message}). "
            "Give the CA that signed it with tls_ca: /path/ca.pem, or, for a lab server only, tls_verify: false."
        ) from None
    except ssl.SSLError as error:
        raise ConnectionFailure(_tls_failure(account, error, what)) from None
    except TimeoutError:
        raise ConnectionFailure(f"{what}: no answer within {timeout:g}s (timeout)") from None
    except ConnectionRefusedError:
        raise ConnectionFailure(f"{what}: connection refused: nothing listens on that port") from None
    except socket.gaierror as error:
        raise ConnectionFailure(f"{what}: cannot resolve host name: {error.strerror}") from None
    except OSError as error:
        raise ConnectionFailure(f"{what}: cannot connect: {error.strerror or error}") from None
    except (IMAPClientError, imaplib.IMAP4.error) as error:
        raise ConnectionFailure(_bad_greeting(account, error, what)) from None


def _starttls(client: IMAPClient, context: ssl.SSLContext | None, what: str) -> None:
    try:
        client.starttls(context)
    except (IMAPClientAbortError, ssl.SSLError, OSError):
        raise
    except IMAPClientError as error:  # NO or BAD: the server advertised STARTTLS but will not do it
        with contextlib.suppress(Exception):
            client.shutdown()
        text = _text(error)
        raise ConnectionFailure(
            f"{what}: the server refused STARTTLS ({text[:120]}); ask its administrator, or use tls: implicit "
            "(port 993) if it offers IMAPS"
        ) from None


def _checked_ssl_context(account: Account, what: str) -> ssl.SSLContext:
    """The TLS context; a tls_ca that no longer holds a certificate (checked at load, changed since) is a
    config error naming the account and the file."""
    try:
        return _ssl_context(account)
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
        raise ConfigError(
            f"{what}: tls_ca {account.tls_ca} holds no usable CA certificate ({reason}): give a PEM file "
            "of the CA that signed the server's certificate",
            account=None,
        ) from None


def _client_with_greeting(account: Account, context: ssl.SSLContext | None, timeout: float, what: str) -> IMAPClient:
    """Connect and read the greeting; a plain-text account on an implicit-TLS port is recognised quickly."""
    implicit = account.tls == "implicit"
    probe = min(timeout / 2, GREETING_PROBE_SECONDS)
    if implicit:
        return IMAPClient(account.host, port=account.effective_port, ssl=implicit, ssl_context=context, timeout=timeout)
    try:  # the greeting is read under the connect timeout
        return IMAPClient(
            account.host, port=account.effective_port, ssl=False, timeout=SocketTimeout(connect=probe, read=timeout)
        )
    except TimeoutError:
        if _speaks_tls(account, probe):
            raise ConnectionFailure(
                f"{what}: the server sent no greeting but answers in TLS: this port speaks TLS from the first "
                f"byte (IMAPS, usually 993), while the account has tls: {account.tls}. Use tls: implicit, or the "
                "server's STARTTLS port (usually 143)"
            ) from None
    return IMAPClient(account.host, port=account.effective_port, ssl=False, timeout=timeout)


def _speaks_tls(account: Account, timeout: float) -> bool:
    """Whether a TLS handshake succeeds right away on the account's port (certificate not checked)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((account.host, account.effective_port), timeout=timeout) as raw,
            probe.wrap_socket(raw, server_hostname=account.host),
        ):
            return True
    except (OSError, ValueError):
        return False


def _tls_failure(account: Account, error: ssl.SSLError, what: str) -> str:
    reason = str(error.reason or error)
    if account.tls == "implicit" and reason in _NOT_TLS_REASONS:
        return (
            f"{what}: TLS handshake failed: the server answered in plain text, not TLS ({reason}). This port "
            "speaks plain IMAP: use tls: starttls (usually port 143), or the server's IMAPS port (993)"
        )
    return f"{what}: TLS handshake failed: {reason}"


def _hostname_mismatch(account: Account, context: ssl.SSLContext, what: str) -> str:
    names = _certificate_names(account, context)
    listed = f" (it names {', '.join(names)})" if names else ""
    return (
        f"{what}: the server's TLS certificate is not valid for the host name '{account.host}'{listed}. "
        "Set host: to a name the certificate lists (tls_ca is not the problem: the certificate is trusted)"
    )


def _certificate_names(account: Account, context: ssl.SSLContext) -> list[str]:
    """The DNS names and addresses the server's (trusted) certificate lists, from a second connection that
    checks the chain but not the name; [] when that fails."""
    lenient = _ssl_context(account)
    lenient.check_hostname = False
    try:
        client = IMAPClient(
            account.host,
            port=account.effective_port,
            ssl=account.tls == "implicit",
            ssl_context=lenient,
            timeout=min(account.timeout.total_seconds(), GREETING_PROBE_SECONDS),
        )
        try:
            if account.tls == "starttls":
                client.starttls(lenient)
            certificate = client._imap.sock.getpeercert() or {}
        finally:
            with contextlib.suppress(Exception):
                client.shutdown()
    except Exception:  # only a hint: the error says the essential either way
        return []
    return [str(value) for _kind, value in certificate.get("subjectAltName", ())][:8]


def _bad_greeting(account: Account, error: Exception, what: str) -> str:
    """A greeting that is not IMAP (an HTTP or SMTP server, binary noise), shown short: its first line."""
    text = _text(error).strip()
    first = (text.splitlines() or ["nothing"])[0].removeprefix("unexpected response: ")
    first = first.removeprefix("socket error: unterminated line: ")
    shown = first if len(first) <= 80 else first[:77] + "..."
    if "BYE" in first.upper():
        return f"{what}: the server refused the connection at once: {shown}"
    if "EOF" in first:
        return f"{what}: the server closed the connection before its greeting ({shown}); is this an IMAP port?"
    looks_like_tls = any(marker in first for marker in ("\\x15\\x03", "\\x16\\x03"))
    hint = "; the server speaks TLS: use tls: implicit" if looks_like_tls and account.tls != "implicit" else ""
    return f"{what}: the server's greeting is not IMAP ({shown}): check host and port{hint}"


def _login(client: IMAPClient, account: Account, what: str) -> None:
    who = f"'{account.username}'" + (f" (as admin '{account.authuser}')" if account.authuser else "")
    try:
        if account.auth in ("xoauth2", "oauthbearer"):
            if account.oauth2_token is None:
                raise ConfigError(f"{what}: auth {account.auth} needs oauth2_token")
            token = account.oauth2_token.reveal()
            if account.auth == "xoauth2":
                client.oauth2_login(account.username, token)
            else:
                client.oauthbearer_login(account.username, token)
            return
        if account.password is None:
            raise ConfigError(f"{what}: no password configured")
        password = account.password.reveal()
        if account.authuser:
            client.plain_login(account.authuser, password, authorization_identity=account.username)
        elif account.auth == "plain" or not _fits_login(password) or not _fits_login(account.username):
            client.plain_login(account.username, password)  # SASL PLAIN carries UTF-8; LOGIN only ASCII
        else:
            client.login(_quoted(account.username), password)
    except LoginError as error:
        if _LOST_CONNECTION.search(_text(error)):  # imapclient wraps a cut connection into LoginError too
            raise ConnectionFailure(f"{what}: connection lost during login ({_text(error)})") from None
        raise AuthenticationFailure(f"{what}: login as {who} refused: {_text(error)}") from None
    except (IMAPClientAbortError, OSError) as error:
        raise ConnectionFailure(f"{what}: connection lost during login: {error}") from None
    except IMAPClientError as error:
        raise AuthenticationFailure(f"{what}: login as {who} failed: {_text(error)}") from None
    except (UnicodeError, ValueError, TypeError) as error:  # never let such an error carry the secret
        raise AuthenticationFailure(f"{what}: login as {who} failed: {type(error).__name__}") from None


def _fits_login(text: str) -> bool:
    """Whether LOGIN can carry the text as a quoted string (ASCII, no line breaks); else SASL PLAIN."""
    return text.isascii() and not any(character in text for character in "\r\n\0")


def _quoted(text: str) -> str:
    """An IMAP quoted string (imaplib sends LOGIN's user name as it is: a space or a quote broke it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def connect(account_name: str, account: Account) -> Iterator[Session]:
    session = Session.open(account_name, account)
    try:
        yield session
    finally:
        session.close()
