"""What passes and verifies leave in the state database for `mailmirror status`, `report`, the metrics and
the readiness check, per pair:

- ``runs``: one row per pass (when, outcome, counts, error);
- ``backlog``: per folder, the messages its last pass wanted on the destination and did not get there (the
  lag, reported as mailmirror_pending_messages): read after each pass, never by scanning the mailboxes;
- ``folder_counts``: each mapped folder's messages on both sides at the pair's last full pass;
- ``verifies``: every `mailmirror verify` result.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from mailmirror.state.database import StateDatabase, locked, now_text
from mailmirror.state.records import VerifyRecord


class FleetRecords(StateDatabase):
    """Runs, backlog, folder counts and verify results: the per-pair records that status and report read."""

    # -- backlog ---------------------------------------------------------------------------------------

    @locked
    def set_backlog(self, pair: str, src_folder: str, messages: int) -> None:
        self.db.execute(
            "INSERT INTO backlog (pair, src_folder, messages) VALUES (?, ?, ?) "
            "ON CONFLICT (pair, src_folder) DO UPDATE SET messages = excluded.messages",
            [pair, src_folder, max(0, messages)],
        )

    @locked
    def reduce_backlog(self, pair: str, src_folder: str, copied: int) -> None:
        self.db.execute(
            "UPDATE backlog SET messages = MAX(0, messages - ?) WHERE pair = ? AND src_folder = ?",
            [copied, pair, src_folder],
        )

    @locked
    def backlog(self, pair: str) -> int:
        """Messages the pair's last passes wanted on the destination and did not get there."""
        row = self.db.execute("SELECT SUM(messages) FROM backlog WHERE pair = ?", [pair]).fetchone()
        return int(row[0] or 0)

    @locked
    def backlog_by_pair(self) -> dict[str, int]:
        return {
            pair: int(total) for pair, total in self.db.execute("SELECT pair, SUM(messages) FROM backlog GROUP BY pair")
        }

    @locked
    def prune_backlog(self, pair: str, mapped_src_folders: Iterable[str]) -> None:
        """Forget the lag of folders the pair no longer syncs (excluded, or gone from the source)."""
        keep = sorted(set(mapped_src_folders))
        marks = ", ".join("?" for _ in keep)
        self.db.execute(f"DELETE FROM backlog WHERE pair = ? AND src_folder NOT IN ({marks})", [pair, *keep])

    # -- runs --------------------------------------------------------------------------------------------

    @locked
    def start_run(self, pair: str) -> int:
        cursor = self.db.execute("INSERT INTO runs (pair, started_at) VALUES (?, ?)", [pair, now_text()])
        return int(cursor.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        *,
        outcome: str,
        copied: int,
        failed: int,
        bytes_copied: int,
        error: str | None,
        adopted: int = 0,
        skipped: int = 0,
    ) -> None:
        self.db.execute(
            "UPDATE runs SET finished_at = ?, outcome = ?, copied = ?, failed = ?, bytes = ?, error = ?, "
            "adopted = ?, skipped = ? WHERE id = ?",
            [now_text(), outcome, copied, failed, bytes_copied, error, adopted, skipped, run_id],
        )

    @locked
    def last_successes(self) -> dict[str, float]:
        """Pair -> when its last successful pass (every folder synced, or some messages failed) ended."""
        rows = self.db.execute(
            "SELECT pair, MAX(finished_at) FROM runs WHERE outcome IN ('ok', 'partial') GROUP BY pair"
        )
        return {pair: datetime.fromisoformat(finished).timestamp() for pair, finished in rows if finished}

    @locked
    def last_runs(self) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT pair, started_at, finished_at, outcome, copied, failed, bytes, error FROM runs "
            "WHERE id IN (SELECT MAX(id) FROM runs GROUP BY pair) ORDER BY pair"
        )
        names = ["pair", "started_at", "finished_at", "outcome", "copied", "failed", "bytes", "error"]
        return [dict(zip(names, row, strict=True)) for row in rows]

    # -- fleet status and report ---------------------------------------------------------------------

    @locked
    def record_folder_counts(self, pair: str, counts: Iterable[tuple[str, str, int, int | None]]) -> None:
        """After a full pass: (source folder, destination folder, source messages, destination messages or
        None) of every mapped folder; folders no longer mapped are forgotten."""
        now = now_text()
        rows = [(pair, src, dst, src_messages, dst_messages, now) for src, dst, src_messages, dst_messages in counts]
        with self.transaction():
            self.db.execute("DELETE FROM folder_counts WHERE pair = ?", [pair])
            self.db.conn.executemany(
                "INSERT INTO folder_counts (pair, src_folder, dst_folder, src_messages, dst_messages, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    @locked
    def record_verify(self, pair: str, verdict: VerifyRecord) -> None:
        self.db.execute(
            "INSERT INTO verifies (pair, verified_at, clean, folders, src_messages, dst_messages, differences, "
            "extra, skipped, summary, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                pair,
                now_text(),
                int(verdict.clean),
                verdict.folders,
                verdict.src_messages,
                verdict.dst_messages,
                verdict.differences,
                verdict.extra,
                verdict.skipped,
                verdict.summary,
                verdict.error,
            ],
        )
        self.db.conn.commit()

    @locked
    def fleet_rows(self) -> dict[str, dict[str, object]]:
        """Per pair, everything `status` and `report` show, in a few grouped queries (no per-pair round trips)."""
        result: dict[str, dict[str, object]] = {}

        def row(pair: str) -> dict[str, object]:
            return result.setdefault(pair, {})

        for run in self.last_runs():
            row(str(run["pair"])).update({f"last_{key}": value for key, value in run.items() if key != "pair"})
        for pair, finished in self.db.execute(
            "SELECT pair, MAX(finished_at) FROM runs WHERE outcome IN ('ok', 'partial') GROUP BY pair"
        ):
            row(pair)["last_success"] = finished
        for pair, copied, adopted, runs in self.db.execute(
            "SELECT pair, SUM(copied), SUM(adopted), COUNT(*) FROM runs GROUP BY pair"
        ):
            row(pair).update({"copied": int(copied or 0), "adopted": int(adopted or 0), "passes": int(runs)})
        for pair, folders, src, dst, unknown in self.db.execute(
            "SELECT pair, COUNT(*), SUM(src_messages), SUM(dst_messages), SUM(dst_messages IS NULL) "
            "FROM folder_counts GROUP BY pair"
        ):
            row(pair).update(
                {
                    "folders": int(folders),
                    "src_messages": int(src or 0),
                    "dst_messages": None if unknown else int(dst or 0),
                }
            )
        for pair, done in self.db.execute("SELECT pair, COUNT(*) FROM messages WHERE status = 'done' GROUP BY pair"):
            row(pair)["synced"] = int(done)
        for pair, backlog in self.backlog_by_pair().items():
            row(pair)["backlog"] = backlog
        for pair, failed in self.db.execute("SELECT pair, COUNT(*) FROM failures GROUP BY pair"):
            row(pair)["refused"] = int(failed)
        for verify in self.db.execute(
            "SELECT pair, verified_at, clean, folders, src_messages, dst_messages, differences, extra, skipped, "
            "summary, error FROM verifies WHERE id IN (SELECT MAX(id) FROM verifies GROUP BY pair)"
        ):
            names = (
                "at",
                "clean",
                "folders",
                "src_messages",
                "dst_messages",
                "differences",
                "extra",
                "skipped",
                "summary",
                "error",
            )
            row(verify[0])["verify"] = dict(zip(names, verify[1:], strict=True))
        return result

    @locked
    def refusal_reasons(self) -> dict[str, list[tuple[str, int]]]:
        """Per pair: (reason, messages) of the messages the destination refused, most frequent first."""
        reasons: dict[str, list[tuple[str, int]]] = {}
        for pair, reason, count in self.db.execute(
            "SELECT pair, reason, COUNT(*) AS n FROM failures GROUP BY pair, reason ORDER BY pair, n DESC, reason"
        ):
            reasons.setdefault(pair, []).append((reason, int(count)))
        return reasons

    @locked
    def folder_count_rows(self, pair: str) -> list[tuple[str, str, int, int | None]]:
        rows = self.db.execute(
            "SELECT src_folder, dst_folder, src_messages, dst_messages FROM folder_counts WHERE pair = ? "
            "ORDER BY src_folder",
            [pair],
        )
        return [(src, dst, int(s), None if d is None else int(d)) for src, dst, s, d in rows]
