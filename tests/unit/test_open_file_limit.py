"""The daemon raises its soft open-file limit to the hard one (systemd's soft default, 1024, is short of
1,000 IDLE watchers), and says so when even the hard limit is short of what the config needs."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from mailmirror.service.resources import open_files_needed, raise_open_file_limit


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_limit_is_raised_to_the_hard_limit(limits: tuple[int, int]) -> None:
    _soft, hard = limits
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    assert raise_open_file_limit(open_files_needed(100, 64, 4)) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_a_hard_limit_short_of_the_need_is_named(limits: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    _soft, hard = limits
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit to fall short of")
    with caplog.at_level(logging.WARNING):
        raise_open_file_limit(hard + 1)
    assert f"open-file limit {hard} is below the {hard + 1}" in caplog.text
    assert "LimitNOFILE=" in caplog.text
