"""The floor: the least IMAP work that copies a mailbox, in a plain Python loop (imapclient, no mailmirror).

    python bench/floor.py SPEC.json

SPEC names both accounts and a state file.  Without a state file (the first pass): for every folder,
``UID FETCH 1:* (RFC822.SIZE)``, then batches of at most 8 MiB / 100 messages (mailmirror's batch
bounds): ``UID FETCH (BODY.PEEK[] FLAGS INTERNALDATE)`` and one MULTIAPPEND per batch.  With
``"pipelined": true`` (the ``floor`` tool) a thread fetches the next batches while the previous one is
appended; ``false`` (``floor-seq``) fetches and appends in turn, like mailmirror's executor.  The APPENDUIDs
give a src → dst UID map, saved with each folder's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ.

With a state file (later passes): one ``LIST ... RETURN (STATUS ...)`` per account; folders whose
UIDNEXT and HIGHESTMODSEQ did not move are not even opened.  In the others: bodies of the UIDs above
the old UIDNEXT, as above; flags changed since the old HIGHESTMODSEQ (``CHANGEDSINCE``, CONDSTORE)
replaced on the destination with ``UID STORE FLAGS.SILENT``.  That is what the design says a no-change
pass and an incremental pass should cost, with nothing else: no journal, no fingerprints, no safety.
It is a yardstick, not a tool (no error handling, no UIDVALIDITY change handling, trusts UIDPLUS).

Prints one JSON line: what it copied and how many IMAP commands it sent.
"""

from __future__ import annotations

import json
import queue
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from imaputil import list_status, uid_fetch, uid_set

BATCH_BYTES = 8 * 1024 * 1024
BATCH_MESSAGES = 100
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ")


@dataclass
class Stats:
    copied: int = 0
    bytes: int = 0
    flag_updates: int = 0
    folders_opened: int = 0
    started: float = field(default_factory=time.monotonic)


def connect(spec: dict[str, Any]) -> IMAPClient:
    client = IMAPClient(spec["host"], int(spec["port"]), ssl=False, timeout=300)
    if spec["tls"] == "starttls":
        client.starttls(ssl.create_default_context(cafile=spec["ca"]))
    password = Path(spec["password_file"]).read_text().rstrip("\n")
    client.login(spec["username"], password)
    client.normalise_times = False
    # imapclient sets imaplib's debug level to 5 and routes it to a logger: imaplib then formats every
    # untagged response with %r -- each message body, twice -- whether or not the logger is enabled.
    client._imap.debug = 0
    return client


def batches(sizes: dict[int, int]) -> Iterator[list[int]]:
    batch: list[int] = []
    total = 0
    for uid in sorted(sizes):
        if batch and (total + sizes[uid] > BATCH_BYTES or len(batch) >= BATCH_MESSAGES):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += sizes[uid]
    if batch:
        yield batch


def appended_uids(data: Sequence[Any], count: int) -> list[int]:
    text = b" ".join(part for part in data if isinstance(part, bytes))
    start = text.upper().find(b"[APPENDUID ")
    if start < 0:
        raise SystemExit("floor: the destination did not answer APPENDUID (UIDPLUS needed)")
    uid_text = text[start:].split(b"]", 1)[0].split()[2].decode()
    uids: list[int] = []
    for part in uid_text.split(","):
        low, _, high = part.partition(":")
        uids.extend(range(int(low), int(high or low) + 1))
    if len(uids) != count:
        raise SystemExit(f"floor: APPENDUID lists {len(uids)} UIDs for {count} messages")
    return uids


Fetched = tuple[list[int], dict[int, dict[bytes, Any]]]


