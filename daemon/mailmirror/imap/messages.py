"""The message commands of a session, on the selected folder: SEARCH, FETCH (flags, sizes, headers,
bodies, digests), STORE and the deletion of exactly the messages asked for.

Bodies are always fetched with BODY.PEEK, so that reading the source never sets \\Seen.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from imapclient.exceptions import IMAPClientError

from mailmirror.imap.channel import Channel, chunks, server_flags, uid_set
from mailmirror.imap.types import MessageDigest, MessageMeta

log = logging.getLogger(__name__)


class MessageCommands(Channel):
    """Searching, fetching, flagging and deleting messages of the selected folder."""

    def all_uids(self) -> list[int]:
        with self.talking(f"searching '{self.selected}'"):
            return sorted(int(uid) for uid in self.client.search(["ALL"]))

    def search(self, criteria: str) -> list[int]:
        """UIDs matching raw IMAP SEARCH criteria (e.g. ``NOT DELETED SINCE 1-Jan-2024``)."""
        refusal = self.refusing(f"the search criteria {criteria!r} (messages.search)")
        with self.talking(f"searching '{self.selected}'", refusal):
            found = self.client.search(criteria)
        return sorted(int(uid) for uid in found)

    def uids_between(self, first_uid: int, last_uid: int) -> list[int]:
        """UIDs present in [first_uid, last_uid] of the selected folder."""
        first_uid = max(1, first_uid)  # UID 0 does not exist: "0:n" is refused (Courier: NO)
        if last_uid < first_uid:
            return []
        with self.talking(f"searching '{self.selected}'"):
            found = self.client.search(["UID", f"{first_uid}:{last_uid}"])
        return sorted(int(uid) for uid in found if first_uid <= int(uid) <= last_uid)

    def fetch_flags_changed(self, last_uid: int | None, since_modseq: int | None) -> dict[int, frozenset[str]]:
        """Flags of messages with UID <= last_uid (None: all): only those changed since the mod-sequence
        when given (CONDSTORE ``CHANGEDSINCE``), else all of them."""
        if last_uid is not None and last_uid < 1:
            return {}
        modifiers = [f"CHANGEDSINCE {since_modseq}"] if since_modseq is not None else []
        with self.talking(f"fetching flags in '{self.selected}'"):
            response = self.uid_fetch(f"1:{last_uid or '*'}", ["FLAGS"], modifiers)
        return {
            uid: server_flags(data.get(b"FLAGS", ()))
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
        refusal = self.refusing(f"to delete messages in '{self.selected}'")
        with self.talking(f"deleting messages in '{self.selected}'", refusal):
            for chunk in chunks(sorted(uids), 500):
                self.client.add_flags(chunk, ["\\Deleted"], silent=True)
            if self.has("UIDPLUS"):
                for chunk in chunks(sorted(uids), 500):
                    self.client.uid_expunge(chunk)
                return True
            marked = {int(uid) for uid in self.client.search(["DELETED"])}
            if marked - set(uids):
                return False
            self.client.expunge()
            return True

    def uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= first_uid (``UID SEARCH UID n:*`` answers the highest UID even when below n)."""
        first_uid = max(1, first_uid)  # UID 0 does not exist: "0:*" is refused (Courier: NO)
        with self.talking(f"searching '{self.selected}'"):
            found = self.client.search(["UID", f"{first_uid}:*"])
        return sorted(int(uid) for uid in found if int(uid) >= first_uid)

    def fetch_sizes(self) -> dict[int, int]:
        """UID → RFC822.SIZE of every message in the selected folder."""
        with self.talking(f"fetching sizes in '{self.selected}'"):
            response = self.uid_fetch("1:*", ["RFC822.SIZE"])
        return {int(uid): int(data[b"RFC822.SIZE"]) for uid, data in response.items() if b"RFC822.SIZE" in data}

    def fetch_stored(
        self, sizes_of: Sequence[int], headers_of: Sequence[int] = ()
    ) -> dict[int, tuple[int, bytes | None]]:
        """UID -> (RFC822.SIZE, header section or None) of messages just appended to the selected folder, in
        one FETCH: the header only for ``headers_of`` (asked for all of them when there are any)."""
        if not sizes_of:
            return {}
        items = ["RFC822.SIZE", "BODY.PEEK[HEADER]"] if headers_of else ["RFC822.SIZE"]

        def refusal(error: IMAPClientError) -> None:  # a check only: the copies are confirmed, the folder goes on
            log.debug("account '%s': no check of appended messages: %s", self.account_name, error)

        response: dict[int, dict[bytes, Any]] = {}
        with self.talking(f"checking appended messages in '{self.selected}'", refusal):
            response = self.uid_fetch(uid_set(sizes_of), items)
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
        for chunk in chunks(list(uids), 2000):
            with self.talking(f"fetching headers in '{self.selected}'"):
                response = self.uid_fetch(uid_set(chunk), ["RFC822.SIZE", "FLAGS", "INTERNALDATE", header_item])
            for uid, data in response.items():
                if b"RFC822.SIZE" not in data:
                    continue  # expunged meanwhile, or an unsolicited FETCH
                header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), b"") or b""
                metas.append(
                    MessageMeta(
                        uid=int(uid),
                        size=int(data[b"RFC822.SIZE"]),
                        flags=server_flags(data.get(b"FLAGS", ())),
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
        with self.talking(f"fetching messages in '{self.selected}'"):
            response = self.uid_fetch(uid_set(uids), ["BODY.PEEK[]"])
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
                with self.talking(f"fetching messages in '{self.selected}'"):
                    response = self.uid_fetch(uid_set(batch), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
                for got_uid, data in sorted(response.items()):
                    if data.get(b"BODY[]") is not None:  # NIL: expunged meanwhile
                        raw = bytes(data[b"BODY[]"])
                        yield MessageDigest(
                            int(got_uid),
                            hashlib.sha256(raw).hexdigest(),
                            server_flags(data.get(b"FLAGS", ())),
                            data[b"INTERNALDATE"],
                            identity(raw) if identity is not None else None,
                        )
            if uid is not None:
                batch, batch_bytes = [uid], sizes.get(uid, 0)

    def store_flags(self, uids: Sequence[int], add: Iterable[str], remove: Iterable[str]) -> None:
        add_list, remove_list = sorted(add), sorted(remove)
        with self.talking(f"storing flags in '{self.selected}'", self.refusing(f"to store flags in '{self.selected}'")):
            for chunk in chunks(list(uids), 500):
                if add_list:
                    self.client.add_flags(chunk, add_list, silent=True)
                if remove_list:
                    self.client.remove_flags(chunk, remove_list, silent=True)
