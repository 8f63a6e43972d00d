"""`mailmirror run`: the long-running service.

- APScheduler (in process, background threads): one job per pair — `every` (interval, with jitter),
  `cron` (5 fields, timezone), and a first pass right away. A pair never runs twice at once (a job
  instance at a time, plus the pair's lock), `daemon.max_parallel_passes` bounds passes over all pairs,
  and each server gets at most the `max_connections` of its accounts per side.
- A failing pair backs off (30 s, 1 m, 2 m, ... up to `daemon.backoff_max`) without holding up others.
- Push: for the folders in `schedule.idle`, a watcher keeps an IDLE connection on the source, re-issues
  IDLE before the 29-minute limit, reconnects with backoff, and on EXISTS/EXPUNGE/FETCH triggers a pass of
  that folder (bursts debounced). The periodic schedule stays as the safety net.
- SIGTERM/SIGINT: passes finish the batch in flight, record it and log out; exit 0 within
  `daemon.stop_timeout`. SIGHUP (systemctl reload): the config is read again; new pairs start, removed
  pairs stop, changed pairs restart; an invalid new config is refused and the old one keeps running.
- systemd: READY=1, STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1 through $NOTIFY_SOCKET.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from imapclient.exceptions import IMAPClientError

from mailmirror.config import Config, Pair, load_config
from mailmirror.errors import ConfigError, LockedError, MailmirrorError, Stopped
from mailmirror.imap import Session
from mailmirror.notify import Notifier
from mailmirror.state import StateStore
from mailmirror.sync import PairPass, PairReport

log = logging.getLogger(__name__)

IDLE_RENEW_SECONDS = 25 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
PUSH_DEBOUNCE_SECONDS = 0.1
FIRST_BACKOFF_SECONDS = 30.0
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def cron_trigger(expression: str, timezone: str | None) -> CronTrigger:
    """A 5-field crontab as APScheduler wants it (its day_of_week counts from Monday = 0; cron's from
    Sunday = 0 or 7): numeric days are turned into names."""
    minute, hour, day, month, day_of_week = expression.split()
    day_of_week = re.sub(r"(?<![/\d])\d(?!\d)", lambda m: DAYS[int(m.group())], day_of_week)
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=day_of_week,
        timezone=ZoneInfo(timezone) if timezone else None,
    )


def pair_trigger(pair: Pair) -> CronTrigger | IntervalTrigger | DateTrigger:
    schedule = pair.schedule
    jitter = int(schedule.jitter.total_seconds()) or None
    if schedule.cron:
        trigger = cron_trigger(schedule.cron, schedule.timezone)
        trigger.jitter = jitter
        return trigger
    if schedule.every:
        return IntervalTrigger(seconds=max(1.0, schedule.every.total_seconds()), jitter=jitter)
    return DateTrigger(datetime.now(UTC))  # no schedule: the first pass only (and IDLE pushes)


class ConnectionLimits:
    """At most the accounts' max_connections per server (host:port), shared by all pairs, per side; and at
    most daemon.max_connections connections in all. A pass waits for its first connection per side; the
    extra ones of its transfer workers are taken only when free (`extra`), so passes never wait on
    each other for them."""

    def __init__(self, config: Config) -> None:
        limits: dict[str, int] = {}
        for account in config.accounts.values():
            key = f"{account.host}:{account.effective_port}"
            limits[key] = min(limits.get(key, account.max_connections), account.max_connections)
        self._slots = {key: threading.BoundedSemaphore(value) for key, value in limits.items()}
        self._total = _Slots(config.daemon.max_connections)

    def _keys(self, config: Config, pair: Pair) -> list[str]:
        names = (pair.source, pair.destination)
        return sorted({f"{config.accounts[name].host}:{config.accounts[name].effective_port}" for name in names})

    @contextlib.contextmanager
    def for_pair(self, config: Config, pair: Pair) -> Iterator[None]:
        keys = self._keys(config, pair)
        taken = []
        total = False
        try:
            for key in keys:  # sorted: two pairs never wait on each other in opposite orders
                self._slots[key].acquire()
                taken.append(key)
            total = self._total.acquire(2)  # last: whoever holds these is running, not waiting
            yield
        finally:
            if total:
                self._total.release(2)
            for key in reversed(taken):
                self._slots[key].release()

    def extra(self, config: Config, pair: Pair) -> _ExtraSlots:
        return _ExtraSlots(self, self._keys(config, pair))


class _Slots:
    """A counting semaphore that takes several units at once (all or none)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.cond = threading.Condition()

    def acquire(self, count: int, *, blocking: bool = True) -> bool:
        with self.cond:
            if not blocking and self.free < count:
                return False
            self.cond.wait_for(lambda: self.free >= count)
            self.free -= count
            return True

    def release(self, count: int) -> None:
        with self.cond:
            self.free += count
            self.cond.notify_all()


