"""`mailmirror run`: the long-running service.

- APScheduler (in process, background threads): one job per pair — `every` (interval, with jitter),
  `cron` (5 fields, timezone), and a first pass right away. A pair never runs twice at once (a job
  instance at a time, plus the pair's lock), `daemon.max_parallel_passes` bounds passes over all pairs,
  and each server gets at most the `max_connections` of its accounts per side.
- A failing pair backs off (30 s, 1 m, 2 m, ... up to `daemon.backoff_max`) without holding up others.
- Push: for the folders in `schedule.idle`, a watcher (`idle.py`) keeps an IDLE connection on the source,
  re-issues IDLE before the 29-minute limit, reconnects with backoff, and on EXISTS/EXPUNGE/FETCH triggers a
  pass of that folder (bursts debounced). The periodic schedule (`schedule.py`) stays as the safety net.
- SIGTERM/SIGINT: passes finish the batch in flight, record it and log out; exit 0 within
  `daemon.stop_timeout`. SIGHUP (systemctl reload): the config is read again; new pairs start, removed
  pairs stop, changed pairs restart; an invalid new config is refused and the old one keeps running.
- systemd: READY=1, STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1 through $NOTIFY_SOCKET.
- Observability (`metrics.listen`): Prometheus metrics on /metrics, liveness on /healthz, readiness on
  /readyz (config loaded, state database writable, every scheduled pair's last success recent enough).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.triggers.date import DateTrigger

from mailmirror.config.config_file import Config, load_config
from mailmirror.config.shards import Shard, apply_shard
from mailmirror.engine.limits import ConnectionLimits
from mailmirror.engine.outcome import PairReport
from mailmirror.engine.pair_pass import PairPass
from mailmirror.errors import (
    ConfigError,
    InternalError,
    LockedError,
    StateStorageError,
    Stopped,
)
from mailmirror.service.health import Check, HealthServer
from mailmirror.service.idle import IdleWatcher
from mailmirror.service.metrics import Metrics
from mailmirror.service.notify import Notifier
from mailmirror.service.readiness import PairHealth, stale_pairs, state_check
from mailmirror.service.resources import open_files_needed, raise_open_file_limit
from mailmirror.service.schedule import Scheduler, expected_interval, pair_trigger, schedule_phase
from mailmirror.state.store import StateStore

log = logging.getLogger(__name__)

PUSH_DEBOUNCE_SECONDS = 0.1
FIRST_BACKOFF_SECONDS = 30.0
LOOP_SECONDS = 5.0  # the main loop wakes at least this often (watchdog, reload, status)


def _log_thread_failure(args: threading.ExceptHookArgs) -> None:
    """A thread that dies of an unexpected exception: one line in the log (a bug to report), never a raw
    traceback on stderr; the traceback with -v."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    log.error(
        "internal error in %s (%s: %s); this is a bug, please report it", name, args.exc_type.__name__, args.exc_value
    )
    if args.exc_value is not None:
        log.debug("thread failure", exc_info=args.exc_value)


