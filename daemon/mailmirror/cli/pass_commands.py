"""The commands that run passes: `sync` (one pass of each pair now), `run` (the daemon), `plan` (what a pass
would do) and `verify` (the deep compare)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from mailmirror.cli.context import Context, apply_log_config, pass_context, shard_option, verify_parallel_option
from mailmirror.cli.exits import exit_code_for
from mailmirror.errors import ExitCode, MailmirrorError

if TYPE_CHECKING:
    from mailmirror.engine.outcome import PairReport
    from mailmirror.engine.parallel import ParallelPasses


TABLES_UP_TO = 10  # pairs in one `sync` whose summaries are tables by default (a fleet gets lines)


@click.command(short_help="One pass of each pair now, then a summary.")
@click.argument("pairs", nargs=-1)
@click.option("-n", "--dry-run", is_flag=True, help="Show what a pass would copy and update; change nothing.")
@click.option(
    "--full",
    is_flag=True,
    help="Re-list every folder completely instead of trusting the state's change markers "
    "(UIDNEXT, HIGHESTMODSEQ): slower; for peace of mind before a cutover.",
)
@click.option(
    "--force-deletions",
    is_flag=True,
    help="With deletions.destination: mirror, delete even when a folder would lose more than "
    "deletions.max_share in this pass.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on when on a terminal).")
@click.option(
    "-j",
    "--parallel",
    type=click.IntRange(1, 256),
    metavar="N",
    help="Pairs synced at the same time (default: daemon.max_parallel_passes, 4). Each server still gets "
    "at most its accounts' max_connections, and a pass keeps the extra connections of its transfer.workers "
    "while it runs: with many pairs on one server, raise max_connections or lower transfer.workers.",
)
@click.option(
    "--summary",
    type=click.Choice(["auto", "table", "line"]),
    default="auto",
    show_default=True,
    help=f"Each pair's summary as a folder table or as one line (problems are listed either way); auto: "
    f"tables for up to {TABLES_UP_TO} pairs, lines and a total for more.",
)
@shard_option
@pass_context
def sync(
    context: Context,
    pairs: tuple[str, ...],
    dry_run: bool,
    full: bool,
    force_deletions: bool,
    progress: bool | None,
    parallel: int | None,
    summary: str,
) -> None:
    """Run one pass of PAIRS now (all pairs by default), then print a summary.

    Copies every message not yet on the destination with its flags and INTERNALDATE, creates missing
    folders, re-syncs flags of messages copied earlier. Deletes nothing unless the pair asks for it
    (deletions.destination: mirror, deletions.source: after_copy). A folder unchanged on both sides
    since the last pass is not even opened. Several pairs run side by side (--parallel); each pair's
    summary is printed when its pass ends.

    Ctrl-C or SIGTERM: the passes finish the batch in flight and record it (at most
    daemon.stop_timeout), then exit 130 (143 for SIGTERM); the next sync goes on from there. A second
    Ctrl-C exits at once (nothing is lost either: the state journal resolves it on the next pass).

    Exit 0 when every selected message is on the destination, 75 when some messages or folders failed,
    when a lost connection's appends may still be executed late by the server (watched for
    transfer.late_write_window; later passes remove such late copies of our own), or when another process
    is writing into the same destination mailbox (the summary says why), 69/77 when a server is
    unreachable or refuses the login.
    """
    from mailmirror.engine.outcome import LogProgress
    from mailmirror.engine.parallel import ParallelPasses
    from mailmirror.state.store import StateStore

    apply_log_config(context)
    names = context.pair_names(pairs)
    config = context.config
    StateStore(config.state.path).close()  # an unusable state.path: one config error (exit 78), before any pass
    show_bars = context.stdout.is_terminal if progress is None else progress
    bars = None
    if show_bars:
        from mailmirror.cli.report import RichProgress

        bars = RichProgress(context.stdout)
    passes = ParallelPasses(
        config,
        names,
        bars or LogProgress(),
        parallel=parallel or config.daemon.max_parallel_passes,
        dry_run=dry_run,
        full=full,
        force_deletions=force_deletions,
    )
    manager: AbstractContextManager[Any] = bars if bars is not None else nullcontext()
    stop = _StopRequest(passes.stop)
    as_lines = summary == "line" or (summary == "auto" and len(names) > TABLES_UP_TO)
    with manager, stop.handling():
        reports = _collect_reports(context, passes, stop, as_lines)
    if as_lines:
        from mailmirror.cli.pass_lines import print_fleet_totals

        print_fleet_totals(context.stdout, reports)
    if stop.signum is not None:
        sys.exit(128 + stop.signum)  # 130 for Ctrl-C, 143 for SIGTERM
    errors = [report.error for report in reports if report.error is not None]
    if errors:
        sys.exit(exit_code_for(errors))
    if not all(report.complete for report in reports):
        sys.exit(ExitCode.TEMPFAIL)


class _StopRequest:
    """Ctrl-C/SIGTERM during `sync`: the first asks the passes to stop between batches (the handler only
    records it: an exception raised wherever the main thread happens to be, say mid-print, would skip
    the wait); a second Ctrl-C/SIGTERM exits at once (KeyboardInterrupt: exit 130)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.signum: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    @contextmanager
    def handling(self) -> Iterator[None]:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _collect_reports(context: Context, passes: ParallelPasses, stop: _StopRequest, as_lines: bool) -> list[PairReport]:
    """Each pass's summary as it ends; after a stop request, the passes under way get daemon.stop_timeout
    to record their batch in flight."""
    from mailmirror.cli.pass_lines import print_pass_line

    pairs = context.config.effective_pairs()
    reports: list[PairReport] = []
    deadline: float | None = None
    passes.start()
    while passes.remaining:
        if stop.signum is not None and deadline is None:
            deadline = time.monotonic() + context.config.daemon.stop_timeout.total_seconds()
            context.stderr.print(
                "mailmirror: stopping: the passes under way finish the batch in flight and record it "
                "(Ctrl-C again to exit at once)",
                markup=False,
                highlight=False,
            )
        report = passes.next_report(timeout=0.25)
        if report is None:
            if deadline is not None and time.monotonic() > deadline:  # stuck in network I/O; journal consistent
                context.stderr.print(
                    f"mailmirror: {passes.remaining} pass(es) did not stop within daemon.stop_timeout; exiting",
                    markup=False,
                    highlight=False,
                )
                break
            continue
        reports.append(report)
        pair = pairs[report.pair]
        if as_lines:
            print_pass_line(context.stdout, report)
        else:
            from mailmirror.cli.report import print_pass

            print_pass(context.stdout, report, pair.source, pair.destination)
        if report.error is not None:
            named = str(report.error).startswith(f"pair '{report.pair}'")
            message = str(report.error) if named else f"pair '{report.pair}': {report.error}"
            context.stderr.print(f"mailmirror: {message}", markup=False, highlight=False)
    return reports