def fetched_batches(src: IMAPClient, sizes: dict[int, int], pipelined: bool) -> Iterator[Fetched]:
    """Bodies, batch by batch; pipelined: a thread fetches the next batches (at most 2 ahead) while the
    caller appends, so source and destination work overlap (as mbsync's pipelining does)."""
    plan = list(batches(sizes))

    def fetch(batch: list[int]) -> Fetched:
        return batch, uid_fetch(src, uid_set(batch), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])

    if not pipelined or len(plan) < 2:
        for batch in plan:
            yield fetch(batch)
        return
    ahead: queue.Queue[Fetched | BaseException | None] = queue.Queue(maxsize=2)

    def produce() -> None:
        try:
            for batch in plan:
                ahead.put(fetch(batch))
        except BaseException as error:
            ahead.put(error)
        ahead.put(None)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while (item := ahead.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


def copy_uids(
    src: IMAPClient, dst: IMAPClient, folder: str, message_set: str, stats: Stats, pipelined: bool
) -> dict[int, int]:
    """Copy the messages of ``message_set`` (source folder selected); returns src UID → dst UID."""
    sizes = {uid: int(d[b"RFC822.SIZE"]) for uid, d in uid_fetch(src, message_set, ["RFC822.SIZE"]).items()}
    mapping: dict[int, int] = {}
    for batch, data in fetched_batches(src, sizes, pipelined):
        uids = [uid for uid in batch if uid in data]
        messages = [
            {
                "msg": data[uid][b"BODY[]"],
                "flags": [f for f in data[uid][b"FLAGS"] if f.lower() != b"\\recent"],
                "date": data[uid][b"INTERNALDATE"],
            }
            for uid in uids
        ]
        typ, response = dst.multiappend(folder, messages)
        if (typ.decode() if isinstance(typ, bytes) else str(typ)).upper() != "OK":
            raise SystemExit(f"floor: MULTIAPPEND to {folder!r} refused: {response!r}")
        mapping.update(zip(uids, appended_uids(response, len(uids)), strict=True))
        stats.copied += len(uids)
        stats.bytes += sum(len(m["msg"]) for m in messages)
    return mapping


def first_pass(src: IMAPClient, dst: IMAPClient, stats: Stats, pipelined: bool) -> dict[str, Any]:
    state: dict[str, Any] = {}
    src.enable("CONDSTORE")  # so that EXAMINE reports HIGHESTMODSEQ
    existing = {name for _flags, _delim, name in dst.list_folders()}
    for flags, _delimiter, folder in src.list_folders():
        if b"\\Noselect" in flags or b"\\NonExistent" in flags:
            continue
        if folder not in existing:
            dst.create_folder(folder)
        info = src.select_folder(folder, readonly=True)
        stats.folders_opened += 1
        mapping = copy_uids(src, dst, folder, "1:*", stats, pipelined) if int(info[b"EXISTS"]) else {}
        state[folder] = {
            "uidvalidity": int(info[b"UIDVALIDITY"]),
            "uidnext": int(info[b"UIDNEXT"]),
            "highestmodseq": int(info.get(b"HIGHESTMODSEQ", 0)),
            "map": {str(k): v for k, v in mapping.items()},
        }
    return state


def later_pass(
    src: IMAPClient, dst: IMAPClient, state: dict[str, Any], stats: Stats, pipelined: bool
) -> dict[str, Any]:
    source_status = list_status(src, STATUS_ITEMS)
    list_status(dst, ("MESSAGES", "UIDNEXT", "UIDVALIDITY"))  # what a real tool must check too
    changed = [
        folder
        for folder, status in source_status.items()
        if folder not in state
        or status["UIDNEXT"] != state[folder]["uidnext"]
        or status.get("HIGHESTMODSEQ", 0) != state[folder]["highestmodseq"]
    ]
    if changed:
        src.enable("CONDSTORE")
    for folder in changed:
        known = state.get(folder)
        if known is None:  # a new source folder: copy it whole
            dst.create_folder(folder)
            known = {"uidvalidity": 0, "uidnext": 1, "highestmodseq": 0, "map": {}}
        info = src.select_folder(folder, readonly=True)
        stats.folders_opened += 1
        uidnext = int(info[b"UIDNEXT"])
        if uidnext > known["uidnext"]:
            new = copy_uids(src, dst, folder, f"{known['uidnext']}:*", stats, pipelined)
            known["map"].update({str(k): v for k, v in new.items() if k >= known["uidnext"]})
        if known["highestmodseq"] and known["uidnext"] > 1:
            changes = uid_fetch(src, f"1:{known['uidnext'] - 1}", ["FLAGS"], [f"CHANGEDSINCE {known['highestmodseq']}"])
            groups: dict[tuple[bytes, ...], list[int]] = {}
            for uid, data in changes.items():
                dst_uid = known["map"].get(str(uid))
                if dst_uid is not None:
                    flags = tuple(sorted(f for f in data[b"FLAGS"] if f.lower() != b"\\recent"))
                    groups.setdefault(flags, []).append(dst_uid)
            if groups:
                dst.select_folder(folder)
                for flags, dst_uids in groups.items():
                    dst.set_flags(dst_uids, list(flags), silent=True)
                    stats.flag_updates += len(dst_uids)
        known.update(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=uidnext,
            highestmodseq=int(info.get(b"HIGHESTMODSEQ", 0)),
        )
        state[folder] = known
    return state


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    spec = json.loads(Path(argv[1]).read_text())
    state_path = Path(spec["state"])
    stats = Stats()
    src, dst = connect(spec["source"]), connect(spec["destination"])
    pipelined = bool(spec.get("pipelined", True))
    if state_path.exists():
        state = later_pass(src, dst, json.loads(state_path.read_text()), stats, pipelined)
    else:
        state = first_pass(src, dst, stats, pipelined)
    for client in (src, dst):
        client.logout()
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_path)
    summary = {
        "copied": stats.copied,
        "bytes": stats.bytes,
        "flag_updates": stats.flag_updates,
        "folders_opened": stats.folders_opened,
        "seconds": round(time.monotonic() - stats.started, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
