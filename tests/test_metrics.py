"""Prometheus metrics and health endpoints of `mailmirror run`, scraped from a daemon syncing Dovecot."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailmirror.engine.outcome import PairReport
from mailmirror.errors import AuthenticationFailure, MailmirrorError, Stopped
from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.service.health import Check, HealthServer
from mailmirror.service.metrics import Metrics, failure_reason, skip_reason
from mailmirror.service.schedule import cron_longest_gap
from tests.promql import dashboard_expressions, metric_names, rule_expressions
from tests.support import ROOT, Mirror, RunningDaemon, make_setup, require_program, simple_message

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(daemon: RunningDaemon) -> Samples:
    status, text = daemon.get("/metrics")
    assert status == 200
    return parse(text)


def wait_for_sample(
    daemon: RunningDaemon, condition: Callable[[Samples], bool], what: str, timeout: float = 30.0
) -> Samples:
    found: list[Samples] = []

    def check() -> bool:
        found[:] = [scrape(daemon)]
        return condition(found[0])

    daemon.wait_for(check, what, timeout)
    return found[0]


def test_failure_and_skip_reasons_are_a_small_fixed_set() -> None:
    assert failure_reason("destination refused: [LIMIT] Mail size is larger than the maximum size") == "refused"
    assert failure_reason("20000 bytes is above the destination's APPENDLIMIT of 100 bytes") == "too_large"
    assert failure_reason("the source did not return the message (expunged meanwhile?)") == "source_missing"
    assert failure_reason("something new") == "other"
    assert skip_reason("younger than messages.min_age") == "min_age"
    assert skip_reason("already copied from another folder (skip_cross_folder_duplicates)") == "duplicate"
    assert skip_reason("larger than messages.max_size (10 bytes)") == "max_size"
    assert skip_reason("who knows") == "other"


@pytest.mark.parametrize(
    ("cron", "longest"),
    [
        ("*/15 * * * *", 900),
        ("*/5 9-17 * * 1-5", (2 * 24 + 15) * 3600 + 5 * 60),  # Friday 17:55 -> Monday 09:00
        ("0 * * * 1-5", 49 * 3600),  # Friday 23:00 -> Monday 00:00
        ("30 2 * * *", 24 * 3600),
        ("0 0 1 * *", 31 * 24 * 3600),  # the longest month
        ("0 0 1 * 1", 7 * 24 * 3600),  # the 1st OR Mondays, as cron reads both day fields
    ],
)
def test_the_expected_interval_of_a_cron_schedule_is_its_longest_gap(cron: str, longest: int) -> None:
    # in UTC: no daylight-saving hour to shift a gap
    assert cron_longest_gap(cron, "UTC") == longest


def test_only_finished_passes_count_as_successes() -> None:
    metrics = Metrics()
    metrics.configure({"p": 60.0}, ["a"])
    metrics.pass_started("p")
    metrics.pass_finished("p", _report("p", Stopped("shutdown")), backlog=None)
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "mailmirror_pair_last_success_timestamp_seconds", pair="p") is None
    assert value(samples, "mailmirror_pair_up", pair="p") is None
    assert value(samples, "mailmirror_passes_total", pair="p", outcome="stopped") == 1
    metrics.pass_finished("p", _report("p", AuthenticationFailure("no", account="a")), backlog=3)
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "mailmirror_pair_up", pair="p") == 0
    assert value(samples, "mailmirror_pending_messages", pair="p") == 3
    assert value(samples, "mailmirror_authentication_failures_total", account="a") == 1
    assert value(samples, "mailmirror_pair_pass_running", pair="p") == 0
    metrics.pass_finished("p", _report("p", None), backlog=0)
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "mailmirror_pair_up", pair="p") == 1
    assert value(samples, "mailmirror_pair_consecutive_failures", pair="p") == 0
    assert value(samples, "mailmirror_pair_last_success_timestamp_seconds", pair="p") is not None
    metrics.configure({}, [])  # removed by a reload: every series goes
    assert not [
        key for key in parse(generate_latest(metrics.registry).decode()) if {"pair", "account"} & dict(key[1]).keys()
    ]


def _report(pair: str, error: MailmirrorError | None) -> PairReport:
    report = PairReport(pair, error=error)
    report.finished = report.started
    return report


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
def test_the_endpoint_listens_on_ipv6_and_survives_a_failing_check() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")

    def broken() -> list[Check]:
        raise RuntimeError("a bug")

    server = HealthServer("::1", 0, Metrics().registry, lambda: [Check("loop", True, "fine")], broken)
    server.start()
    try:
        base = f"http://[::1]:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert b"mailmirror_build_info" in response.read()
        with urllib.request.urlopen(urllib.request.Request(base + "/healthz", method="HEAD"), timeout=5) as response:
            assert (response.status, response.read()) == (200, b"")
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert failed.value.code == 500
    finally:
        server.close()


@pytest.mark.dovecot
def test_scrape_follows_the_passes(start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror) -> None:
    small_destination = mirror.dest_server.add_user(max_mail_size=100_000)
    with mirror.dest_server.connect(small_destination) as client:
        client.select_folder("INBOX")  # created now, not raced for by the daemon's first sessions
    bodies = [simple_message(i) for i in range(5)]
    big = simple_message(99, size=150_000)  # the destination refuses it (quota_max_mail_size)
    huge = simple_message(98, size=250_000)  # left out by messages.max_size
    seed(mirror.src, "INBOX", [SeedMessage(body) for body in [*bodies, big, huge]])
    setup = make_setup(
        mirror.source_server,
        mirror.src_user,
        mirror.dest_server,
        small_destination,
        pair_options="schedule: {every: 1s}\nmessages: {max_size: 200KB}",
    )
    daemon = start_daemon(setup.config_path)

    samples = wait_for_sample(
        daemon, lambda s: value(s, "mailmirror_pair_last_success_timestamp_seconds", pair="test") is not None, "a pass"
    )
    assert value(samples, "mailmirror_messages_copied_total", pair="test") == 5
    assert value(samples, "mailmirror_copied_bytes_total", pair="test") == sum(len(b) for b in bodies)
    assert value(samples, "mailmirror_message_failures_total", pair="test", reason="refused") == 1
    assert value(samples, "mailmirror_pending_messages", pair="test") == 1  # the refused one
    assert value(samples, "mailmirror_messages_skipped_total", pair="test", reason="max_size") == 1
    assert value(samples, "mailmirror_pair_up", pair="test") == 1
    assert value(samples, "mailmirror_pair_expected_interval_seconds", pair="test") == 1
    assert value(samples, "mailmirror_messages", pair="test", side="source") == 7
    assert value(samples, "mailmirror_messages", pair="test", side="destination") == 5
    assert value(samples, "mailmirror_folders", pair="test", side="source") == 1
    assert (value(samples, "mailmirror_passes_total", pair="test", outcome="partial") or 0) >= 1
    assert value(samples, "mailmirror_pass_duration_seconds_count", pair="test") == sum(
        v for (name, labels), v in samples.items() if name == "mailmirror_passes_total"
    )
    assert value(samples, "mailmirror_authentication_failures_total", account="src") == 0
    assert value(samples, "mailmirror_build_info", version=_version()) == 1
    assert value(samples, "mailmirror_pairs") == 1
    assert value(samples, "process_resident_memory_bytes") is not None

    first_success = value(samples, "mailmirror_pair_last_success_timestamp_seconds", pair="test") or 0
    failures_before = value(samples, "mailmirror_message_failures_total", pair="test", reason="refused") or 0
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(10, 13)])
    samples = wait_for_sample(  # counted batch by batch: wait for the end of the pass that copied them
        daemon,
        lambda s: (
            value(s, "mailmirror_messages_copied_total", pair="test") == 8
            and value(s, "mailmirror_pair_pass_running", pair="test") == 0
        ),
        "3 more copies",
    )
    assert value(samples, "mailmirror_copied_bytes_total", pair="test") == sum(
        len(simple_message(i)) for i in [*range(5), *range(10, 13)]
    )
    assert (value(samples, "mailmirror_pair_last_success_timestamp_seconds", pair="test") or 0) > first_success
    # the refused message is tried again on every pass, and counted each time
    assert (value(samples, "mailmirror_message_failures_total", pair="test", reason="refused") or 0) > failures_before
    assert value(samples, "mailmirror_pending_messages", pair="test") == 1

    assert daemon.get("/healthz")[0] == 200
    status, body = daemon.get("/readyz")
    assert status == 200, body
    assert "ok state:" in body and "ok config:" in body

    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name, _labels in samples}
    undocumented = {name for name in families if name.startswith("mailmirror_") and f"`{name}" not in operations}
    assert undocumented == set(), "document every metric in docs/operations.md"
    # every metric a dashboard panel or an alert rule reads is in a live scrape (up comes from Prometheus)
    used = {name for expression in [*dashboard_expressions(), *rule_expressions()] for name in metric_names(expression)}
    assert used - {name for name, _labels in samples} == {"up"}

    _status, text = daemon.get("/metrics")
    promtool = require_program("promtool", "prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")  # the lint prints nothing
    assert daemon.stop() == 0


@pytest.mark.dovecot
def test_authentication_failures_make_the_pair_down_and_the_daemon_unready(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    setup = mirror.setup(pair_options="schedule: {every: 1s}")
    (setup.directory / "src.password").write_text("Xyzzy-not-it-42\n", encoding="utf-8")
    text = setup.config_path.read_text(encoding="utf-8")
    setup.config_path.write_text(
        text.replace('metrics: {listen: "127.0.0.1:0"}', 'metrics: {listen: "127.0.0.1:0", stale_after_intervals: 2}'),
        encoding="utf-8",
    )
    daemon = start_daemon(setup.config_path)
    samples = wait_for_sample(
        daemon, lambda s: value(s, "mailmirror_pair_up", pair="test") is not None, "the first pass to fail"
    )
    assert value(samples, "mailmirror_pair_up", pair="test") == 0
    assert value(samples, "mailmirror_authentication_failures_total", account="src") == 1
    assert value(samples, "mailmirror_authentication_failures_total", account="dst") == 0
    assert value(samples, "mailmirror_passes_total", pair="test", outcome="error") == 1
    assert value(samples, "mailmirror_pair_consecutive_failures", pair="test") == 1
    assert value(samples, "mailmirror_pair_last_success_timestamp_seconds", pair="test") is None
    # never a success, schedule every 1 s, stale after 2 intervals: unready 2 s after the start
    daemon.wait_for(lambda: daemon.get("/readyz")[0] == 503, "/readyz to fail", timeout=15)
    _status, body = daemon.get("/readyz")
    assert "FAIL pair test: no successful pass yet" in body
    assert daemon.get("/healthz")[0] == 200  # alive all the same: it is the pair that fails
    _status, metrics_text = daemon.get("/metrics")
    assert "Xyzzy" not in metrics_text and "Xyzzy" not in body and "Xyzzy" not in daemon.text()
    assert daemon.stop() == 0


@pytest.mark.dovecot
def test_a_removed_pair_leaves_the_scrape_and_a_read_only_state_makes_it_unready(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(1))])
    setup = mirror.setup(pair_options="schedule: {every: 1h}")
    text = setup.config_path.read_text(encoding="utf-8")
    second = "  second:\n    source: src\n    destination: dst\n    folders: {under: Backup}\n"
    setup.config_path.write_text(text + second, encoding="utf-8")
    daemon = start_daemon(setup.config_path)
    samples = wait_for_sample(
        daemon,
        lambda s: all(value(s, "mailmirror_messages_copied_total", pair=name) == 1 for name in ("test", "second")),
        "both pairs' first pass",
    )
    assert value(samples, "mailmirror_pairs") == 2

    setup.config_path.write_text(text, encoding="utf-8")
    daemon.process.send_signal(signal.SIGHUP)
    samples = wait_for_sample(daemon, lambda s: value(s, "mailmirror_pairs") == 1, "the reload")
    assert not [key for key in samples if ("pair", "second") in key[1]]
    assert value(samples, "mailmirror_messages_copied_total", pair="test") == 1  # kept across the reload
    assert value(samples, "mailmirror_config_last_reload_successful") == 1

    setup.config_path.write_text(text + "  broken: {source: nowhere, destination: dst}\n", encoding="utf-8")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for_sample(daemon, lambda s: value(s, "mailmirror_config_last_reload_successful") == 0, "refused reload")

    state = setup.directory / "state.db"
    state.rename(setup.directory / "state.db.moved")
    state.mkdir()  # not a database any more (permissions would not stop root)
    status, body = daemon.get("/readyz")
    assert status == 503 and "FAIL state:" in body, body
    assert "the last reload was refused" in body
    assert daemon.stop() == 0


@pytest.mark.dovecot
def test_a_real_prometheus_scrapes_the_daemon_and_loads_the_rules(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    prometheus = require_program("prometheus", "prometheus")
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(4)])
    setup = mirror.setup(pair_options="schedule: {every: 1h}")
    daemon = start_daemon(setup.config_path)
    target = urllib.parse.urlsplit(daemon.metrics_url()).netloc
    rules = Path(__file__).resolve().parent.parent / "dashboards" / "prometheus" / "mailmirror.rules.yml"
    directory = Path(tempfile.mkdtemp(prefix="mailmirror-prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)] if rules.exists() else [],
        "scrape_configs": [{"job_name": "mailmirror", "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    port = _free_port()
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "prometheus.log").open("w"),
    )
    try:

        def query(expression: str) -> list[dict[str, object]]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    result: list[dict[str, object]] = json.load(response)["data"]["result"]
                    return result
            except OSError:
                return []

        daemon.wait_for(
            lambda: [r["value"][1] for r in query('mailmirror_messages_copied_total{pair="test"}')] == ["4"],  # type: ignore[index]
            "Prometheus to scrape 4 copies",
            timeout=60,
        )
        assert [r["value"][1] for r in query('up{job="mailmirror"}')] == ["1"]  # type: ignore[index]
        if rules.exists():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
                groups = json.load(response)["data"]["groups"]
            assert groups, "the alert rules were loaded"
            daemon.wait_for(
                lambda: all(r.get("health") == "ok" for g in _rule_groups(port) for r in g["rules"]),
                "every rule evaluated without error",
            )
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
    assert daemon.stop() == 0


def _rule_groups(port: int) -> list[dict[str, list[dict[str, object]]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
        groups: list[dict[str, list[dict[str, object]]]] = json.load(response)["data"]["groups"]
    return groups


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version() -> str:
    from mailmirror import __version__

    return __version__
