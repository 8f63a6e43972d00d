"""APPEND, written by hand where imapclient would cost memory or round trips.

- `append`: MULTIAPPEND (RFC 3502, atomic: all or none) when offered, else one APPEND per message; with
  LITERAL+ the command is written to the connection by us, each message sent as it is: imapclient and
  imaplib copy every message once or twice on the way.
- `append_each`: one APPEND per message with its own outcome, pipelined with non-synchronising literals
  (LITERAL+, or LITERAL- for small messages, RFC 7888): every command goes out without waiting for a
  continuation or an answer, then the answers are read in order.

A NO is an `AppendRefused` (the message is refused, the connection is fine), or `Throttled` when the
server asks to slow down.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Sequence
from typing import Any

from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import CapabilityError, IMAPClientAbortError, IMAPClientError

from mailmirror.imap.channel import Channel, is_throttling, server_text
from mailmirror.imap.types import AppendRefused, MessageToAppend

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([\d:,]+)\]", re.IGNORECASE)
#: LITERAL- (RFC 7888): non-synchronising literals only up to this size.
LITERAL_MINUS_MAX = 4096


class AppendCommands(Channel):
    """Appending messages to a folder."""

    def _appended(self, folder: str, typ: object, data: list[object], count: int) -> list[int | None]:
        """The UIDs of a (MULTI)APPEND's tagged answer; raises on NO (Throttled when it asks to slow down)."""
        text = b" ".join(part for part in data if isinstance(part, bytes))
        if server_text(typ).upper() != "OK":
            if is_throttling(server_text(text)):
                raise self.throttled(f"appending to '{folder}'", server_text(text))
            raise AppendRefused(server_text(text).strip())
        return _appended_uids(text, count)

    def append(self, folder: str, messages: Sequence[MessageToAppend]) -> list[int | None]:
        """Append messages; returns the new UIDs (APPENDUID) or None where the server does not say.

        Uses MULTIAPPEND for several messages when offered (atomic: all or none). Raises AppendRefused
        when the server answers NO, so the caller can isolate the refused message; Throttled when the NO
        asks to slow down (nothing was appended by that command).
        """
        if not messages:
            return []
        with self.talking(f"appending to '{folder}'"):
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
                    raise self.throttled(f"appending to '{folder}'", reason) from None
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
        with self.talking(doing):
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
                if server_text(typ).upper() == "OK":
                    results.extend(_appended_uids(text, 1))
                    continue
                reason = server_text(text)
                if is_throttling(reason):
                    throttled = reason
                results.append(AppendRefused(reason.strip()))
            if throttled is not None:  # what did go in is found by the caller's journal resolution
                raise self.throttled(doing, throttled)
        return results


def _append_arguments(message: MessageToAppend) -> bytes:
    """``(flags) "INTERNALDATE" {size+}<CRLF>``: an APPEND's arguments up to its literal (LITERAL+)."""
    flags = " ".join(sorted(message.flags)).encode("utf-8")
    date = datetime_to_INTERNALDATE(message.internaldate).encode("ascii")
    return b'(%s) "%s" {%d+}\r\n' % (flags, date, len(message.raw))


def _server_reason(error: Exception) -> str:
    text = server_text(error.args[0] if error.args else error)
    return text.removeprefix("append failed: ").removeprefix("APPEND command error: BAD ").strip()


def _appended_uids(response: Any, count: int) -> list[int | None]:
    raw = response if isinstance(response, bytes) else server_text(response).encode()
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
