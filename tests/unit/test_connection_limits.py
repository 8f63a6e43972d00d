"""The connection caps of one process: per mailbox (the account's max_connections), per server
(daemon.max_connections_per_server) and in all (daemon.max_connections)."""

from __future__ import annotations

from typing import Any

from mailmirror.config.config_file import Config
from mailmirror.engine.limits import ConnectionLimits

SECRET = {"env": "UNUSED"}


def _fleet(users: int, **daemon: Any) -> Config:
    accounts = {}
    pairs = {}
    for index in range(users):
        accounts[f"old{index}"] = {"host": "old.example", "username": f"user{index}", "password": SECRET}
        accounts[f"new{index}"] = {"host": "new.example", "username": f"user{index}", "password": SECRET}
        pairs[f"p{index}"] = {"source": f"old{index}", "destination": f"new{index}"}
    return Config.model_validate({"daemon": daemon, "accounts": accounts, "pairs": pairs})


def _running(limits: ConnectionLimits, config: Config) -> int:
    """How many of the config's pairs can start a pass at once (each holds its first connections)."""
    started = 0
    for pair in config.effective_pairs().values():
        if not limits.extra(config, pair).try_acquire():
            break
        started += 1
    return started


def test_a_fleet_on_one_server_is_capped_by_the_server_not_by_one_accounts_cap() -> None:
    config = _fleet(50, max_connections=1000, max_connections_per_server=20)
    assert _running(ConnectionLimits(config), config) == 20  # each account's own cap (4) is not the server's


def test_the_total_caps_the_whole_process() -> None:
    config = _fleet(50, max_connections=16, max_connections_per_server=100)
    assert _running(ConnectionLimits(config), config) == 8  # two connections per pass


def test_an_account_keeps_its_own_cap_across_pairs() -> None:
    config = Config.model_validate(
        {
            "accounts": {
                "old": {"host": "old.example", "username": "u", "password": SECRET, "max_connections": 2},
                "new1": {"host": "new.example", "username": "a", "password": SECRET},
                "new2": {"host": "new.example", "username": "b", "password": SECRET},
                "new3": {"host": "new.example", "username": "c", "password": SECRET},
            },
            "pairs": {name: {"source": "old", "destination": name} for name in ("new1", "new2", "new3")},
        }
    )
    assert _running(ConnectionLimits(config), config) == 2


def test_two_account_names_for_one_mailbox_share_the_smaller_cap() -> None:
    config = Config.model_validate(
        {
            "accounts": {
                "a": {"host": "imap.example", "username": "u", "password": SECRET, "max_connections": 1},
                "a_again": {"host": "IMAP.example", "username": "U", "password": SECRET, "max_connections": 9},
                "x": {"host": "other.example", "username": "x", "password": SECRET},
                "y": {"host": "other.example", "username": "y", "password": SECRET},
            },
            "pairs": {
                "first": {"source": "a", "destination": "x"},
                "second": {"source": "a_again", "destination": "y"},
            },
        }
    )
    assert _running(ConnectionLimits(config), config) == 1


def test_a_pair_within_one_server_takes_two_of_its_connections() -> None:
    config = Config.model_validate(
        {
            "daemon": {"max_connections_per_server": 3},
            "accounts": {
                name: {"host": "imap.example", "username": name, "password": SECRET} for name in ("a", "b", "c", "d")
            },
            "pairs": {"first": {"source": "a", "destination": "b"}, "second": {"source": "c", "destination": "d"}},
        }
    )
    assert _running(ConnectionLimits(config), config) == 1
