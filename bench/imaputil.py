"""Small IMAP helpers over imapclient shared by the floor tool and the harness (no mailmirror import:
the floor must not depend on the code it is the floor of)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from imapclient import IMAPClient
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.response_parser import parse_fetch_response, parse_response


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    ranges: list[str] = []
    start = previous = ordered[0]
    for uid in ordered[1:]:
        if uid == previous + 1:
            previous = uid
            continue
        ranges.append(f"{start}:{previous}" if previous > start else str(start))
        start = previous = uid
    ranges.append(f"{start}:{previous}" if previous > start else str(start))
    return ",".join(ranges)


def uid_fetch(
    client: IMAPClient, message_set: str, items: Sequence[str], modifiers: Sequence[str] = ()
) -> dict[int, dict[bytes, Any]]:
    """``UID FETCH`` with a message set such as ``1:*`` (imapclient's fetch() drops every response
    whose UID was not listed one by one, which rules out ranges)."""
    imap = client._imap
    arguments = ["UID", "FETCH", message_set, "(" + " ".join(items) + ")"]
    if modifiers:
        arguments.append("(" + " ".join(modifiers) + ")")
    tag = imap._command(*arguments)
    typ, data = imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(data, client.normalise_times, True)
    return parsed


def list_status(client: IMAPClient, items: Sequence[str]) -> dict[str, dict[str, int]]:
    """``LIST "" "*" RETURN (STATUS (...))`` (RFC 5819): every folder's status in one round trip.

    Folder names are returned as the server sends them (modified UTF-7 decoded by imapclient).
    """
    imap = client._imap
    tag = imap._command("LIST", '""', '"*"', "RETURN", "(STATUS (" + " ".join(items) + "))")
    typ, data = imap._command_complete("LIST", tag)
    client._checkok("list", typ, data)
    _typ, status_lines = imap._untagged_response(typ, data, "STATUS")
    imap.untagged_responses.pop("LIST", None)
    result: dict[str, dict[str, int]] = {}
    for line in status_lines:
        if line is None:
            continue
        raw = line if isinstance(line, bytes) else b"".join(p if isinstance(p, bytes) else p[1] for p in line)
        parsed = parse_response([raw])
        name, values = parsed[0], parsed[1]
        if not isinstance(name, bytes | str):
            name = str(name)  # an all-digit folder name parses as a number
        folder = decode_utf7(name) if client.folder_encode else (name.decode() if isinstance(name, bytes) else name)
        result[folder] = {
            (values[i].decode() if isinstance(values[i], bytes) else str(values[i])).upper(): int(values[i + 1])
            for i in range(0, len(values), 2)
        }
    return result