class _ExtraSlots:
    """One more connection per side for a pass's transfer worker, if free now (sync.ExtraConnections)."""

    def __init__(self, limits: ConnectionLimits, keys: list[str]) -> None:
        self.limits = limits
        self.keys = keys

    def try_acquire(self) -> bool:
        taken: list[str] = []
        for key in self.keys:
            if not self.limits._slots[key].acquire(blocking=False):
                break
            taken.append(key)
        if len(taken) == len(self.keys) and self.limits._total.acquire(2, blocking=False):
            return True
        for key in taken:
            self.limits._slots[key].release()
        return False

    def release(self) -> None:
        self.limits._total.release(2)
        for key in self.keys:
            self.limits._slots[key].release()


@dataclass
class PairHealth:
    failures: int = 0
    last_success: float | None = None
    last_report: PairReport | None = None
    push_folders: set[str] = field(default_factory=set)
    full_pass_due: bool = False  # a scheduled pass found a push pass running: run it right after


class IdleWatcher(threading.Thread):
    """Keeps an IDLE connection on one source folder and calls `changed` when the server reports news."""

    def __init__(self, pair_name: str, pair: Pair, config: Config, folder: str, changed: Callable[[], None]) -> None:
        super().__init__(name=f"idle:{pair_name}:{folder}", daemon=True)
        self.pair_name = pair_name
        self.account_name = pair.source
        self.account = config.accounts[pair.source]
        self.folder = folder
        self.changed = changed
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._watch()
                backoff = 1.0
            except (MailmirrorError, IMAPClientError, OSError) as error:
                log.warning(
                    "%s: IDLE on %s interrupted (%s); reconnecting in %.0f s",
                    self.pair_name,
                    self.folder,
                    error,
                    backoff,
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 300.0)

    def _watch(self) -> None:
        with Session.open(self.account_name, self.account) as session:
            if not session.has("IDLE"):
                log.warning(
                    "%s: the source server does not offer IDLE; %s is synced on schedule only",
                    self.pair_name,
                    self.folder,
                )
                self.stopping.wait()
                return
            session.select(self.folder, readonly=True)
            client = session.client
            log.info("%s: watching %s with IDLE", self.pair_name, self.folder)
            self.changed()  # mail may have arrived while this watcher was (re)connecting
            while not self.stopping.is_set():
                client.idle()
                started = time.monotonic()
                news = False
                while not self.stopping.is_set() and time.monotonic() - started < IDLE_RENEW_SECONDS:
                    responses = client.idle_check(timeout=1)
                    if any(len(r) > 1 and r[1] in (b"EXISTS", b"EXPUNGE", b"FETCH") for r in responses):
                        news = True
                        break
                _text, late = client.idle_done()
                if news or any(len(r) > 1 and r[1] in (b"EXISTS", b"EXPUNGE", b"FETCH") for r in late):
                    self.changed()


