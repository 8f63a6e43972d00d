"""Scale-out with `--shard K/N`: the assignment (complete, disjoint, stable, minimal moves when N changes),
the shard's own state database and metrics label, and real processes over one config against Dovecot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mailmirror.config.config_file import load_config
from mailmirror.config.shards import (
    Shard,
    apply_shard,
    assignment,
    parse_shard,
    resolve_shard,
    shard_from_environment,
    shard_of,
)
from mailmirror.errors import UsageError
from mailmirror.lab.dovecot import DovecotServer, LabUser
from mailmirror.service.metrics import Metrics
from mailmirror.state.store import StateStore
from tests.support import ROOT, Mirror, RunningDaemon, account_yaml, fresh_count, require_program, simple_message

NAMES = [f"user{index:05d}@example.org" for index in range(10_000)]


# -- the assignment ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 8, 50])
def test_every_pair_belongs_to_exactly_one_shard(count: int) -> None:
    owners = {name: [k for k in range(count) if Shard(k, count).owns(name)] for name in NAMES[:400]}
    assert all(len(shards) == 1 for shards in owners.values())


def test_the_shards_are_balanced() -> None:
    sizes = Counter(assignment(NAMES, 8).values())
    assert sorted(sizes) == list(range(8))
    assert max(sizes.values()) < 1.15 * len(NAMES) / 8 and min(sizes.values()) > 0.85 * len(NAMES) / 8


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_adding_a_shard_moves_only_the_pairs_the_new_shard_takes(count: int) -> None:
    before, after = assignment(NAMES, count), assignment(NAMES, count + 1)
    moved = [name for name in NAMES if before[name] != after[name]]
    assert all(after[name] == count for name in moved)  # only to the new shard, never between old ones
    share = len(moved) / len(NAMES)
    expected = 1 / (count + 1)
    assert expected * 0.85 < share < expected * 1.15, (share, expected)


def test_the_assignment_is_the_same_in_every_process_and_order() -> None:
    """Not Python's hash(): PYTHONHASHSEED (random per process) must not change it."""
    names = NAMES[:300]
    program = (
        "import json, sys; from mailmirror.config.shards import assignment; "
        "print(json.dumps(assignment(json.load(sys.stdin), 5)))"
    )
    outputs = set()
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps(list(reversed(names))),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT / "daemon")},
        )
        outputs.add(tuple(sorted(json.loads(result.stdout).items())))
    assert outputs == {tuple(sorted(assignment(names, 5).items()))}


# -- naming the shard -------------------------------------------------------------------------------------


def test_parse_shard() -> None:
    assert parse_shard("2/4") == Shard(2, 4)
    assert str(parse_shard(" 0 / 1 ")) == "0/1"
    for bad, fragment in [
        ("4/4", "K goes from 0 to 3"),
        ("1/0", "from 1 to"),
        ("two/4", "is not K/N"),
        ("-1/3", "K/N"),
    ]:
        with pytest.raises(UsageError, match=fragment):
            parse_shard(bad)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"MAILMIRROR_SHARD": "1/3"}, Shard(1, 3)),
        ({"MAILMIRROR_SHARD": "2", "MAILMIRROR_SHARDS": "4"}, Shard(2, 4)),
        ({"MAILMIRROR_SHARDS": "4", "HOSTNAME": "mailmirror-3"}, Shard(3, 4)),
        ({"MAILMIRROR_SHARDS": "5", "POD_NAME": "mm-shard-0", "HOSTNAME": "other-4"}, Shard(0, 5)),
    ],
)
def test_the_shard_from_the_environment(environ: dict[str, str], expected: Shard | None) -> None:
    assert shard_from_environment(environ) == expected


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"MAILMIRROR_SHARD": "2"}, "needs \\$MAILMIRROR_SHARDS"),
        ({"MAILMIRROR_SHARDS": "4", "HOSTNAME": "mailmirror"}, "no shard is named"),
        ({"MAILMIRROR_SHARDS": "4", "HOSTNAME": "mailmirror-4"}, "does not exist among 4"),
        ({"MAILMIRROR_SHARDS": "four", "HOSTNAME": "mailmirror-1"}, "not a number"),
    ],
)
def test_a_bad_environment_is_a_usage_error(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        shard_from_environment(environ)


def test_the_option_wins_over_the_environment() -> None:
    assert resolve_shard("0/2", {"MAILMIRROR_SHARD": "1/2"}) == Shard(0, 2)
    assert resolve_shard(None, {"MAILMIRROR_SHARD": "1/2"}) == Shard(1, 2)


def write_config(tmp_path: Path, names: list[str]) -> Path:
    (tmp_path / "pw").write_text("x\n", encoding="utf-8")
    accounts = "".join(
        f"  {side}:\n    host: {side}.example\n    username: u\n    password: {{file: {tmp_path / 'pw'}}}\n"
        for side in ("a", "b")
    )
    pairs = "".join(f"  {name}:\n    source: a\n    destination: b\n" for name in names)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"state: {{path: {tmp_path / 'state.db'}}}\nmetrics: {{listen: '127.0.0.1:9464'}}\n"
        f"accounts:\n{accounts}pairs:\n{pairs}",
        encoding="utf-8",
    )
    return path


