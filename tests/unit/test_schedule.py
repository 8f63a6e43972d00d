"""A fleet's scheduled passes are spread over the interval, at a phase that survives a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailmirror.config.config_file import load_config
from mailmirror.service.schedule import pair_trigger, schedule_phase

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
