"""When the daemon runs a pair's passes: its APScheduler trigger (`every` with jitter, `cron` in a
timezone, or the first pass only), the longest gap a pair should go without a pass (readiness and the
staleness metrics), and the scheduler the daemon runs them on."""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from mailmirror.config.crontab import cron_trigger
from mailmirror.config.pair import Pair

log = logging.getLogger(__name__)


def pair_trigger(pair: Pair, *, phase: float | None = None) -> BaseTrigger:
    """The pair's passes after its first (which the daemon runs at once). With a ``phase`` (a fraction of
    the interval, see `schedule_phase`), `every` passes start at that point of the interval, so that a
    fleet's passes are spread evenly over it instead of all coming due together: the second pass is then
    less than one interval after the first, and every pass after it `every` apart."""
    schedule = pair.schedule
    jitter = int(schedule.jitter.total_seconds()) or None
    if schedule.cron:
        trigger = cron_trigger(schedule.cron, schedule.timezone)
        trigger.jitter = jitter
        return trigger
    if schedule.every:
        seconds = max(1.0, schedule.every.total_seconds())
        if phase is None:
            return IntervalTrigger(seconds=seconds, jitter=jitter)
        start = datetime.now(UTC) + timedelta(seconds=seconds * phase)
        return _PhasedIntervalTrigger(seconds=seconds, jitter=jitter, start_date=start)
    return DateTrigger(datetime.now(UTC))  # no schedule: the first pass only (and IDLE pushes)


class _PhasedIntervalTrigger(IntervalTrigger):  # type: ignore[misc]
    """An interval from ``start_date`` on, also when a pass ran before it (the daemon's first pass, at
    once): APScheduler's own trigger counts the interval from the previous run instead."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None and previous_fire_time < self.start_date:
            previous_fire_time = None
        return super().get_next_fire_time(previous_fire_time, now)  # type: ignore[no-any-return]


def schedule_phase(pair_name: str) -> float:
    """A stable fraction in [0, 1) for a pair: the same after a restart, evenly spread over many pairs."""
    digest = hashlib.blake2b(pair_name.encode("utf-8"), digest_size=8, person=b"mm-phase").digest()
    return int.from_bytes(digest, "big") / 2**64


def expected_interval(pair: Pair) -> float | None:
    """The longest time a pair should go between two passes on schedule: `every` plus jitter, or the
    longest gap between its cron times plus jitter. None without a schedule."""
    schedule = pair.schedule
    jitter = schedule.jitter.total_seconds()
    if schedule.cron:
        return cron_longest_gap(schedule.cron, schedule.timezone) + jitter or None
    if schedule.every:
        return schedule.every.total_seconds() + jitter
    return None


@functools.lru_cache(maxsize=1024)
def cron_longest_gap(expression: str, timezone: str | None) -> float:
    """The longest gap between two runs of a cron schedule, over at least five weeks of its runs (so that
    nights, weekends and month boundaries are in; at most 5000 runs, enough for every-minute crons to
    show their steady gap) or, for rare schedules, up to a bit more than a year."""
    trigger = cron_trigger(expression, timezone)
    first = fire = trigger.get_next_fire_time(None, datetime.now(UTC))
    longest, count = 0.0, 0
    while fire is not None and first is not None and count < 5000:
        following = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if following is None:
            break
        longest = max(longest, (following - fire).total_seconds())
        count += 1
        span = following - first
        if span > timedelta(days=400) or (span > timedelta(days=35) and count >= 3):
            break
        fire = following
    return longest


class Scheduler(BackgroundScheduler):  # type: ignore[misc]
    """APScheduler's background scheduler, without its shutdown race: a one-off job that ran while
    `shutdown()` stopped the scheduler is no longer found when the scheduler's thread removes it, which
    raised JobLookupError (a thread traceback) at every such stop. A pass that comes due while the pair's
    previous one still runs or waits for a free slot is skipped, as APScheduler does; while a spread
    pair's first pass runs or waits, that is said at INFO (in a fleet's first round many spread passes
    come due so), later as APScheduler's WARNING (the pair cannot keep up with its schedule)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        scheduler_log = logging.getLogger("apscheduler.scheduler")
        if not any(isinstance(f, _SkippedPassNote) for f in scheduler_log.filters):
            scheduler_log.addFilter(_SkippedPassNote())

    def remove_job(self, job_id: str, jobstore: str | None = None) -> None:
        try:
            super().remove_job(job_id, jobstore)
        except JobLookupError:
            if self.state != STATE_STOPPED:
                raise


class _SkippedPassNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job = record.args[0] if isinstance(record.args, tuple) and record.args else None
        job_id = getattr(job, "id", "")
        trigger = getattr(job, "trigger", None)
        if (
            "maximum number of running instances" not in str(record.msg)
            or not job_id.startswith("pair:")
            or not isinstance(trigger, _PhasedIntervalTrigger)
            or datetime.now(UTC) >= trigger.start_date + trigger.interval
        ):
            return True  # past its first interval, a skipped pass means the pair cannot keep up: a warning
        log.info("%s: a scheduled pass came due while its first pass ran or waited; skipped", job_id[5:])
        return False
