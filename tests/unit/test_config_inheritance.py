"""Pairs inherit `defaults` section by section; many pairs share validated sections (pair sets at scale)
and still each get exactly their own merge."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config

CONFIG = """
accounts:
  a: {host: imap.a.example, username: a, password: {env: PW}}
  b: {host: imap.b.example, username: b, password: {env: PW}}
  c: {host: imap.c.example, username: c, password: {env: PW}}
  d: {host: imap.d.example, username: d, password: {env: PW}}
defaults:
  schedule: {cron: "0 3 * * *"}
  folders: {exclude: [Junk]}
pairs:
  first: {source: a, destination: b, schedule: {every: 15m}}
  second: {source: c, destination: d}
  third: {source: b, destination: c, folders: {exclude: [Trash]}}
  fourth: {source: d, destination: a}
"""


def test_each_pair_gets_its_own_merge_of_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text(textwrap.dedent(CONFIG), encoding="utf-8")
    pairs = load_config(Path("config.yaml")).effective_pairs()
    # a pair that sets `every` replaces the inherited cron, and the others still inherit the cron
    assert pairs["first"].schedule.every == timedelta(minutes=15) and pairs["first"].schedule.cron is None
    assert pairs["second"].schedule.cron == "0 3 * * *" and pairs["second"].schedule.every is None
    assert pairs["fourth"].schedule.cron == "0 3 * * *"
    # lists are replaced whole, per pair
    assert list(pairs["third"].folders.exclude) == ["Trash"]
    assert list(pairs["second"].folders.exclude) == ["Junk"] == list(pairs["fourth"].folders.exclude)
    # pairs that spell a section the same way share one validated (frozen) section
    assert pairs["second"].folders is pairs["fourth"].folders


def test_sections_left_to_their_defaults_are_one_shared_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text(textwrap.dedent(CONFIG), encoding="utf-8")
    config = load_config(Path("config.yaml"))
    effective, written = config.effective_pairs(), config.pairs
    # nobody sets `transfer`: one instance for all, in the merged pairs and in the pairs as written
    assert len({id(pair.transfer) for pair in effective.values()}) == 1
    assert len({id(pair.transfer) for pair in written.values()}) == 1
    # the same content validated once is shared; a pair's own content stays its own
    assert effective["second"].folders is effective["fourth"].folders
    assert effective["third"].folders is not effective["second"].folders
    # the pairs as written still tell what was written
    assert written["second"].model_dump(exclude_unset=True) == {"source": "c", "destination": "d"}
    assert "folders" in written["third"].model_dump(exclude_unset=True)
