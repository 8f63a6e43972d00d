"""The shipped systemd units: `systemd-analyze verify` accepts them, `systemd-analyze security` rates them
at most 2.0, and what they say agrees with the program (CLI, exit codes, stop timeout).

``systemd-analyze verify`` insists that ExecStart='s binary exists, and on a development machine there is
no /usr/bin/mailmirror. ``--root=DIR`` would need a whole unit tree under DIR (sysinit.target and
friends) and stub binaries, so instead each unit is copied into a temporary directory with exactly one
change: /usr/bin/mailmirror becomes this virtualenv's mailmirror script. Every other line is verified as
shipped (the test checks that the copy differs in that one path only). The template is verified as the
instance ``mailmirror@example.service``, which systemd-analyze loads from ``mailmirror@.service`` beside it.

``systemd-analyze security --offline=yes`` reads the shipped files directly (it does not look at
binaries) and needs no running systemd. When systemd-analyze is missing these tests FAIL (``apt-get
install systemd``; ``scripts/bootstrap --test`` does it), unless MAILMIRROR_ALLOW_SKIP=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from mailmirror.config.service_settings import DaemonConfig
from mailmirror.errors import ExitCode
from tests.support import require_program

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SHIPPED_BINARY = "/usr/bin/mailmirror"
MAX_EXPOSURE = 2.0
# (unit file, the name systemd-analyze is asked about)
CASES = [
    ("mailmirror.service", "mailmirror.service"),
    ("mailmirror@.service", "mailmirror@example.service"),
    ("mailmirror-shard@.service", "mailmirror-shard@2.service"),
]
CASE_IDS = [name for _file, name in CASES]


def systemd_analyze() -> str:
    return require_program("systemd-analyze", "systemd")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"},
    )


def venv_mailmirror() -> Path:
    script = Path(sys.executable).parent / "mailmirror"
    assert script.is_file() and os.access(script, os.X_OK), f"{script}: mailmirror is not installed in this venv"
    return script


def service_settings(path: Path) -> dict[str, list[str]]:
    """The [Service] section: key -> every value it is given, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            settings.setdefault(key, []).append(value)
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize(("unit_file", "unit_name"), CASES, ids=CASE_IDS)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, unit_file: str, unit_name: str) -> None:
    shipped = (UNITS / unit_file).read_text(encoding="utf-8")
    copy = shipped.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={venv_mailmirror()} ")
    changed = [old for old, new in zip(shipped.splitlines(), copy.splitlines(), strict=True) if old != new]
    assert len(changed) == 1 and changed[0].startswith(f"ExecStart={SHIPPED_BINARY} "), changed
    (tmp_path / unit_file).write_text(copy, encoding="utf-8")
    result = analyze("verify", str(tmp_path / unit_name))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not output, "any output is a complaint (an unknown key is only a warning, but still a mistake)"


@pytest.mark.parametrize(("unit_file", "unit_name"), CASES, ids=CASE_IDS)
def test_security_exposure_is_at_most_2(tmp_path: Path, unit_file: str, unit_name: str) -> None:
    shutil.copy(UNITS / unit_file, tmp_path / unit_file)
    result = analyze("security", "--offline=yes", str(tmp_path / unit_name))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, f"no 'Overall exposure level' line in:\n{output}"
    exposure = float(match.group(1))
    print(f"{unit_name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, output


@pytest.mark.parametrize("unit_file", [file for file, _name in CASES])
def test_the_unit_agrees_with_the_program(unit_file: str) -> None:
    service = service_settings(UNITS / unit_file)
    assert service["Type"] == ["notify"]
    # usage and config errors must not restart in a loop; every other failure is restarted
    assert service["Restart"] == ["on-failure"]
    assert {int(code) for code in service["RestartPreventExitStatus"][0].split()} == {ExitCode.USAGE, ExitCode.CONFIG}
    # systemd must not SIGKILL a daemon that is still finishing its batches
    default_stop = DaemonConfig().stop_timeout
    assert default_stop == timedelta(seconds=30)
    assert seconds(service["TimeoutStopSec"][0]) >= default_stop.total_seconds() + 10
    assert seconds(service["WatchdogSec"][0]) >= 30  # the daemon pings at least every 5 s
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # ExecStart is a command line the CLI accepts
    argv = service["ExecStart"][0].split()
    assert argv[0] == SHIPPED_BINARY and argv[-1] == "run"
    result = subprocess.run(
        [str(venv_mailmirror()), *argv[1:], "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_template_differs_from_the_service_only_per_instance() -> None:
    single = service_settings(UNITS / "mailmirror.service")
    template = service_settings(UNITS / "mailmirror@.service")
    assert single["ExecStart"] == [f"{SHIPPED_BINARY} -c /etc/mailmirror/config.yaml run"]
    assert template["ExecStart"] == [f"{SHIPPED_BINARY} -c /etc/mailmirror/%i.yaml run"]
    assert single["StateDirectory"] == ["mailmirror"]
    assert template["StateDirectory"] == ["mailmirror/%i"]
    per_instance = {"ExecStart", "StateDirectory"}
    assert {k: v for k, v in single.items() if k not in per_instance} == {
        k: v for k, v in template.items() if k not in per_instance
    }


def test_the_shard_template_is_the_service_with_the_shard_from_the_instance() -> None:
    from mailmirror.config.shards import shard_from_environment

    single = service_settings(UNITS / "mailmirror.service")
    shard = service_settings(UNITS / "mailmirror-shard@.service")
    assert shard["ExecStart"] == single["ExecStart"]  # one config for every shard
    assert shard["Environment"] == ["MAILMIRROR_SHARD=%i"]
    assert shard["EnvironmentFile"] == ["-/etc/mailmirror/shards.env"]
    assert {k: v for k, v in shard.items() if not k.startswith("Environment")} == single
    # what the unit gives the daemon names shard 2 of 4 (shards.env: MAILMIRROR_SHARDS=4)
    environment = {"MAILMIRROR_SHARD": "2", "MAILMIRROR_SHARDS": "4"}
    assert str(shard_from_environment(environment)) == "2/4"
