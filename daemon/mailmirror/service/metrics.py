"""Prometheus metrics of `mailmirror run`, on a private registry.

The daemon keeps plain numbers per pair and per account (`PairMetrics`, `AccountMetrics`) and this
module turns them into metric families when Prometheus scrapes. So a pair or account that leaves the
config disappears from the scrape with its entry, and nothing here is a global singleton.

Labels are config names only: `pair`, `account`, and small fixed sets (`side`, `reason`, `outcome`),
so cardinality is bounded by the config. Counters are labelled by pair alone (plus such a fixed set),
so that `sum(mailmirror_messages_copied_total)` is the number of messages copied. A shard
(`mailmirror run --shard K/N`, see mailmirror.config.shards) adds the constant label `shard="K"` to every
mailmirror_* series, so that the shards of one config stay apart even when scraped under one target.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from mailmirror import __version__
from mailmirror.engine.outcome import LogProgress, PairReport
from mailmirror.errors import AuthenticationFailure, ConnectionFailure, LockedError, MailmirrorError, Stopped

PASS_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
PUSH_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)

SKIP_REASONS = {
    "messages.search": "search",
    "messages.max_age": "max_age",
    "messages.min_age": "min_age",
    "skip_cross_folder_duplicates": "duplicate",
    "messages.max_size": "max_size",
    "messages.min_size": "min_size",
}


FAILURE_REASONS = ("refused", "too_large", "source_missing", "other")
OUTCOMES = ("ok", "partial", "error", "stopped", "locked")


def skip_reason(text: str) -> str:
    """The label for a planner's skip reason (a sentence naming the rule)."""
    return next((label for rule, label in SKIP_REASONS.items() if rule in text), "other")


def failure_reason(text: str) -> str:
    """The label for why a message could not be copied."""
    if text.startswith("destination refused"):
        return "refused"
    if "APPENDLIMIT" in text:
        return "too_large"
    if text.startswith("the source did not return"):
        return "source_missing"
    return "other"


