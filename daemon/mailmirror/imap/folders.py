"""The folder commands of a session: NAMESPACE, LIST (with LIST-STATUS and LIST-EXTENDED when offered),
LSUB, CREATE, DELETE, RENAME, SUBSCRIBE, STATUS, SELECT / EXAMINE and ENABLE CONDSTORE.

SELECT always yields a UIDNEXT, also from servers whose answer lacks it (Courier): see `select`.
"""

from __future__ import annotations

import logging
from typing import Any

from imapclient.exceptions import IMAPClientError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.response_parser import parse_response

from mailmirror.imap.channel import Channel, Refusal, server_flags, server_text
from mailmirror.imap.types import Folder, FolderMissing, MailboxStatus

log = logging.getLogger(__name__)


class FolderCommands(Channel):
    """Listing, creating, renaming, deleting and opening folders."""

    def _namespace(self) -> tuple[str, str]:
        if self.has("NAMESPACE"):
            try:
                personal = self.client.namespace().personal
            except IMAPClientError:
                personal = None
            if personal:
                prefix, separator = personal[0]
                return (server_text(separator) if separator else "/"), server_text(prefix)
        folders = self.client.list_folders(pattern="%")
        for _attributes, delimiter, _name in folders:
            if delimiter:
                return server_text(delimiter), ""
        return "/", ""

    def list_folders(self) -> list[Folder]:
        with self.talking("listing folders"):
            rows = self.client.list_folders()
        folders = [
            Folder(name=server_text(name), delimiter=server_text(d) if d else None, flags=server_flags(f))
            for f, d, name in rows
        ]
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
        with self.talking("listing folders"):
            typ, data = imap._simple_command("LIST", '""', '"*"', f"RETURN ({' '.join(returns)})")
            self.client._checkok("list", typ, data)
            _typ, listing = imap._untagged_response(typ, data, "LIST")
            _typ, status_lines = imap._untagged_response(typ, data, "STATUS")
        folders = []
        subscribed: set[str] = set()
        for attributes, delimiter, name in self.client._proc_folder_list(listing):
            flags = server_flags(attributes)
            if "\\Subscribed" in flags:
                subscribed.add(server_text(name))
                flags = flags - {"\\Subscribed"}
            folders.append(
                Folder(name=server_text(name), delimiter=server_text(delimiter) if delimiter else None, flags=flags)
            )
        statuses: dict[str, MailboxStatus] = {}
        for line in status_lines:
            if line is None:
                continue
            parsed = parse_response([line])
            name = str(parsed[0]) if isinstance(parsed[0], int) else decode_utf7(parsed[0])
            pairs = parsed[1]
            values = {server_text(k).upper(): int(v) for k, v in zip(pairs[::2], pairs[1::2], strict=True)}
            statuses[name] = _status_from(values)
        # With SUBSCRIBED, LIST also names subscribed folders that no longer exist (\NonExistent).
        folders = [f for f in folders if "\\NonExistent" not in f.flags]
        return folders, statuses, subscribed if self.has("LIST-EXTENDED") else None

    def subscribed_folders(self) -> set[str]:
        with self.talking("listing subscribed folders"):
            rows = self.client.list_sub_folders()
        return {server_text(name) for _flags_, _delimiter, name in rows}

    def create_folder(self, name: str) -> None:
        def refusal(error: IMAPClientError) -> Exception | None:
            if b"ALREADYEXISTS" in str(error).encode().upper() or "already exists" in str(error).lower():
                return None
            return self.refused(f"to create folder '{name}'", error)

        with self.talking(f"creating folder '{name}'", refusal):
            self.client.create_folder(name)

    def delete_folder(self, name: str) -> None:
        if self.selected == name:
            with self.talking(f"closing '{name}'"):
                self.client.unselect_folder() if self.has("UNSELECT") else self.client.close_folder()
            self.selected = None
        with self.talking(f"deleting folder '{name}'", self.refusing(f"to delete folder '{name}'")):
            self.client.delete_folder(name)

    def rename_folder(self, old: str, new: str) -> None:
        with self.talking(f"renaming folder '{old}'", self.refusing(f"to rename folder '{old}' to '{new}'")):
            self.client.rename_folder(old, new)

    def subscribe(self, name: str) -> None:
        def refusal(error: IMAPClientError) -> None:
            log.warning("account '%s': could not subscribe '%s': %s", self.account_name, name, error)

        with self.talking(f"subscribing folder '{name}'", refusal):
            self.client.subscribe_folder(name)

    def status(self, name: str) -> MailboxStatus:
        items = self.status_items()
        with self.talking(f"asking the status of '{name}'", missing(name)):
            result = self.client.folder_status(name, items)
        return _status_from({server_text(k).upper(): int(v) for k, v in result.items()})

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
            permanent_flags=server_flags(permanent) if permanent is not None and not readonly else None,
        )

    def _select(self, name: str, readonly: bool) -> dict[bytes, Any]:
        with self.talking(f"opening '{name}'", missing(name)):
            response: dict[bytes, Any] = self.client.select_folder(name, readonly=readonly)
        self.selected, self.selected_readonly = name, readonly
        return response

    def _status_uidnext(self, name: str) -> int | None:
        """STATUS (UIDNEXT) of a folder, None when the server does not answer it (remembered: the highest UID
        + 1 is used from then on, which is never above the true UIDNEXT)."""
        if self.uidnext_in_status is False:
            return None

        def refusal(error: IMAPClientError) -> None:  # the SELECT says whether the folder exists
            log.debug("account '%s': STATUS UIDNEXT of '%s' refused: %s", self.account_name, name, error)

        result: dict[bytes, Any] = {}
        with self.talking(f"asking the status of '{name}'", refusal):
            result = self.client.folder_status(name, ["UIDNEXT"])
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
        with self.talking(f"fetching the last UID in '{self.selected}'"):
            response = self.uid_fetch("*", ["UID"])
        return max((int(uid) for uid in response), default=0)

    def enable_condstore(self) -> None:
        """ENABLE CONDSTORE (RFC 7162), so that SELECT answers HIGHESTMODSEQ as on the pass's first
        connection (where the LIST-STATUS asking for it enabled CONDSTORE implicitly)."""
        if self.has("CONDSTORE") and self.has("ENABLE"):

            def refusal(error: IMAPClientError) -> None:
                log.debug("account '%s': ENABLE CONDSTORE refused: %s", self.account_name, error)

            with self.talking("enabling CONDSTORE", refusal):
                self.client.enable("CONDSTORE")

    def ensure_selected(self, name: str, *, readonly: bool) -> None:
        """Open a folder unless it is the one already open in that mode (workers take turns on folders)."""
        if self.selected != name or self.selected_readonly != readonly:
            self.select(name, readonly=readonly)


def missing(name: str) -> Refusal:
    """A NO to STATUS or SELECT: the folder is not there (or cannot be opened)."""
    return lambda error: FolderMissing(f"{name}: {error}")


def _status_from(values: dict[str, int]) -> MailboxStatus:
    return MailboxStatus(
        uidvalidity=values["UIDVALIDITY"],
        uidnext=values.get("UIDNEXT", 0),  # 0: the server did not say (never stored, never sent)
        messages=values["MESSAGES"],
        highestmodseq=values.get("HIGHESTMODSEQ"),
    )
