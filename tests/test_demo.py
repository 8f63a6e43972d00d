"""The README's first command runs the built-in demo: it must keep working."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.dovecot


def test_demo_mirrors_the_sample_mailbox_and_verifies_clean(dovecot: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailmirror", "demo", "--messages", "60"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemon")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Complete: every selected source message is on the destination" in result.stdout
    assert "0 messages copied" in result.stdout  # the second pass
    assert "No differences: all 60 source messages" in result.stdout