class Daemon:
    def __init__(self, config_path: Path, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.config = load_config(config_path)
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.limits = ConnectionLimits(self.config)
        self.health: dict[str, PairHealth] = {}
        self.watchers: dict[str, list[IdleWatcher]] = {}
        self.pair_mutex: dict[str, threading.Lock] = {}
        self.pair_stop: dict[str, threading.Event] = {}  # set when the pair is removed or changed, or on stop
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(self.config.daemon.max_parallel_passes)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        # a pair's passes: pair name -> the folders waiting for a push pass (None: a full pass is due)
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        StateStore(self.config.state.path).close()  # fail early (exit 78) if the database cannot be opened
        for name in self.config.effective_pairs():
            self._start_pair(name)
        self.scheduler.start()
        self.notifier.ready()
        log.info("mailmirror run: %d pairs from %s", len(self.config.effective_pairs()), self.config_path)
        self._update_status()
        interval = self.notifier.watchdog_interval() or 5.0
        while not self.stop_requested.wait(min(interval, 5.0)):
            self.notifier.watchdog()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self._update_status()
        return self._shutdown()

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
        log.info("mailmirror run: stopped")
        return 0

    # -- pairs -----------------------------------------------------------------------------------------

    def _start_pair(self, name: str) -> None:
        pair = self.config.effective_pairs()[name]
        self.health.setdefault(name, PairHealth())
        self.pair_mutex.setdefault(name, threading.Lock())
        self.pair_stop[name] = threading.Event()
        self.scheduler.add_job(
            self._scheduled_pass,
            trigger=pair_trigger(pair),
            args=[name],
            id=f"pair:{name}",
            name=f"pass of {name}",
            next_run_time=datetime.now(UTC),
            replace_existing=True,
        )
        self.watchers[name] = []
        for folder in pair.schedule.idle:
            watcher = IdleWatcher(name, pair, self.config, folder, functools.partial(self.push, name, folder))
            watcher.start()
            self.watchers[name].append(watcher)

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
            if name not in self.health:
                return  # the pair was removed by a reload
            self.health[name].push_folders.add(folder)
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
                if health:
                    health.push_folders.clear()
            if folders and not self.stop_requested.is_set():
                self._pass(name, folders)
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

    def _pass(self, name: str, folders: set[str] | None) -> None:
        config = self.config
        pair = config.effective_pairs().get(name)
        stop = self.pair_stop.get(name)
        if pair is None or stop is None or stop.is_set():
            return
        with self.limits.for_pair(config, pair):
            store = StateStore(config.state.path)
            try:
                report = PairPass(
                    name, pair, config, store, only_folders=folders, stop=stop, slots=self.limits.extra(config, pair)
                ).run()
            finally:
                store.close()
        self._after_pass(name, report, pushed=folders is not None)
        if folders and isinstance(report.error, LockedError):  # another process has the pair: try again
            with self._lock:
                self.health.setdefault(name, PairHealth()).push_folders |= folders
            self._once(self._push_pass, f"push:{name}", name, 5.0)

    def _after_pass(self, name: str, report: PairReport, *, pushed: bool) -> None:
        if name not in self.config.effective_pairs():
            return  # removed by a reload while this pass ran
        health = self.health.setdefault(name, PairHealth())
        health.last_report = report
        error = report.error
        kind = "push pass" if pushed else "pass"
        if error is None or isinstance(error, Stopped):
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
            new = load_config(self.config_path)
        except ConfigError as error:
            log.error("config reload refused, the previous config keeps running:\n%s", error)
            self.notifier.ready()
            return
        if new.state.path != self.config.state.path:
            log.error(
                "config reload refused: state.path changed (%s -> %s); that needs a restart",
                self.config.state.path,
                new.state.path,
            )
            self.notifier.ready()
            return
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
        for name in sorted(added | changed):
            self._start_pair(name)
        with self._lock:
            for name in removed:
                self.health.pop(name, None)
        log.info(
            "config reloaded: %d pairs (%d added, %d removed, %d changed)",
            len(new_pairs),
            len(added),
            len(removed),
            len(changed),
        )
        self.notifier.ready()
        self._update_status()

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
    pair = config.effective_pairs()[name]
    return (
        pair.model_dump(mode="json"),
        config.accounts[pair.source].model_dump(mode="json"),
        config.accounts[pair.destination].model_dump(mode="json"),
    )
