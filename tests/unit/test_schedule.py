"""A fleet's scheduled passes are spread over the interval, at a phase that survives a restart."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.service.schedule import Scheduler, pair_trigger, schedule_phase

CONFIG = """\
state: {path: state.db}
accounts:
  a: {host: old.example, username: x, password: {env: X}}
  b: {host: new.example, username: y, password: {env: X}}
pairs:
  p: {source: a, destination: b, schedule: {every: 10m}}
"""


def test_phases_are_stable_and_spread_evenly() -> None:
    names = [f"staff-user{i}" for i in range(2000)]
    phases = [schedule_phase(name) for name in names]
    assert phases == [schedule_phase(name) for name in names]
    assert all(0.0 <= phase < 1.0 for phase in phases)
    tenths = [sum(1 for phase in phases if k / 10 <= phase < (k + 1) / 10) for k in range(10)]
    assert min(tenths) > 150 and max(tenths) < 250  # 200 expected in each tenth


def test_a_spread_pair_comes_due_within_one_interval_then_every_interval(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    pair = load_config(tmp_path / "c.yaml").effective_pair("p")
    now = datetime.now(UTC)
    spread = pair_trigger(pair, phase=0.25)
    second = spread.get_next_fire_time(now, now)
    assert timedelta(minutes=2.4) < second - now < timedelta(minutes=2.6)
    assert spread.get_next_fire_time(second, second + timedelta(seconds=1)) - second == timedelta(minutes=10)
    plain = pair_trigger(pair)
    assert timedelta(minutes=9.9) < plain.get_next_fire_time(now, now) - now <= timedelta(minutes=10)


def test_a_spread_pass_skipped_in_the_first_round_is_said_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from apscheduler.triggers.date import DateTrigger

    (tmp_path / "c.yaml").write_text(CONFIG)
    pair = load_config(tmp_path / "c.yaml").effective_pair("p")
    scheduler = Scheduler()
    job = scheduler.add_job(print, trigger=pair_trigger(pair, phase=0.5), id="pair:staff-alice")
    other = scheduler.add_job(print, trigger=DateTrigger(datetime.now(UTC)), id="report")
    unspread = scheduler.add_job(print, trigger=pair_trigger(pair), id="pair:staff-bob")
    apscheduler_log = logging.getLogger("apscheduler.scheduler")
    skipped = 'Execution of job "%s" skipped: maximum number of running instances reached (%d)'
    with caplog.at_level(logging.INFO):
        apscheduler_log.warning(skipped, job, 1)
        apscheduler_log.warning(skipped, other, 1)
        apscheduler_log.warning(skipped, unspread, 1)
    said = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0] == (
        "mailmirror.service.schedule",
        "INFO",
        "staff-alice: a scheduled pass came due while its first pass ran or waited; skipped",
    )
    assert said[1][:2] == ("apscheduler.scheduler", "WARNING")  # not a pair's pass: as APScheduler says it
    assert said[2][:2] == ("apscheduler.scheduler", "WARNING")  # no spread: a pass that cannot keep up