class Daemon:
    def __init__(self, config_path: Path, notifier: Notifier | None = None, shard: Shard | None = None) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.shard = shard
        self.config = apply_shard(load_config(config_path), shard)
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.limits = ConnectionLimits(self.config)
        self.health: dict[str, PairHealth] = {}
        self.watchers: dict[str, list[IdleWatcher]] = {}
        self.pair_mutex: dict[str, threading.Lock] = {}
        self.pair_stop: dict[str, threading.Event] = {}  # set when the pair is removed or changed, or on stop
        self.scheduler = Scheduler(
            executors={"default": ThreadPoolExecutor(self.config.daemon.max_parallel_passes)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._lock = threading.Lock()
        self.metrics = Metrics(shard=None if shard is None else str(shard.index))
        self.http: HealthServer | None = None
        self.loop_turned_at = time.monotonic()
        self.state_successes: dict[str, float] = {}  # pair -> end of its last successful pass, from state
        self.state_pending: dict[str, int] = {}  # pair -> its lag after its last pass, from state
        self.reload_refused = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        threading.excepthook = _log_thread_failure
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self._read_state()  # fails early (exit 78) if the database cannot be opened
        raise_open_file_limit(self._open_files_needed())
        if self.config.metrics.enabled:
            metrics = self.config.metrics
            self.http = HealthServer(metrics.host, metrics.port, self.metrics.registry, self.liveness, self.readiness)
            self.http.start()
        self._configure_metrics()
        for name in self.config.effective_pairs():
            self._start_pair(name)
        self.scheduler.start()
        self.notifier.ready()
        shard = "" if self.shard is None else f" (shard {self.shard})"
        log.info("mailmirror run: %d pairs%s from %s", self.config.pair_count(), shard, self.config_path)
        self._update_status()
        interval = self.notifier.watchdog_interval() or LOOP_SECONDS
        while not self.stop_requested.wait(min(interval, LOOP_SECONDS)):
            self.loop_turned_at = time.monotonic()
            self.notifier.watchdog()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self._update_status()
        return self._shutdown()

    def _open_files_needed(self) -> int:
        pairs = self.config.effective_pairs().values()
        watchers = sum(len(pair.schedule.idle) for pair in pairs)
        daemon = self.config.daemon
        return open_files_needed(watchers, daemon.max_connections, daemon.max_parallel_passes)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested.set()

    def _shutdown(self) -> int:
        self.notifier.stopping()
        log.info("mailmirror run: stopping (finishing the batches in flight)")
        for watchers in self.watchers.values():
            for watcher in watchers:
                watcher.stop()
        for event in self.pair_stop.values():
            event.set()
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + self.config.daemon.stop_timeout.total_seconds()
        for name, mutex in list(self.pair_mutex.items()):
            if not mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
                log.warning(
                    "%s: the pass in flight did not end within daemon.stop_timeout; exiting anyway "
                    "(its journal keeps the state consistent)",
                    name,
                )
        if self.http is not None:
            self.http.close()
        log.info("mailmirror run: stopped")
        return 0

    # -- pairs -----------------------------------------------------------------------------------------

    def _start_pair(self, name: str) -> None:
        pair = self.config.effective_pair(name)
        health = self.health.setdefault(name, PairHealth())
        if health.last_success is None:  # new, or never successful in this process: the database may know
            health.last_success = self.state_successes.get(name)
        health.expected_interval = expected_interval(pair)
        self.pair_mutex.setdefault(name, threading.Lock())
        self.pair_stop[name] = threading.Event()
        self.scheduler.add_job(
            self._scheduled_pass,
            trigger=pair_trigger(pair, phase=schedule_phase(name) if self._spread_schedules() else None),
            args=[name],
            id=f"pair:{name}",
            name=f"pass of {name}",
            next_run_time=datetime.now(UTC),
            replace_existing=True,
        )
        self.watchers[name] = []
        for folder in pair.schedule.idle:
            watcher = IdleWatcher(
                name,
                pair,
                self.config,
                folder,
                functools.partial(self.push, name, folder),
                self.metrics.connection_error,
            )
            watcher.start()
            self.watchers[name].append(watcher)

    def _spread_schedules(self) -> bool:
        """More pairs than passes at a time: left alone, every pair of one `every` would come due together
        and wait in line; spread over the interval, the servers see an even load."""
        return self.config.pair_count() > self.config.daemon.max_parallel_passes

    def _stop_pair(self, name: str) -> None:
        if name in self.pair_stop:
            self.pair_stop[name].set()  # a pass in flight ends after its current batch
        for job_id in (f"pair:{name}", f"push:{name}", f"retry:{name}"):
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(job_id)
        for watcher in self.watchers.pop(name, []):
            watcher.stop()

    def push(self, name: str, folder: str) -> None:
        """A watcher saw news in `folder`: a pass of that folder shortly (bursts make one pass)."""
        with self._lock:
            health = self.health.get(name)
            if health is None:
                return  # the pair was removed by a reload
            health.push_folders.add(folder)
            if health.news_at is None:
                health.news_at = time.monotonic()
        self._once(self._push_pass, f"push:{name}", name, PUSH_DEBOUNCE_SECONDS)

    def _once(self, function: Callable[[str], None], job_id: str, name: str, delay: float) -> None:
        """Run function(name) once, `delay` seconds from now (replacing a pending run with the same id)."""
        self.scheduler.add_job(
            function,
            trigger=DateTrigger(datetime.now(UTC) + timedelta(seconds=delay)),
            args=[name],
            id=job_id,
            replace_existing=True,
        )

    def _scheduled_pass(self, name: str) -> None:
        mutex = self.pair_mutex[name]
        if not mutex.acquire(blocking=False):
            with self._lock:  # the pass holding the pair runs this one when it is done
                self.health.setdefault(name, PairHealth()).full_pass_due = True
            log.info("%s: a pass is running; the scheduled one follows it", name)
            return
        try:
            self._pass(name, None)
            self._run_due_full_pass(name)
        finally:
            mutex.release()

    def _push_pass(self, name: str) -> None:
        mutex = self.pair_mutex.get(name)
        if mutex is None:
            return
        with mutex:  # waits for a running pass: the pushed message must not wait for the next schedule
            with self._lock:
                health = self.health.get(name)
                folders = set(health.push_folders) if health else set()
                news_at = health.news_at if health else None
                if health:
                    health.push_folders.clear()
                    health.news_at = None
            if folders and not self.stop_requested.is_set():
                self._pass(name, folders, news_at=news_at)
            self._run_due_full_pass(name)
        with self._lock:
            health = self.health.get(name)
            pending = sorted(health.push_folders) if health else []
        if pending and not self.stop_requested.is_set():  # news arrived while this pass ran
            self.push(name, pending[0])

    def _run_due_full_pass(self, name: str) -> None:
        """With the pair's mutex held: the scheduled pass that found it busy (a busy push folder must not
        starve the pair's other folders)."""
        with self._lock:
            health = self.health.get(name)
            due = health is not None and health.full_pass_due
            if health is not None:
                health.full_pass_due = False
        if due and not self.stop_requested.is_set():
            self._pass(name, None)

    def _pass(self, name: str, folders: set[str] | None, *, news_at: float | None = None) -> None:
        config = self.config
        pair = config.effective_pair(name) if config.has_pair(name) else None
        stop = self.pair_stop.get(name)
        if pair is None or stop is None or stop.is_set():
            return
        with self.limits.for_pair(config, pair):
            progress = self.metrics.pass_started(name)
            pending = None
            try:
                store = StateStore(config.state.path)
            except (ConfigError, StateStorageError) as error:  # e.g. a read-only or full disk: back off, retry
                report = PairReport(name, error=error)
                report.finished = time.monotonic()
            else:
                try:
                    report = PairPass(
                        name,
                        pair,
                        config,
                        store,
                        progress,
                        only_folders=folders,
                        stop=stop,
                        slots=self.limits.extra(config, pair),
                    ).run()
                    with contextlib.suppress(sqlite3.Error):
                        pending = store.backlog(name)
                except BaseException as error:
                    failed = PairReport(name, error=InternalError(f"pair '{name}': pass aborted ({error!r})"))
                    failed.finished = time.monotonic()
                    self.metrics.pass_finished(name, failed, backlog=None)
                    raise
                finally:
                    store.close()
        latency = time.monotonic() - news_at if news_at is not None else None
        self.metrics.pass_finished(name, report, backlog=pending, push_latency=latency)
        self._after_pass(name, report, pushed=folders is not None)
        if folders and isinstance(report.error, LockedError):  # another process has the pair: try again
            with self._lock:
                self.health.setdefault(name, PairHealth()).push_folders |= folders
            self._once(self._push_pass, f"push:{name}", name, 5.0)

    def _after_pass(self, name: str, report: PairReport, *, pushed: bool) -> None:
        if not self.config.has_pair(name):
            return  # removed by a reload while this pass ran
        health = self.health.setdefault(name, PairHealth())
        health.last_report = report
        error = report.error
        kind = "push pass" if pushed else "pass"
        if isinstance(error, Stopped):
            log.info("%s: %s stopped after %.1f s, %d copied", name, kind, report.seconds, report.copied)
            return
        if error is None:
            health.failures = 0
            health.last_success = time.time()
            log.info(
                "%s: %s %s in %.1f s: %d copied, %d flags, %d deleted, %d skipped, %d failed",
                name,
                kind,
                "ok" if report.complete else "done with failures",
                report.seconds,
                report.copied,
                report.total("flags_updated"),
                report.total("deleted"),
                report.skipped,
                report.failed,
            )
            return
        if isinstance(error, LockedError):
            log.warning("%s: %s", name, error)
            return
        health.failures += 1
        delay = min(
            self.config.daemon.backoff_max.total_seconds(),
            FIRST_BACKOFF_SECONDS * 2 ** (health.failures - 1),
        ) * random.uniform(0.9, 1.1)
        log.error("%s: %s failed (%s); retrying in %.0f s", name, kind, error, delay)
        self._once(self._scheduled_pass, f"retry:{name}", name, delay)
        job = self.scheduler.get_job(f"pair:{name}")
        if job is not None and job.next_run_time is not None:
            soonest = datetime.now(UTC) + timedelta(seconds=delay)
            if job.next_run_time < soonest:
                job.modify(next_run_time=soonest)

    # -- reload ----------------------------------------------------------------------------------------

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = apply_shard(load_config(self.config_path), self.shard)
        except ConfigError as error:
            log.error("config reload refused, the previous config keeps running:\n%s", error)
            self.metrics.reloaded(successful=False)
            self.notifier.ready()
            return
        if new.state.path != self.config.state.path:
            log.error(
                "config reload refused: state.path changed (%s -> %s); that needs a restart",
                self.config.state.path,
                new.state.path,
            )
            self.metrics.reloaded(successful=False)
            self.notifier.ready()
            return
        old_endpoint = (self.config.metrics.enabled, self.config.metrics.listen)
        if (new.metrics.enabled, new.metrics.listen) != old_endpoint:
            log.warning("config reload: metrics.enabled and metrics.listen take effect at the next restart")
        old_pairs, new_pairs = self.config.effective_pairs(), new.effective_pairs()
        changed = {
            name
            for name in old_pairs.keys() & new_pairs.keys()
            if _pair_settings(self.config, name) != _pair_settings(new, name)
        }
        removed = old_pairs.keys() - new_pairs.keys()
        added = new_pairs.keys() - old_pairs.keys()
        for name in removed | changed:
            self._stop_pair(name)
        self.config = new
        self.limits = ConnectionLimits(new)
        with self._lock:
            for name in removed:
                self.health.pop(name, None)
        with contextlib.suppress(ConfigError, StateStorageError):  # unreadable now: the passes will say so
            self._read_state()
        self._configure_metrics()  # before the new pairs' first passes can start
        raise_open_file_limit(self._open_files_needed())  # more watchers may need more files
        for name in sorted(added | changed):
            self._start_pair(name)
        self.metrics.reloaded(successful=True)
        log.info(
            "config reloaded: %d pairs (%d added, %d removed, %d changed)",
            len(new_pairs),
            len(added),
            len(removed),
            len(changed),
        )
        self.notifier.ready()
        self._update_status()

    # -- observability -------------------------------------------------------------------------------

    def _read_state(self) -> None:
        """What the state database knows about every pair: last success (readiness, metrics) and lag."""
        store = StateStore(self.config.state.path)
        try:
            self.state_successes = store.last_successes()
            self.state_pending = store.backlog_by_pair()
        finally:
            store.close()

    def _configure_metrics(self) -> None:
        intervals = {name: expected_interval(pair) for name, pair in self.config.effective_pairs().items()}
        self.metrics.configure(
            intervals, self.config.accounts, last_success=self.state_successes, backlog=self.state_pending
        )

    def liveness(self) -> list[Check]:
        age = time.monotonic() - self.loop_turned_at
        return [
            Check("main loop", age < 3 * LOOP_SECONDS + 10, f"last turn {age:.1f} s ago"),
            Check("scheduler", self.scheduler.running, "running" if self.scheduler.running else "not running"),
        ]

    def readiness(self) -> list[Check]:
        config = self.config
        pairs = config.effective_pairs()
        loaded = f"{self.config_path} ({len(pairs)} pairs)"
        if not self.metrics.reload_successful:
            loaded += "; the last reload was refused, the previous config runs (see the log)"
        checks = [Check("config", True, loaded), state_check(config.state.path)]
        factor = config.metrics.stale_after_intervals
        now = time.time()
        with self._lock:
            entries = [(name, self.health.get(name)) for name in sorted(pairs)]
        first_passes = {name for name, pair in list(self.metrics.pairs.items()) if pair.running}
        stale = stale_pairs(entries, first_passes, factor, now)
        checks += stale or [Check("pairs", True, f"every scheduled pair succeeded within {factor:g} intervals")]
        return checks

    def _update_status(self) -> None:
        with self._lock:
            entries = list(self.health.items())
        failing = sorted(name for name, health in entries if health.failures)
        reports = [(name, h.last_report) for name, h in entries if h.last_report is not None]
        text = f"{len(self.health)} pairs, {len(failing)} failing"
        if failing:
            text += f" ({', '.join(failing[:5])})"
        if reports:
            name, report = max(reports, key=lambda item: item[1].finished or 0.0)
            text += f"; last pass: {name}, {report.copied} copied"
        self.notifier.status(text)


def _pair_settings(config: Config, name: str) -> Any:
    pair = config.effective_pair(name)
    return (
        pair.model_dump(mode="json"),
        config.accounts[pair.source].model_dump(mode="json"),
        config.accounts[pair.destination].model_dump(mode="json"),
    )
