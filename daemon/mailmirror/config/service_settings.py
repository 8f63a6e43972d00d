"""Settings of mailmirror as a service, not of one pair: the state database, the metrics and health endpoint,
logging, and how `mailmirror run` shares its work (the sections state, metrics, log and daemon)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from mailmirror.config.section import Section
from mailmirror.config.units import ConfigPath, Duration, at_most
from mailmirror.config.values import ListenAddress, split_listen_address


class StateConfig(Section):
    """Where mailmirror keeps its state (UID maps, journal of appends): one SQLite database."""

    path: ConfigPath = Field(
        default=Path("/var/lib/mailmirror/state.db"),
        description="SQLite state database (WAL mode). A relative path is relative to the config file.",
    )


class MetricsConfig(Section):
    """The HTTP endpoint serving Prometheus metrics (/metrics) and health checks (/healthz, /readyz)."""

    listen: ListenAddress = Field(
        default="127.0.0.1:9464",
        description=(
            "host:port to listen on; [::1]:9464 for IPv6, 0.0.0.0:9464 for every interface; port 0 picks a "
            "free port (logged at start)."
        ),
    )
    enabled: bool = Field(default=True, description="Serve metrics and health endpoints.")
    stale_after_intervals: float = Field(
        default=3.0,
        ge=1.0,
        le=1000.0,
        description=(
            "/readyz fails when a pair's last successful pass is older than this many schedule intervals "
            "(every + jitter, or the longest gap of its cron); pairs without a schedule are not checked."
        ),
    )

    @property
    def host(self) -> str:
        """The host part of ``listen``, without IPv6 brackets."""
        return split_listen_address(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return split_listen_address(self.listen)[1]


class DaemonConfig(Section):
    """How `mailmirror run` (and `mailmirror sync` of several pairs) shares its work: concurrency, backoff of
    failing pairs, shutdown."""

    max_parallel_passes: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Passes running at the same time, over all pairs (also `mailmirror sync`'s default --parallel).",
    )
    backoff_max: Annotated[Duration, at_most(timedelta(days=7))] = Field(
        default=timedelta(minutes=30),
        json_schema_extra={"default": "30m"},
        description="A failing pair is retried after 30s, 1m, 2m, ... up to this, whatever its schedule.",
    )
    stop_timeout: Annotated[Duration, at_most(timedelta(hours=1))] = Field(
        default=timedelta(seconds=30),
        json_schema_extra={"default": "30s"},
        description=(
            "On SIGTERM (and Ctrl-C during `mailmirror sync`): time to finish the batch in flight, record it and "
            "log out before exiting."
        ),
    )
    max_connections: int = Field(
        default=64,
        ge=2,
        le=10000,
        description=(
            "Most IMAP connections open at the same time over all pairs and accounts (each pass takes one per "
            "side, and more for transfer.workers while they are free)."
        ),
    )
    max_connections_per_server: int = Field(
        default=32,
        ge=2,
        le=10000,
        description=(
            "Most IMAP connections open at the same time into one server (host:port), over all its accounts: "
            "with a fleet of accounts on one server, each account keeps its own max_connections and the server "
            "gets at most this many in all."
        ),
    )
    lock_dir: ConfigPath | None = Field(
        default=None,
        description=(
            "Directory of the destination locks (one writer per destination mailbox, whatever the config file or "
            "state database): every mailmirror of the machine must use the same one. Default: /run/mailmirror "
            "when it exists (the systemd units create it) or when run as root, else $XDG_RUNTIME_DIR/mailmirror, "
            "else /tmp/mailmirror-UID. A user who cannot create a lock file in /run/mailmirror locks an existing "
            "one read-only, else the pass ends with exit 78 (never locking elsewhere). Local to one machine: see "
            "docs/architecture.md."
        ),
    )


class LogConfig(Section):
    """Logging on standard error (journald picks it up under systemd)."""

    format: Literal["text", "json"] = Field(
        default="text", description="text for people, json (one object per line) for log shippers."
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged."
    )