# -- run ------------------------------------------------------------------------------------------------


@click.command(short_help="The daemon: every pair on its schedule, IDLE push, reload on SIGHUP.")
@shard_option
@pass_context
def run(context: Context) -> None:
    """Run every pair on its schedule, in the foreground (for systemd: Type=notify).

    Each pair starts a first pass right away, then follows its schedule (every / cron); folders listed
    in schedule.idle are watched with IDLE and synced within seconds of new mail. A failing pair is
    retried with growing delays without holding up the others. SIGHUP (systemctl reload) re-reads the
    config (an invalid one is refused, the old one keeps running); SIGTERM finishes the batch in flight
    and exits 0. Logs go to stderr (journald).

    On metrics.listen (default 127.0.0.1:9464): /metrics for Prometheus, /healthz (alive) and /readyz
    (config loaded, state database writable, every pair successful within its expected interval).
    """
    from mailmirror.service.daemon import Daemon

    apply_log_config(context)
    code = Daemon(context.config_path, shard=context.shard).run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a pass stuck in network I/O: the journal keeps the state consistent


# -- plan -----------------------------------------------------------------------------------------------


@click.command(short_help="Folder mapping, sizes and what a pass would do; changes nothing.")
@click.argument("pairs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON document).")
@shard_option
@pass_context
def plan(context: Context, pairs: tuple[str, ...], as_json: bool) -> None:
    """Show, for PAIRS (all by default), each source folder → destination folder with the rule that chose
    the name (map, automap, rename, under, default), message count and size on both sides, and what a pass
    would copy, update and delete, then the settings the accounts' provider presets chose (and those the
    config overrode). Reads both servers; changes nothing and records nothing.
    """
    from mailmirror.cli.report import plan_json, print_plan
    from mailmirror.config.providers import presets_json, print_presets
    from mailmirror.engine.pair_pass import PairPreview
    from mailmirror.state.store import StateStore

    apply_log_config(context)
    if not context.verbose:
        for executor in ("outcome", "pair_pass", "folder_pass", "deletions", "workers"):  # the table says it all
            logging.getLogger(f"mailmirror.engine.{executor}").setLevel(logging.WARNING)
    names = context.pair_names(pairs)
    config = context.config
    store = StateStore(config.state.path)
    documents = []
    errors: list[MailmirrorError] = []
    try:
        for name in names:
            pair = config.effective_pair(name)
            report = PairPreview(name, pair, config, store, measure=True).run()
            if report.error is not None:
                errors.append(report.error)
            if as_json:
                documents.append(plan_json(report, pair.source, pair.destination))
                documents[-1]["presets"] = presets_json(config.presets_of(name))
            else:
                print_plan(context.stdout, report, pair.source, pair.destination)
                print_presets(context.stdout, name, config.presets_of(name))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"pairs": documents}, indent=2, ensure_ascii=False))
    if errors:
        sys.exit(exit_code_for(errors))


# -- verify -----------------------------------------------------------------------------------------------


@click.command(short_help="Deep-compare source and destination (the cutover proof).")
@click.argument("pairs", nargs=-1)
@verify_parallel_option("Pairs verified at the same time.")
@shard_option
@pass_context
def verify(context: Context, pairs: tuple[str, ...], parallel: int) -> None:
    """Deep-compare source and destination of PAIRS (all by default): the cutover proof.

    Reads every message on both sides (read-only, BODY.PEEK) and compares them by SHA-256 of their exact
    bytes, with flags and INTERNALDATE. Exit 0 when every source message is on the destination exactly
    once and identical, 65 on any difference (listed). A message the destination server stored with other
    bytes (same identity headers) is reported as altered, not as missing plus extra. PAIRS are names or glob
    patterns ('staff-*'); each result is recorded in the state database for `mailmirror report`.
    """
    from mailmirror.cli.report import print_verdict
    from mailmirror.service.fleet import verify_pairs

    apply_log_config(context)
    names = context.pair_names(pairs)
    verdicts = verify_pairs(context.config, names, parallel, lambda verdict: print_verdict(context.stdout, verdict))
    errors = [verdict.error for verdict in verdicts if verdict.error is not None]
    if errors:
        sys.exit(exit_code_for(errors))
    if not all(verdict.clean for verdict in verdicts):
        sys.exit(ExitCode.DIFFERENCES)
