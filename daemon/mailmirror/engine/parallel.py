"""`mailmirror sync` of several pairs: their passes run side by side, as under `mailmirror run`.

Up to `parallel` passes at once, under the same connection limits as the daemon (each server gets at most
its accounts' max_connections, `daemon.max_connections` in all). Reports come back in the order the
passes end. A stop request ends the passes under way between batches, with their state recorded, and
the pairs not started yet are reported as stopped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

from mailmirror.config.config_file import Config
from mailmirror.engine.limits import ConnectionLimits
from mailmirror.engine.outcome import PairReport, Progress
from mailmirror.engine.pair_pass import PairPass, PairPreview
from mailmirror.errors import ConfigError, InternalError, StateStorageError, Stopped
from mailmirror.state.store import StateStore


class ParallelPasses:
    def __init__(
        self,
        config: Config,
        names: Sequence[str],
        progress: Progress,
        *,
        parallel: int,
        dry_run: bool = False,
        full: bool = False,
        force_deletions: bool = False,
    ) -> None:
        self.config = config
        self.progress = progress
        self.dry_run, self.full, self.force_deletions = dry_run, full, force_deletions
        self.limits = ConnectionLimits(config)
        self.stop = threading.Event()
        self.waiting = list(names)
        self.remaining = len(names)
        self.threads = [
            threading.Thread(target=self._work, name=f"pass-{index}", daemon=True)
            for index in range(max(1, min(parallel, len(names))))
        ]
        self.lock = threading.Lock()
        self.reports: queue.Queue[PairReport] = queue.Queue()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def next_report(self, timeout: float | None = None) -> PairReport | None:
        """The next pass to end (None once `timeout` seconds passed without one)."""
        try:
            report = self.reports.get(timeout=timeout)
        except queue.Empty:
            return None
        self.remaining -= 1
        return report

    def _work(self) -> None:
        while True:
            with self.lock:
                if not self.waiting:
                    return
                name = self.waiting.pop(0)
            try:
                report = self._pass(name)
            except BaseException as error:  # a bug: this pair's report says so, the others go on; sync never hangs
                report = _ended(PairReport(name, error=InternalError(f"pair '{name}': pass aborted ({error!r})")))
            self.reports.put(report)

    def _pass(self, name: str) -> PairReport:
        pair = self.config.effective_pair(name)
        with self.limits.for_pair(self.config, pair):
            if self.stop.is_set():
                return _ended(PairReport(name, error=Stopped(f"pair '{name}': not started (stop requested)")))
            try:
                store = StateStore(self.config.state.path)
            except (ConfigError, StateStorageError) as error:
                return _ended(PairReport(name, error=error))
            try:
                pair_pass = PairPreview if self.dry_run else PairPass
                return pair_pass(
                    name,
                    pair,
                    self.config,
                    store,
                    self.progress,
                    stop=self.stop,
                    slots=self.limits.extra(self.config, pair),
                    full=self.full,
                    force_deletions=self.force_deletions,
                ).run()
            finally:
                store.close()


def _ended(report: PairReport) -> PairReport:
    report.finished = time.monotonic()
    return report