class Histogram:
    """Cumulative buckets, rendered at scrape time."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf only)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else _float_text(bound), float(running)))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


@dataclass
class PairMetrics:
    started_at: float = field(default_factory=time.time)
    expected_interval: float | None = None
    up: bool | None = None  # None until the first pass ends
    last_success: float | None = None
    consecutive_failures: int = 0
    running: int = 0
    backlog: int | None = None  # mailmirror_pending_messages
    messages: dict[str, int] = field(default_factory=dict)  # side -> messages in the pair's folders
    folders: dict[str, int] = field(default_factory=dict)
    copied: int = 0
    copied_bytes: int = 0
    adopted: int = 0
    flag_updates: int = 0
    folder_errors: int = 0
    altered: int = 0  # copies the destination stored with other bytes than sent
    # every label value from the start at 0: increase() cannot see a series' first value
    deleted: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(("destination", "source"), 0)))
    skipped: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys([*SKIP_REASONS.values(), "other"], 0)))
    failures: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(FAILURE_REASONS, 0)))
    passes: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(OUTCOMES, 0)))
    pass_duration: Histogram = field(default_factory=lambda: Histogram(PASS_DURATION_BUCKETS))
    push_latency: Histogram = field(default_factory=lambda: Histogram(PUSH_LATENCY_BUCKETS))


@dataclass
class AccountMetrics:
    connection_errors: int = 0
    authentication_failures: int = 0


class Metrics:
    """What the daemon reports; thread-safe; `registry` is what the HTTP endpoint serves."""

    def __init__(self, shard: str | None = None) -> None:
        self._lock = threading.Lock()
        self.shard = shard  # `mailmirror run --shard K/N`: every mailmirror_* series gets the label shard="K"
        self.pairs: dict[str, PairMetrics] = {}
        self.accounts: dict[str, AccountMetrics] = {}
        self.reload_successful = True
        self.reload_success_at = time.time()
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- what the daemon tells ---------------------------------------------------------------------

    def configure(
        self,
        pairs: dict[str, float | None],
        accounts: Iterable[str],
        *,
        last_success: dict[str, float] | None = None,
        backlog: dict[str, int] | None = None,
    ) -> None:
        """The pairs (name -> expected interval) and accounts of the config now loaded: others go away.
        `last_success` and `backlog` (from the state database) seed the pairs seen for the first time."""
        with self._lock:
            for name in self.pairs.keys() - pairs.keys():
                del self.pairs[name]
            for name, interval in pairs.items():
                entry = self.pairs.get(name)
                if entry is None:
                    entry = self.pairs[name] = PairMetrics()
                    entry.last_success = (last_success or {}).get(name)
                    entry.backlog = (backlog or {}).get(name)
                entry.expected_interval = interval
            wanted = set(accounts)
            for name in self.accounts.keys() - wanted:
                del self.accounts[name]
            for name in wanted:
                self.accounts.setdefault(name, AccountMetrics())

    def reloaded(self, *, successful: bool) -> None:
        with self._lock:
            self.reload_successful = successful
            if successful:
                self.reload_success_at = time.time()

    def pass_started(self, pair: str) -> PassProgress:
        """A pass of `pair` begins; what it copies is counted as it goes, through the progress returned."""
        with self._lock:
            if pair in self.pairs:
                self.pairs[pair].running += 1
        return PassProgress(self, pair)

    def copied(self, pair: str, messages: int, size: int) -> None:
        with self._lock:
            entry = self.pairs.get(pair)
            if entry is not None:
                entry.copied += messages
                entry.copied_bytes += size

    def pass_finished(
        self,
        pair: str,
        report: PairReport,
        *,
        backlog: int | None,
        push_latency: float | None = None,
    ) -> None:
        with self._lock:
            entry = self.pairs.get(pair)
            if entry is None:
                return  # removed by a reload while the pass ran
            entry.running = max(0, entry.running - 1)
            entry.pass_duration.observe(report.seconds)
            error = report.error
            outcome = _outcome(error, report)
            entry.passes[outcome] += 1
            if outcome == "error":
                entry.up = False
                entry.consecutive_failures += 1
            elif outcome in ("ok", "partial"):  # stopped and locked passes say nothing either way
                entry.up = True
                entry.consecutive_failures = 0
                entry.last_success = time.time()
            self._count_folders(entry, report)
            if backlog is not None:
                entry.backlog = backlog
            if report.sides:
                for side, (folders, messages) in report.sides.items():
                    entry.folders[side] = folders
                    entry.messages[side] = messages
            if push_latency is not None and report.copied:
                entry.push_latency.observe(push_latency)
        if error is not None:
            self.connection_error(error)

    @staticmethod
    def _count_folders(entry: PairMetrics, report: PairReport) -> None:
        for folder in report.folders:  # (copies were counted batch by batch, see PassProgress)
            entry.adopted += folder.adopted
            entry.flag_updates += folder.flags_updated
            entry.deleted["destination"] += folder.deleted
            entry.deleted["source"] += folder.source_deleted
            entry.folder_errors += folder.error is not None
            entry.altered += len(folder.altered)
            for _uid, reason in folder.skipped:
                entry.skipped[skip_reason(reason)] += 1
            for _uid, reason in folder.failed:
                entry.failures[failure_reason(reason)] += 1

    def connection_error(self, error: MailmirrorError) -> None:
        """Count a connection or authentication failure against the account it names."""
        account = error.account
        if account is None or not isinstance(error, ConnectionFailure | AuthenticationFailure):
            return
        with self._lock:
            entry = self.accounts.get(account)
            if entry is None:
                return
            if isinstance(error, AuthenticationFailure):
                entry.authentication_failures += 1
            else:
                entry.connection_errors += 1

    # -- what Prometheus reads ----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one consistent snapshot, built before the scrape reads any of it
            families = [
                *self._instance_families(len(self.pairs)),
                *_pair_gauges(self.pairs),
                *_pair_counters(self.pairs),
                *_pair_histograms(self.pairs),
                *_account_counters(self.accounts),
            ]
        if self.shard is not None:
            for family in families:
                family.samples = [
                    sample._replace(labels={**sample.labels, "shard": self.shard}) for sample in family.samples
                ]
        return iter(families)

    def _instance_families(self, pair_count: int) -> Iterator[Metric]:
        info = GaugeMetricFamily("mailmirror_build_info", "mailmirror's version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("mailmirror_pairs", "Pairs in the loaded configuration.", value=pair_count)
        yield GaugeMetricFamily(
            "mailmirror_config_last_reload_successful",
            "1 if the last configuration load (start or SIGHUP) succeeded, 0 if it was refused.",
            value=int(self.reload_successful),
        )
        yield GaugeMetricFamily(
            "mailmirror_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (unix time).",
            value=self.reload_success_at,
        )


class PassProgress(LogProgress):
    """The log lines of a pass, and its copies counted batch by batch: the copy rate of a long first pass
    shows while it runs, not as one spike at its end."""

    def __init__(self, metrics: Metrics, pair: str) -> None:
        self.metrics = metrics
        self.pair = pair

    def advance(self, pair: str, folder: str, messages: int, size: int) -> None:
        self.metrics.copied(self.pair, messages, size)


def _outcome(error: MailmirrorError | None, report: PairReport) -> str:
    if isinstance(error, LockedError):
        return "locked"
    if isinstance(error, Stopped):
        return "stopped"
    if error is not None:
        return "error"
    return "ok" if report.complete else "partial"


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _pair_gauges(pairs: dict[str, PairMetrics]) -> Iterator[Metric]:
    up = _gauge("mailmirror_pair_up", "1 if the pair's last pass ended without a pass error, 0 if it failed.", ["pair"])
    success = _gauge(
        "mailmirror_pair_last_success_timestamp_seconds",
        "When the pair's last successful pass ended (unix time).",
        ["pair"],
    )
    start = _gauge(
        "mailmirror_pair_start_timestamp_seconds", "When this daemon started scheduling the pair (unix time).", ["pair"]
    )
    interval = _gauge(
        "mailmirror_pair_expected_interval_seconds",
        "Longest expected time between two passes of the pair (schedule interval plus jitter).",
        ["pair"],
    )
    failures = _gauge(
        "mailmirror_pair_consecutive_failures", "Passes of the pair that failed in a row (0 after a success).", ["pair"]
    )
    running = _gauge("mailmirror_pair_pass_running", "1 while a pass of the pair runs.", ["pair"])
    backlog = _gauge(
        "mailmirror_pending_messages",
        "Source messages not yet on the destination as of the pair's last pass (the lag).",
        ["pair"],
    )
    messages = _gauge(
        "mailmirror_messages", "Messages in the pair's mapped folders at its last full pass.", ["pair", "side"]
    )
    folders = _gauge("mailmirror_folders", "Folders the pair maps, at its last full pass.", ["pair", "side"])
    for name, entry in sorted(pairs.items()):
        start.add_metric([name], entry.started_at)
        failures.add_metric([name], entry.consecutive_failures)
        running.add_metric([name], min(entry.running, 1))
        if entry.up is not None:
            up.add_metric([name], int(entry.up))
        if entry.last_success is not None:
            success.add_metric([name], entry.last_success)
        if entry.expected_interval is not None:
            interval.add_metric([name], entry.expected_interval)
        if entry.backlog is not None:
            backlog.add_metric([name], entry.backlog)
        for side, value in sorted(entry.messages.items()):
            messages.add_metric([name, side], value)
        for side, value in sorted(entry.folders.items()):
            folders.add_metric([name, side], value)
    yield from (up, success, start, interval, failures, running, backlog, messages, folders)


def _pair_counters(pairs: dict[str, PairMetrics]) -> Iterator[Metric]:
    def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=labels)

    copied = counter("mailmirror_messages_copied", "Messages copied to the destination.", ["pair"])
    copied_bytes = counter("mailmirror_copied_bytes", "Bytes of the messages copied to the destination.", ["pair"])
    adopted = counter(
        "mailmirror_messages_adopted",
        "Messages found already on the destination and mapped without copying.",
        ["pair"],
    )
    flags = counter("mailmirror_flag_updates", "Messages whose flags were updated on the destination.", ["pair"])
    deleted = counter(
        "mailmirror_messages_deleted",
        "Messages deleted: on the destination (mirror mode) or on the source (after_copy).",
        ["pair", "side"],
    )
    skipped = counter("mailmirror_messages_skipped", "Messages a rule left out, by rule.", ["pair", "reason"])
    failed = counter(
        "mailmirror_message_failures",
        "Messages that could not be copied, by reason (one still failing counts again on every pass).",
        ["pair", "reason"],
    )
    folder_errors = counter("mailmirror_folder_errors", "Folders a pass could not sync.", ["pair"])
    altered = counter(
        "mailmirror_messages_altered",
        "Copies the destination server stored with other bytes than it was sent (e.g. Cyrus munge8bit).",
        ["pair"],
    )
    passes = counter("mailmirror_passes", "Passes of the pair, by outcome.", ["pair", "outcome"])
    for name, entry in sorted(pairs.items()):
        copied.add_metric([name], entry.copied)
        copied_bytes.add_metric([name], entry.copied_bytes)
        adopted.add_metric([name], entry.adopted)
        flags.add_metric([name], entry.flag_updates)
        folder_errors.add_metric([name], entry.folder_errors)
        altered.add_metric([name], entry.altered)
        for side in ("destination", "source"):
            deleted.add_metric([name, side], entry.deleted[side])
        for reason, count in sorted(entry.skipped.items()):
            skipped.add_metric([name, reason], count)
        for reason, count in sorted(entry.failures.items()):
            failed.add_metric([name, reason], count)
        for outcome, count in sorted(entry.passes.items()):
            passes.add_metric([name, outcome], count)
    yield from (copied, copied_bytes, adopted, flags, deleted, skipped, failed, folder_errors, altered, passes)


def _pair_histograms(pairs: dict[str, PairMetrics]) -> Iterator[Metric]:
    duration = HistogramMetricFamily(
        "mailmirror_pass_duration_seconds", "How long the pair's passes took.", labels=["pair"]
    )
    latency = HistogramMetricFamily(
        "mailmirror_push_latency_seconds",
        "From the IDLE notification of new source mail to the end of the push pass that copied it.",
        labels=["pair"],
    )
    for name, entry in sorted(pairs.items()):
        duration.add_metric([name], entry.pass_duration.cumulative(), entry.pass_duration.total)
        latency.add_metric([name], entry.push_latency.cumulative(), entry.push_latency.total)
    yield from (duration, latency)


def _account_counters(accounts: dict[str, AccountMetrics]) -> Iterator[Metric]:
    connection = CounterMetricFamily(
        "mailmirror_connection_errors",
        "Failed connections to the account's server: unreachable, TLS, or dropped mid-pass.",
        labels=["account"],
    )
    authentication = CounterMetricFamily(
        "mailmirror_authentication_failures", "Logins the account's server refused.", labels=["account"]
    )
    for name, entry in sorted(accounts.items()):
        connection.add_metric([name], entry.connection_errors)
        authentication.add_metric([name], entry.authentication_failures)
    yield from (connection, authentication)
