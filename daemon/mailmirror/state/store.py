"""The state store: what each pair has synced, in SQLite (WAL) through sqlite-utils.

Tables (all keyed by pair and source folder name; no secrets anywhere; the schema: state/schema.py):

- ``folders``: both UIDVALIDITYs, the source's UIDNEXT / MESSAGES / HIGHESTMODSEQ seen at the last pass.
- ``messages``: the UID map src_uid → dst_uid with fingerprint, size and the flags last synced. A row is
  written as ``pending`` *before* its APPEND is sent and becomes ``done`` only once the destination
  confirmed it: after a crash, pending rows are resolved against the destination before anything else
  (found by fingerprint → done; not found → dropped and copied again). That journal is what makes a
  copy exactly-once.
- ``failures``: messages the destination refused, with the server's reason (retried on every pass).
- ``deferred``: messages skipped by a rule whose verdict can change (min_age, messages.search).
- ``late_writes``: appends of a lost connection that resolution did not find and copied again: the
  server may still execute the old APPEND late. Watched until their deadline (transfer.late_write_window)
  for a byte-identical copy of our own above the destination UIDNEXT of the resolution, which is removed.
- ``runs``, ``backlog``, ``folder_counts``, ``verifies``: for status, report and metrics
  (state/fleet_records.py).

The database is safe to inspect with the ``sqlite-utils`` CLI while the daemon runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from mailmirror.state.database import locked, now_text
from mailmirror.state.fleet_records import FleetRecords
from mailmirror.state.records import Failure, FolderState, LateWriteWatch, SyncedMessage


def flags_to_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def flags_from_text(text: str) -> frozenset[str]:
    return frozenset(text.split())


class StateStore(FleetRecords):
    """All reads and writes of the state database: the folders, the UID map and journal, refused, deferred
    and late-written messages here; runs, backlog and verify results in `FleetRecords`."""

    # -- folders -----------------------------------------------------------------------------------------

    @locked
    def folder(self, pair: str, src_folder: str) -> FolderState | None:
        row = self.db.execute(
            "SELECT pair, src_folder, dst_folder, src_uidvalidity, dst_uidvalidity, src_uidnext, "
            "src_messages, src_highestmodseq, dst_uidnext FROM folders WHERE pair = ? AND src_folder = ?",
            [pair, src_folder],
        ).fetchone()
        return FolderState(*row) if row else None

    @locked
    def save_folder(self, state: FolderState) -> None:
        self.db.execute(
            "INSERT INTO folders (pair, src_folder, dst_folder, src_uidvalidity, dst_uidvalidity, "
            "src_uidnext, src_messages, src_highestmodseq, dst_uidnext, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (pair, src_folder) DO UPDATE SET dst_folder = excluded.dst_folder, "
            "src_uidvalidity = excluded.src_uidvalidity, dst_uidvalidity = excluded.dst_uidvalidity, "
            "src_uidnext = excluded.src_uidnext, src_messages = excluded.src_messages, "
            "src_highestmodseq = excluded.src_highestmodseq, dst_uidnext = excluded.dst_uidnext, "
            "updated_at = excluded.updated_at",
            [
                state.pair,
                state.src_folder,
                state.dst_folder,
                state.src_uidvalidity,
                state.dst_uidvalidity,
                state.src_uidnext or None,  # a UIDNEXT of 0 is "unknown", never a marker to search from
                state.src_messages,
                state.src_highestmodseq,
                state.dst_uidnext or None,
                now_text(),
            ],
        )

    @locked
    def folders(self, pair: str) -> list[FolderState]:
        rows = self.db.execute(
            "SELECT pair, src_folder, dst_folder, src_uidvalidity, dst_uidvalidity, src_uidnext, "
            "src_messages, src_highestmodseq, dst_uidnext FROM folders WHERE pair = ? ORDER BY src_folder",
            [pair],
        )
        return [FolderState(*row) for row in rows]

    @locked
    def rename_folder(self, pair: str, old: FolderState, new_src_folder: str, new_dst_folder: str) -> None:
        """A folder renamed on the source (and by us on the destination): its state follows it."""
        with self.transaction():
            for table in ("messages", "failures", "deferred", "backlog", "late_writes"):
                self.db.execute(
                    f"UPDATE {table} SET src_folder = ? WHERE pair = ? AND src_folder = ?",
                    [new_src_folder, pair, old.src_folder],
                )
            self.db.execute(
                "UPDATE folders SET src_folder = ?, dst_folder = ?, updated_at = ? WHERE pair = ? AND src_folder = ?",
                [new_src_folder, new_dst_folder, now_text(), pair, old.src_folder],
            )

    @locked
    def forget_folder(
        self, pair: str, src_folder: str, *, keep_late_writes: bool = False, new_uids: bool = False
    ) -> None:
        """Drop the UID map of a folder (after a UIDVALIDITY change: it is rebuilt by fingerprint).

        ``keep_late_writes``: its open late-write watches stay (a late write can still land in the same
        destination folder); with ``new_uids`` (the destination's UIDVALIDITY changed) their UID floor
        means nothing any more and becomes 1: the whole new folder is looked at."""
        tables = ["messages", "failures", "deferred", "backlog", "folders"]
        if not keep_late_writes:
            tables.append("late_writes")
        with self.transaction():
            for table in tables:
                self.db.execute(f"DELETE FROM {table} WHERE pair = ? AND src_folder = ?", [pair, src_folder])
            if keep_late_writes and new_uids:
                self.db.execute(
                    "UPDATE late_writes SET dst_uid_floor = 1 WHERE pair = ? AND src_folder = ?", [pair, src_folder]
                )

    # -- messages ----------------------------------------------------------------------------------------

    @locked
    def messages(self, pair: str, src_folder: str) -> dict[int, SyncedMessage]:
        rows = self.db.execute(
            "SELECT src_uid, dst_uid, status, fingerprint, size, flags, dst_uid_floor FROM messages "
            "WHERE pair = ? AND src_folder = ?",
            [pair, src_folder],
        )
        return {
            row[0]: SyncedMessage(row[0], row[1], row[2], row[3], row[4], flags_from_text(row[5]), row[6])
            for row in rows
        }

    @locked
    def journal_pending(self, pair: str, src_folder: str, entries: Iterable[SyncedMessage]) -> None:
        """Record appends about to be sent (status pending), in one durable transaction."""
        now = now_text()
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO messages (pair, src_folder, src_uid, dst_uid, status, fingerprint, "
                "size, flags, dst_uid_floor, updated_at) VALUES (?, ?, ?, NULL, 'pending', ?, ?, ?, ?, ?)",
                [
                    (
                        pair,
                        src_folder,
                        e.src_uid,
                        e.fingerprint,
                        e.size,
                        flags_to_text(e.flags),
                        e.dst_uid_floor,
                        now,
                    )
                    for e in entries
                ],
            )

    @locked
    def mark_done(self, pair: str, src_folder: str, entries: Iterable[SyncedMessage]) -> None:
        """Record messages known to be on the destination (appended and confirmed, or found there)."""
        now = now_text()
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO messages (pair, src_folder, src_uid, dst_uid, status, fingerprint, "
                "size, flags, dst_uid_floor, updated_at) VALUES (?, ?, ?, ?, 'done', ?, ?, ?, NULL, ?)",
                [
                    (
                        pair,
                        src_folder,
                        e.src_uid,
                        e.dst_uid,
                        e.fingerprint,
                        e.size,
                        flags_to_text(e.flags),
                        now,
                    )
                    for e in entries
                ],
            )
            keys = [(pair, src_folder, e.src_uid) for e in entries]
            self.db.conn.executemany("DELETE FROM failures WHERE pair = ? AND src_folder = ? AND src_uid = ?", keys)
            self.db.conn.executemany("DELETE FROM deferred WHERE pair = ? AND src_folder = ? AND src_uid = ?", keys)

    @locked
    def drop_pending(self, pair: str, src_folder: str, src_uids: Iterable[int]) -> None:
        """Pending appends that never reached the destination: forget them so they are copied again."""
        with self.transaction():
            self.db.conn.executemany(
                "DELETE FROM messages WHERE pair = ? AND src_folder = ? AND src_uid = ? AND status = 'pending'",
                [(pair, src_folder, uid) for uid in src_uids],
            )

    @locked
    def update_flags(self, pair: str, src_folder: str, flags_by_src_uid: dict[int, frozenset[str]]) -> None:
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE messages SET flags = ?, updated_at = ? WHERE pair = ? AND src_folder = ? AND src_uid = ?",
                [(flags_to_text(f), now_text(), pair, src_folder, uid) for uid, f in flags_by_src_uid.items()],
            )

    @locked
    def forget_messages(self, pair: str, src_folder: str, src_uids: Iterable[int]) -> None:
        """Rows of messages gone from the source (expunged, or moved away by mailmirror itself)."""
        keys = [(pair, src_folder, uid) for uid in src_uids]
        with self.transaction():
            for table in ("messages", "failures", "deferred"):
                self.db.conn.executemany(f"DELETE FROM {table} WHERE pair = ? AND src_folder = ? AND src_uid = ?", keys)

    @locked
    def clear_failures(self, pair: str, src_folder: str, src_uids: Iterable[int]) -> None:
        self.db.conn.executemany(
            "DELETE FROM failures WHERE pair = ? AND src_folder = ? AND src_uid = ?",
            [(pair, src_folder, uid) for uid in src_uids],
        )
        self.db.conn.commit()

    @locked
    def folders_needing_attention(self, pair: str, now: datetime | None = None) -> set[str]:
        """Source folders with unconfirmed appends, failed messages, deferred messages due at ``now`` (the
        engine's clock) or late-write watches: never skipped by the fast path."""
        rows = self.db.execute(
            "SELECT src_folder FROM messages WHERE pair = ? AND status = 'pending' "
            "UNION SELECT src_folder FROM failures WHERE pair = ? "
            "UNION SELECT src_folder FROM deferred WHERE pair = ? AND eligible_at <= ? "
            "UNION SELECT src_folder FROM late_writes WHERE pair = ?",
            [pair, pair, pair, now_text(now), pair],
        )
        return {row[0] for row in rows}

    @locked
    def fingerprints(self, pair: str, src_folders: Iterable[str]) -> frozenset[str]:
        folders = list(src_folders)
        if not folders:
            return frozenset()
        marks = ", ".join("?" for _ in folders)
        rows = self.db.execute(
            f"SELECT fingerprint FROM messages WHERE pair = ? AND status = 'done' AND src_folder IN ({marks})",
            [pair, *folders],
        )
        return frozenset(row[0] for row in rows)

    @locked
    def failed_uids(self, pair: str, src_folder: str) -> list[int]:
        rows = self.db.execute(
            "SELECT src_uid FROM failures WHERE pair = ? AND src_folder = ? ORDER BY src_uid", [pair, src_folder]
        )
        return [row[0] for row in rows]

    @locked
    def record_deferred(self, pair: str, src_folder: str, entries: Iterable[tuple[int, str, datetime | None]]) -> None:
        """Skipped messages to look at again: (src_uid, reason, eligible_at or None)."""
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO deferred (pair, src_folder, src_uid, reason, eligible_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        pair,
                        src_folder,
                        uid,
                        reason,
                        when.astimezone(UTC).isoformat(timespec="seconds") if when else None,
                    )
                    for uid, reason, when in entries
                ],
            )

    @locked
    def deferred_uids(self, pair: str, src_folder: str, now: datetime | None = None) -> tuple[list[int], list[int]]:
        """(UIDs waiting for messages.search to match, UIDs old enough for min_age at ``now``)."""
        rows = self.db.execute(
            "SELECT src_uid, eligible_at FROM deferred WHERE pair = ? AND src_folder = ? ORDER BY src_uid",
            [pair, src_folder],
        ).fetchall()
        due = now_text(now)
        return [uid for uid, at in rows if at is None], [uid for uid, at in rows if at is not None and at <= due]

    # -- late writes -------------------------------------------------------------------------------------

    @locked
    def watch_late_writes(
        self, pair: str, src_folder: str, entries: Iterable[SyncedMessage], dst_uid_floor: int, deadline: datetime
    ) -> None:
        """Appends of a lost connection that were not found and are copied again: watch for their late copy."""
        when = deadline.astimezone(UTC).isoformat(timespec="seconds")
        with self.transaction():
            self.db.conn.executemany(
                "INSERT INTO late_writes (pair, src_folder, src_uid, fingerprint, dst_uid_floor, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(pair, src_folder, e.src_uid, e.fingerprint, dst_uid_floor, when) for e in entries],
            )

    @locked
    def late_write_watches(self, pair: str, src_folder: str) -> list[LateWriteWatch]:
        rows = self.db.execute(
            "SELECT id, src_uid, fingerprint, dst_uid_floor, deadline FROM late_writes "
            "WHERE pair = ? AND src_folder = ? ORDER BY id",
            [pair, src_folder],
        )
        return [LateWriteWatch(i, uid, fp, floor, datetime.fromisoformat(at)) for i, uid, fp, floor, at in rows]

    @locked
    def close_late_write_watches(self, ids: Iterable[int]) -> None:
        with self.transaction():
            self.db.conn.executemany("DELETE FROM late_writes WHERE id = ?", [(i,) for i in ids])

    @locked
    def claimed_dst_uids(self, dst_folder: str) -> set[int]:
        """Destination UIDs of this folder that any pair's state claims (copied or adopted): never removed
        as a late write. Cautious: pairs into another account's folder of the same name count too, and so do
        folders not saved yet (a first pass that did not finish)."""
        rows = self.db.execute(
            "SELECT m.dst_uid FROM messages m LEFT JOIN folders f ON f.pair = m.pair AND f.src_folder = m.src_folder "
            "WHERE (f.dst_folder = ? OR f.dst_folder IS NULL) AND m.dst_uid IS NOT NULL",
            [dst_folder],
        )
        return {row[0] for row in rows}

    @locked
    def pending_fingerprints(self, dst_folder: str, pair: str, src_folder: str) -> set[str]:
        """Fingerprints of unconfirmed appends (no destination UID yet) of every other source folder into
        ``dst_folder`` (any pair; folders not saved yet count too): their copy may be on the destination
        already, unclaimed only until its folder marks it done. Never taken for a late write of ours."""
        rows = self.db.execute(
            "SELECT m.fingerprint FROM messages m "
            "LEFT JOIN folders f ON f.pair = m.pair AND f.src_folder = m.src_folder "
            "WHERE (f.dst_folder = ? OR f.dst_folder IS NULL) AND m.dst_uid IS NULL "
            "AND NOT (m.pair = ? AND m.src_folder = ?)",
            [dst_folder, pair, src_folder],
        )
        return {row[0] for row in rows}

    # -- failures ----------------------------------------------------------------------------------------

    @locked
    def record_failure(self, pair: str, src_folder: str, src_uid: int, reason: str) -> None:
        now = now_text()
        self.db.execute(
            "INSERT INTO failures (pair, src_folder, src_uid, reason, attempts, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (pair, src_folder, src_uid) DO UPDATE SET "
            "reason = excluded.reason, attempts = attempts + 1, last_seen = excluded.last_seen",
            [pair, src_folder, src_uid, reason, now, now],
        )

    @locked
    def failures(self, pair: str) -> list[Failure]:
        rows = self.db.execute(
            "SELECT src_folder, src_uid, reason, attempts FROM failures WHERE pair = ? ORDER BY src_folder, src_uid",
            [pair],
        )
        return [Failure(*row) for row in rows]