def test_a_sharded_config_has_its_pairs_state_database_and_metrics_port(tmp_path: Path) -> None:
    names = [f"p{index}" for index in range(40)]
    path = write_config(tmp_path, names)
    config = load_config(path)
    seen: list[str] = []
    for index in range(3):
        shard = Shard(index, 3)
        sharded = apply_shard(config, shard, environ={})
        assert list(sharded.effective_pairs()) == [name for name in names if shard_of(name, 3) == index]
        assert list(sharded.pairs) == list(sharded.effective_pairs())
        assert sharded.state.path == tmp_path / f"state.shard-{index}-of-3.db"
        assert sharded.metrics.listen == f"127.0.0.1:{9464 + index}"
        seen += sharded.effective_pairs()
    assert sorted(seen) == sorted(names)
    assert list(config.effective_pairs()) == names and config.state.path == tmp_path / "state.db"  # untouched
    pod = apply_shard(config, Shard(2, 3), environ={"MAILMIRROR_METRICS_LISTEN": "0.0.0.0:9464"})
    assert pod.metrics.listen == "0.0.0.0:9464"
    assert apply_shard(config, None) is config


def test_the_cli_names_the_shard_of_a_pair_another_shard_owns(tmp_path: Path) -> None:
    names = [f"p{index}" for index in range(10)]
    path = write_config(tmp_path, names)
    elsewhere = next(name for name in names if shard_of(name, 3) != 0)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    command = [sys.executable, "-m", "mailmirror", "-c", str(path)]
    result = subprocess.run(
        [*command, "sync", elsewhere, "--shard", "0/3"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 64, result.stderr
    assert f"'{elsewhere}': --shard {shard_of(elsewhere, 3)}/3" in result.stderr
    result = subprocess.run(
        [*command, "status"], capture_output=True, text=True, env={**env, "MAILMIRROR_SHARD": "3/3"}, check=False
    )
    assert result.returncode == 64 and "shard 3 does not exist among 3" in result.stderr, result.stderr


def test_every_series_of_a_shard_carries_its_label() -> None:
    metrics = Metrics(shard="2")
    metrics.configure({"alice": 900.0}, ["old", "new"])
    text = generate_latest(metrics.registry).decode()
    series = [line for line in text.splitlines() if line.startswith("mailmirror_")]
    assert series and all('shard="2"' in line for line in series)
    assert 'mailmirror_pair_up{pair="alice",shard="2"}' not in text  # up: only after a pass
    assert 'mailmirror_pair_consecutive_failures{pair="alice",shard="2"} 0.0' in text
    promtool = require_program("promtool", "prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    assert 'shard="' not in generate_latest(Metrics().registry).decode()  # unsharded: no label


# -- real processes against Dovecot -------------------------------------------------------------------------


def pick_names(count: int, shards: int) -> list[str]:
    """Pair names covering every one of `shards` shards, at least one of which moves when a shard is added."""
    candidates = [f"mbox-{index}" for index in range(200)]
    chosen: list[str] = []
    for name in candidates:
        chosen.append(name)
        if len(chosen) >= count:
            covered = {shard_of(n, shards) for n in chosen} == set(range(shards))
            moves = any(shard_of(n, shards + 1) == shards for n in chosen)
            if covered and moves:
                return chosen
            chosen.pop(0)
    raise AssertionError("no suitable names")


def run_shards(config: Path, count: int, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """`mailmirror sync --shard K/count` for every K, as `count` processes at once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon"), "COLUMNS": "200"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mailmirror", "-c", str(config), *args, "--shard", f"{index}/{count}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for index in range(count)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def synced_pairs(state: Path) -> set[str]:
    store = StateStore(state)
    try:
        return {str(row["pair"]) for row in store.last_runs()}
    finally:
        store.close()


def test_shard_processes_over_one_config_sync_every_pair_once_and_resharding_copies_nothing_twice(
    source_server: DovecotServer, dest_server: DovecotServer
) -> None:
    names = pick_names(6, 3)
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-shards-"))
    accounts, pairs = [], []
    users: dict[str, tuple[LabUser, LabUser]] = {}
    for index, name in enumerate(names):
        source, destination = source_server.add_user(), dest_server.add_user()
        users[name] = (source, destination)
        with source_server.connect(source) as client:
            for number in range(index + 1):
                client.append("INBOX", simple_message(number, tag=name))
        accounts += [
            account_yaml(f"s{index}", source_server, source, directory),
            account_yaml(f"d{index}", dest_server, destination, directory),
        ]
        pairs.append(f"  {name}:\n    source: s{index}\n    destination: d{index}\n")
    config = directory / "mailmirror.yaml"
    config.write_text(
        f"state: {{path: {directory / 'state.db'}}}\n"
        'metrics: {listen: "127.0.0.1:0"}\n'
        "accounts:\n" + "".join(accounts) + "pairs:\n" + "".join(pairs),
        encoding="utf-8",
    )

    for result in run_shards(config, 3, "sync"):
        assert result.returncode == 0, result.stdout + result.stderr
    by_shard = [synced_pairs(directory / f"state.shard-{index}-of-3.db") for index in range(3)]
    assert sorted(name for shard in by_shard for name in shard) == sorted(names)  # complete and disjoint
    assert by_shard == [{name for name in names if shard_of(name, 3) == index} for index in range(3)]
    assert not (directory / "state.db").exists()
    for index, name in enumerate(names):
        assert fresh_count(dest_server, users[name][1]) == index + 1

    # a restart keeps the assignment: each shard finds its own pairs in its own state, nothing to copy
    for result in run_shards(config, 3, "sync"):
        assert result.returncode == 0, result.stderr
    assert [synced_pairs(directory / f"state.shard-{index}-of-3.db") for index in range(3)] == by_shard

    # 3 → 4 shards: the moved pairs start in shard 3's fresh state database and copy nothing twice
    moved = {name for name in names if shard_of(name, 4) == 3}
    assert moved
    for result in run_shards(config, 4, "sync"):
        assert result.returncode == 0, result.stdout + result.stderr
    assert synced_pairs(directory / "state.shard-3-of-4.db") == moved
    for index, name in enumerate(names):
        assert fresh_count(dest_server, users[name][1]) == index + 1
    for result in run_shards(config, 4, "verify"):
        assert result.returncode == 0, result.stdout + result.stderr

    status = subprocess.run(
        [sys.executable, "-m", "mailmirror", "-c", str(config), "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemon"), "COLUMNS": "200", "MAILMIRROR_SHARD": "3/4"},
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "state.shard-3-of-4.db" in status.stdout
    assert {name for name in names if name in status.stdout} == moved


def test_a_shard_daemon_serves_its_pairs_with_the_shard_label(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-shard-daemon-"))
    with mirror.source_server.connect(mirror.src_user) as client:
        client.append("INBOX", simple_message(1, tag="shard-daemon"))
    config = directory / "mailmirror.yaml"
    config.write_text(
        f"state: {{path: {directory / 'state.db'}}}\n"
        'metrics: {listen: "127.0.0.1:0"}\n'
        "accounts:\n"
        + account_yaml("src", mirror.source_server, mirror.src_user, directory)
        + account_yaml("dst", mirror.dest_server, mirror.dst_user, directory)
        + "pairs:\n  test:\n    source: src\n    destination: dst\n",
        encoding="utf-8",
    )
    index = shard_of("test", 2)
    monkeypatch.setenv("MAILMIRROR_SHARDS", "2")
    monkeypatch.setenv("HOSTNAME", f"mailmirror-{index}")  # as in a StatefulSet pod
    daemon = RunningDaemon(config)
    try:
        daemon.wait_for(lambda: fresh_count(mirror.dest_server, mirror.dst_user) == 1, "the shard's pass")
        daemon.wait_for_log(f"(shard {index}/2)")
        _status, text = daemon.get("/metrics")
        assert f'mailmirror_pairs{{shard="{index}"}} 1.0' in text
        assert f'mailmirror_pair_consecutive_failures{{pair="test",shard="{index}"}}' in text
        status, body = daemon.get("/readyz")
        assert status == 200, body
        assert (directory / f"state.shard-{index}-of-2.db").exists()
    finally:
        assert daemon.stop() == 0
