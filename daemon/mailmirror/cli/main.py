"""The `mailmirror` command line: one program, subcommands, sysexits-style exit codes."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click

from mailmirror import __version__
from mailmirror.errors import (
    AuthenticationFailure,
    ConfigError,
    ConnectionFailure,
    ExitCode,
    MailmirrorError,
    UsageError,
)

if TYPE_CHECKING:
    from rich.console import Console

    from mailmirror.config.config_file import Config
    from mailmirror.config.shards import Shard
    from mailmirror.engine.parallel import ParallelPasses
    from mailmirror.engine.sync import PairReport

DEFAULT_CONFIG = "/etc/mailmirror/config.yaml"
log = logging.getLogger("mailmirror")

EXIT_CODES_HELP = """\b
Exit codes:
  0   success
  64  usage error (unknown pair, bad option)
  65  verify found differences
  69  a server or an OAuth2 token endpoint could not be reached, or TLS failed
  70  internal error (a bug: please report it)
  74  the state database could not be written (disk full, I/O error, corrupt)
  75  the pass finished but some messages failed, or exactly once is not proven yet
      (transfer.late_write_window), or another process writes the same destination (retryable)
  77  authentication failed (a server or token endpoint refused the credentials)
  78  configuration error
  130 interrupted (Ctrl-C); sync: 143 stopped by SIGTERM
"""

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self, config_path: Path, verbose: int, quiet: bool) -> None:
        self.config_path = config_path
        self.verbose = verbose
        self.quiet = quiet
        self._config: Config | None = None
        self.shard: Shard | None = None  # set by --shard / $MAILMIRROR_SHARD on the commands that take it

    # rich is imported by the commands that print through it, not by every start (--version, sync in cron)
    @cached_property
    def stdout(self) -> Console:
        from rich.console import Console

        # Not on a terminal (a pipe, a log file, CI): wide enough that tables are not truncated.
        return Console(highlight=False, width=None if sys.stdout.isatty() else 160)

    @cached_property
    def stderr(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            from mailmirror.config.config_file import load_config
            from mailmirror.config.shards import apply_shard

            self._config = apply_shard(load_config(self.config_path), self.shard)
        return self._config

    def pair_names(self, wanted: Sequence[str]) -> list[str]:
        """The pairs named, in config order: names or glob patterns (staff-*); none: every pair."""
        known = list(self.config.effective_pairs())
        if not wanted:
            return known
        chosen: set[str] = set()
        unknown: list[str] = []
        for name in wanted:
            matched = _matching(name, known)
            chosen.update(matched)
            if not matched:
                unknown.append(name)
        if unknown and self.shard is not None:
            from mailmirror.config.shards import shard_of

            patterns = [name for name in unknown if _is_pattern(name)]
            if patterns:
                raise UsageError(f"no pair of shard {self.shard} matches {', '.join(map(repr, patterns))}")
            owners = ", ".join(
                f"{name!r}: --shard {shard_of(name, self.shard.count)}/{self.shard.count}" for name in unknown
            )
            raise UsageError(f"unknown pair in shard {self.shard} (if it is in the config, its shard is {owners})")
        if unknown:
            shown = ", ".join(known[:20]) + (f", ... ({len(known)} pairs)" if len(known) > 20 else "")
            raise UsageError(
                f"unknown pair {', '.join(map(repr, unknown))} (no pair matches; pairs in the config: {shown})"
            )
        return [name for name in known if name in chosen]


def _is_pattern(name: str) -> bool:
    return any(character in name for character in "*?[")


def _matching(pattern: str, known: Sequence[str]) -> list[str]:
    """The pairs ``pattern`` names: itself, or with *, ? or [...] every pair it matches (fnmatchcase)."""
    if not _is_pattern(pattern):
        return [pattern] if pattern in known else []
    return [name for name in known if fnmatch.fnmatchcase(name, pattern)]


_pass_context_object = click.make_pass_decorator(Context)
#: Checked by load_config, not by click: a directory, FIFO or unreadable file is a config error (exit 78).
CONFIG_PATH = click.Path(path_type=Path, readable=False)


def _later_config(click_context: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        context = click_context.find_object(Context)
        if context is not None:
            context.config_path = value
            context._config = None


def _later_verbose(click_context: click.Context, _param: click.Parameter, value: int) -> None:
    context = click_context.find_object(Context)
    if value and context is not None:
        context.verbose += value
        _setup_logging(context.verbose, context.quiet)


def _later_quiet(click_context: click.Context, _param: click.Parameter, value: bool) -> None:
    context = click_context.find_object(Context)
    if value and context is not None:
        context.quiet = True
        _setup_logging(context.verbose, context.quiet)


def global_options(command: F) -> F:
    """-c/--config, -v and -q also after the subcommand (`mailmirror sync -c FILE`), as well as before it."""
    for option in (
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_later_quiet,
                     help="Only warnings and errors in the log (also before the command)."),
        click.option("-v", "--verbose", count=True, expose_value=False, callback=_later_verbose,
                     help="More detail in the log (also before the command)."),
        click.option("-c", "--config", type=CONFIG_PATH, default=None, expose_value=False,
                     callback=_later_config, help="The YAML config file (also before the command)."),
    ):  # fmt: skip
        command = option(command)
    return command


def pass_context(command: F) -> F:
    """Hand the command the shared Context; the global options work after the command name too."""
    return global_options(cast(F, _pass_context_object(command)))


def _take_shard(click_context: click.Context, _param: click.Parameter, value: str | None) -> None:
    from mailmirror.config.shards import resolve_shard

    context = click_context.find_object(Context)
    assert context is not None  # the group made it
    context.shard = resolve_shard(value)


shard_option = click.option(
    "--shard",
    metavar="K/N",
    expose_value=False,
    callback=_take_shard,
    help="Only the pairs of shard K of N (K from 0 to N-1; default: $MAILMIRROR_SHARD, or the pod name's "
    "ordinal with $MAILMIRROR_SHARDS), with the shard's own state database (state.shard-K-of-N.db). "
    "See docs/scale-out.md.",
)


def _setup_logging(verbose: int, quiet: bool, log_format: str = "text") -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # imapclient logs every command at DEBUG (including LOGIN's arguments): never let it through.
    logging.getLogger("imapclient").setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            ensure_ascii=False,
        )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=CONFIG_PATH,
    default=lambda: os.environ.get("MAILMIRROR_CONFIG", DEFAULT_CONFIG),
    show_default=f"$MAILMIRROR_CONFIG or {DEFAULT_CONFIG}",
    help="The YAML file describing accounts and pairs.",
)
@click.option("-v", "--verbose", count=True, help="More detail in the log (debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors in the log.")
@click.version_option(__version__, "-V", "--version")
@click.pass_context
def cli(click_context: click.Context, config_path: Path, verbose: int, quiet: bool) -> None:
    """mailmirror copies, mirrors and backs up IMAP mailboxes: imapsync's job, stateful and observable.

    A pair copies every folder of a source account to a destination account: exact bytes, flags and
    INTERNALDATE, never touching the source, never deleting anything unless the pair asks. Its state
    database remembers what was copied, so the next pass costs only what changed.

    \b
    Typical cutover:
      mailmirror check              log in to every account, show capabilities
      mailmirror sync --dry-run     what a pass would do, touching nothing
      mailmirror sync               one pass now (repeat, or run the daemon)
      mailmirror verify             prove every message is on the destination
      mailmirror report --verify    the sign-off for the change ticket (md, json or csv)

    PAIRS arguments are pair names or glob patterns ('staff-*'). The options -c/--config, -v and -q work
    before or after the command: `mailmirror sync -c FILE`.
    """
    click_context.obj = Context(config_path, verbose, quiet)
    _setup_logging(verbose, quiet)


def _apply_log_config(context: Context) -> None:
    """Log format and level from the config; -v / -q on the command line win over the level."""
    _setup_logging(context.verbose, context.quiet, context.config.log.format)
    if not context.verbose and not context.quiet:
        logging.getLogger().setLevel(context.config.log.level.upper())


def _exit_code_for(errors: Sequence[MailmirrorError]) -> ExitCode:
    for kind, code in ((ConfigError, ExitCode.CONFIG), (AuthenticationFailure, ExitCode.NOPERM)):
        if any(isinstance(error, kind) for error in errors):
            return code
    if any(isinstance(error, ConnectionFailure) for error in errors):
        return ExitCode.UNAVAILABLE
    return errors[0].exit_code if errors else ExitCode.OK


# -- sync -------------------------------------------------------------------------------------------------


@cli.command(short_help="One pass of each pair now, then a summary.")
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
    from mailmirror.cli.report import RichProgress
    from mailmirror.engine.parallel import ParallelPasses
    from mailmirror.engine.sync import LogProgress
    from mailmirror.state.store import StateStore

    _apply_log_config(context)
    names = context.pair_names(pairs)
    config = context.config
    StateStore(config.state.path).close()  # an unusable state.path: one config error (exit 78), before any pass
    show_bars = context.stdout.is_terminal if progress is None else progress
    bars = RichProgress(context.stdout) if show_bars else None
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
    with manager, stop.handling():
        reports = _collect_reports(context, passes, stop)
    if stop.signum is not None:
        sys.exit(128 + stop.signum)  # 130 for Ctrl-C, 143 for SIGTERM
    errors = [report.error for report in reports if report.error is not None]
    if errors:
        sys.exit(_exit_code_for(errors))
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


def _collect_reports(context: Context, passes: ParallelPasses, stop: _StopRequest) -> list[PairReport]:
    """Each pass's summary as it ends; after a stop request, the passes under way get daemon.stop_timeout
    to record their batch in flight."""
    from mailmirror.cli.report import print_pass

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
        print_pass(context.stdout, report, pair.source, pair.destination)
        if report.error is not None:
            named = str(report.error).startswith(f"pair '{report.pair}'")
            message = str(report.error) if named else f"pair '{report.pair}': {report.error}"
            context.stderr.print(f"mailmirror: {message}", markup=False, highlight=False)
    return reports


# -- run ------------------------------------------------------------------------------------------------


@cli.command(short_help="The daemon: every pair on its schedule, IDLE push, reload on SIGHUP.")
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

    _apply_log_config(context)
    code = Daemon(context.config_path, shard=context.shard).run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a pass stuck in network I/O: the journal keeps the state consistent


# -- plan -----------------------------------------------------------------------------------------------


@cli.command(short_help="Folder mapping, sizes and what a pass would do; changes nothing.")
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
    from mailmirror.engine.sync import PairPass
    from mailmirror.state.store import StateStore

    _apply_log_config(context)
    if not context.verbose:
        logging.getLogger("mailmirror.engine.sync").setLevel(logging.WARNING)  # the table says it all
    names = context.pair_names(pairs)
    config = context.config
    store = StateStore(config.state.path)
    documents = []
    errors: list[MailmirrorError] = []
    try:
        for name in names:
            pair = config.effective_pairs()[name]
            report = PairPass(name, pair, config, store, dry_run=True, measure=True).run()
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
        sys.exit(_exit_code_for(errors))


# -- verify -----------------------------------------------------------------------------------------------


@cli.command(short_help="Deep-compare source and destination (the cutover proof).")
@click.argument("pairs", nargs=-1)
@click.option(
    "-j",
    "--parallel",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="Pairs verified at the same time.",
)
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

    _apply_log_config(context)
    names = context.pair_names(pairs)
    verdicts = verify_pairs(context.config, names, parallel, lambda verdict: print_verdict(context.stdout, verdict))
    errors = [verdict.error for verdict in verdicts if verdict.error is not None]
    if errors:
        sys.exit(_exit_code_for(errors))
    if not all(verdict.clean for verdict in verdicts):
        sys.exit(ExitCode.DIFFERENCES)


# -- check ------------------------------------------------------------------------------------------------


@cli.command(short_help="Log in to every account, report login mechanism and capabilities.")
@click.argument("accounts", nargs=-1)
@pass_context
def check(context: Context, accounts: tuple[str, ...]) -> None:
    """Validate the config, log in to every account (or ACCOUNTS) and report server capabilities.

    The Login column shows the mechanism used (auth: auto picks the strongest the server offers and
    the credentials allow: SCRAM-SHA-256, SCRAM-SHA-1, PLAIN, LOGIN; OAUTHBEARER, XOAUTH2).

    Nothing is written anywhere. Exit 69 when a server cannot be reached or TLS fails, 77 when a login
    is refused; every account is tried and reported either way.
    """
    from rich.table import Table

    from mailmirror.imap.session import REPORTED_CAPABILITIES, Session

    _apply_log_config(context)
    config = context.config
    unknown = [name for name in accounts if name not in config.accounts]
    if unknown:
        raise UsageError(f"unknown account {', '.join(map(repr, unknown))} (known: {', '.join(config.accounts)})")
    table = Table(title=f"Accounts in {context.config_path}", title_justify="left")
    for column in ("Account", "Server", "TLS", "Login", "Namespace", "Has", "Lacks"):
        table.add_column(column, overflow="fold")
    errors: list[MailmirrorError] = []
    for name in accounts or tuple(config.accounts):
        account = config.accounts[name]
        server = f"{account.host}:{account.effective_port}"
        tls = account.tls + ("" if account.tls == "none" or account.tls_verify else " (unverified)")
        try:
            with Session.open(name, account) as session:
                has = [_capability_text(session.capabilities, cap) for cap in REPORTED_CAPABILITIES]
                namespace = f"prefix {session.prefix or '(none)'}, separator {session.separator}"
                table.add_row(
                    name,
                    server,
                    tls,
                    f"[green]ok[/green] ({session.mechanism})",
                    namespace,
                    " ".join(text for text in has if text),
                    " ".join(cap for cap, text in zip(REPORTED_CAPABILITIES, has, strict=True) if not text) or "-",
                )
        except MailmirrorError as failure:
            errors.append(failure)
            table.add_row(name, server, tls, "[red]failed[/red]", "", "", "")
    context.stdout.print(table)
    for problem in errors:
        context.stderr.print(f"mailmirror: {problem}", markup=False, highlight=False)
    if errors:
        sys.exit(_exit_code_for(errors))


def _capability_text(capabilities: frozenset[str], name: str) -> str:
    """The capability as the server announces it (APPENDLIMIT=…), or "" when it does not."""
    if name in capabilities:
        return name
    return next((c for c in sorted(capabilities) if c.startswith(name + "=")), "")


# -- status -----------------------------------------------------------------------------------------------


@cli.command(short_help="One line per pair from the state database: state, messages, pending, errors.")
@click.argument("pairs", nargs=-1)
@click.option("--failing", is_flag=True, help="Only pairs whose last pass failed or left messages refused.")
@click.option(
    "--stale",
    is_flag=True,
    help="Only pairs without a success within metrics.stale_after_intervals of their schedule (or never).",
)
@click.option(
    "--incomplete",
    is_flag=True,
    help="Only pairs with messages not on the destination yet (pending, refused, failing or never synced).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON document).")
@shard_option
@pass_context
def status(
    context: Context, pairs: tuple[str, ...], failing: bool, stale: bool, incomplete: bool, as_json: bool
) -> None:
    """Show, from the state database (no server is contacted), one line per pair (PAIRS: names or glob
    patterns such as 'staff-*'; all by default): its state (ok, partial, failing, stale, running, never), last
    success, messages on the source and the destination at its last full pass, messages pending and refused,
    and the last error; then the totals. Several filters show the pairs matching any of them.
    """
    from mailmirror.service.fleet import fleet_status, print_status, status_json
    from mailmirror.state.store import StateStore

    names = context.pair_names(pairs)
    filters = [name for name, given in (("failing", failing), ("stale", stale), ("incomplete", incomplete)) if given]
    store = StateStore(context.config.state.path)
    try:
        statuses = [s for s in fleet_status(context.config, store, names) if s.matches(filters)]
    finally:
        store.close()
    if as_json:
        document = status_json(statuses, state=str(context.config.state.path), filters=filters)
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    print_status(context.stdout, statuses, f"State in {context.config.state.path}")


# -- report -----------------------------------------------------------------------------------------------


@cli.command(short_help="The cutover sign-off: per pair and in total, as Markdown, JSON or CSV.")
@click.argument("pairs", nargs=-1)
@click.option(
    "--format",
    "form",
    type=click.Choice(["md", "json", "csv"]),
    default="md",
    show_default=True,
    help="md: for a change ticket; json, csv: for tools and spreadsheets.",
)
@click.option(
    "--verify", "run_verify", is_flag=True, help="Run `mailmirror verify` on the pairs first (slow: reads all)."
)
@click.option(
    "-j",
    "--parallel",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="With --verify: pairs verified at the same time.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@shard_option
@pass_context
def report(
    context: Context,
    pairs: tuple[str, ...],
    form: str,
    run_verify: bool,
    parallel: int,
    output: Path | None,
) -> None:
    """The cutover sign-off for PAIRS (names or glob patterns; all by default), from the state database: per
    pair and in total, folders and messages on each side, messages copied, already there (found by identity),
    skipped by rule and refused (with the server's reasons), pending, the last verify result, and whether the
    pair is ready for cutover (nothing pending or refused, last verify clean).

    With --verify, verifies the pairs first (as `mailmirror verify`, results recorded) and exits like it: 65
    when a pair has differences. Without, exit 0; the report says which pairs were never verified.
    """
    from mailmirror.service.fleet import ReportContext, fleet_status, render_report, verify_pairs
    from mailmirror.state.store import StateStore

    _apply_log_config(context)
    names = context.pair_names(pairs)
    config = context.config
    verdicts = verify_pairs(config, names, parallel, lambda verdict: None) if run_verify else []
    store = StateStore(config.state.path)
    try:
        statuses = fleet_status(config, store, names)
    finally:
        store.close()
    accounts = {name: str(account.identity) for name, account in config.accounts.items()}
    about = ReportContext(
        config_path=str(context.config_path),
        state_path=str(config.state.path),
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shard=None if context.shard is None else str(context.shard),
        selection=list(pairs),
        pairs=config.effective_pairs(),
        accounts=accounts,
    )
    text = render_report(statuses, about, form)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
    errors = [verdict.error for verdict in verdicts if verdict.error is not None]
    for verdict in verdicts:
        if verdict.error is not None:
            context.stderr.print(f"mailmirror: pair '{verdict.pair}': {verdict.error}", markup=False, highlight=False)
    if errors:
        sys.exit(_exit_code_for(errors))
    if not all(verdict.clean for verdict in verdicts):
        sys.exit(ExitCode.DIFFERENCES)


# -- config -----------------------------------------------------------------------------------------------


@cli.group("config", short_help="Validate the config, print its JSON Schema, reference or an example.")
@global_options
def config_group() -> None:
    """Validate the config, print its JSON Schema, its option reference, or an annotated example."""


@config_group.command("validate")
@pass_context
def config_validate(context: Context) -> None:
    """Check the config file; print every error as file:line: field: message (exit 78)."""
    config = context.config
    sets = config.pair_set_counts
    from_sets = f"; {', '.join(f'{count} from pair set {name}' for name, count in sets.items())}" if sets else ""
    # click.echo, not rich: one plain line, and rich's import is a tenth of this command's start-up
    click.echo(f"{context.config_path}: valid ({len(config.accounts)} accounts, {len(config.pairs)} pairs{from_sets})")


@config_group.command("schema")
@global_options
def config_schema() -> None:
    """Print the JSON Schema of the config (for editors: yaml-language-server, VS Code, …)."""
    from mailmirror.config.config_file import config_json_schema

    click.echo(json.dumps(config_json_schema(), indent=2, ensure_ascii=False))


@config_group.command("reference")
@global_options
def config_reference() -> None:
    """Print the reference of every config option (Markdown, as docs/configuration.md)."""
    from mailmirror.config.doc import render

    click.echo(render(), nl=False)


@config_group.command("example")
@global_options
def config_example() -> None:
    """Print an annotated example config with every option and its default."""
    from importlib import resources

    click.echo(resources.files("mailmirror").joinpath("data/config.example.yaml").read_text("utf-8"), nl=False)


# -- oauth2 -----------------------------------------------------------------------------------------------


@cli.group("oauth2", short_help="OAuth2 tokens: obtain the first refresh token of an account.")
def oauth2_group() -> None:
    """OAuth2 for accounts with an oauth2: client (Gmail, Microsoft 365, any OAuth2 provider).

    mailmirror gets and refreshes access tokens itself; it needs one refresh token per account to start
    with, from the account's oauth2.refresh_token or from `mailmirror oauth2 authorize ACCOUNT`.
    """


@oauth2_group.command("authorize")
@click.argument("account_name", metavar="ACCOUNT")
@pass_context
def oauth2_authorize(context: Context, account_name: str) -> None:
    """Obtain a refresh token for ACCOUNT with the device authorization grant (RFC 8628).

    Prints a verification URL and a code: open the URL on any device, sign in as the mailbox user (or an
    admin consenting for it) and enter the code. mailmirror polls the token endpoint meanwhile and stores
    the refresh token in the account's oauth2.token_file (mode 0600), then logs in once to prove it works.
    Exit 77 when the authorization is denied or expires, 69 when the provider cannot be reached.
    """
    from mailmirror.imap import oauth2
    from mailmirror.imap.session import Session

    _apply_log_config(context)
    config = context.config
    account = config.accounts.get(account_name)
    if account is None:
        raise UsageError(f"unknown account {account_name!r} (known: {', '.join(config.accounts)})")
    if account.oauth2 is None:
        raise UsageError(f"account {account_name!r} has no oauth2: client to authorize (see docs/auth.md)")
    grant = oauth2.start_device_authorization(account.oauth2)
    where = grant.verification_uri_complete or grant.verification_uri
    context.stdout.print(
        f"To let mailmirror read the mailbox of {account.username} ({account_name}):\n"
        f"  1. open {where}\n  2. enter the code {grant.user_code}\n"
        f"Waiting for the approval (the code expires in {grant.expires_in:.0f}s)...",
        markup=False,
        highlight=False,
    )
    path = oauth2.poll_device_authorization(account.oauth2, grant)[1]
    oauth2.TOKENS.clear()
    with Session.open(account_name, account) as session:
        mechanism = session.mechanism
    context.stdout.print(
        f"Authorized: refresh token stored in {path}; logged in to {account.host} with {mechanism}.",
        markup=False,
        highlight=False,
    )


# -- import ---------------------------------------------------------------------------------------------


@cli.group("import", short_help="Convert another tool's settings (imapsync) into a mailmirror config.")
def import_group() -> None:
    """Convert another tool's settings into mailmirror config YAML."""


@import_group.command("imapsync", context_settings={"ignore_unknown_options": True})
@click.option(
    "--sync-loop",
    "sync_loop",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An imapsync sync_loop file (host1;user1;password1;host2;user2;password2;extra options): one pair a line; "
    "the OPTIONS apply to every line.",
)
@click.option("--state", "state_path", metavar="PATH", help="state.path of the generated config.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def import_imapsync(
    sync_loop: Path | None, state_path: str | None, output: Path | None, options: tuple[str, ...]
) -> None:
    """Convert an imapsync command line (mailmirror import imapsync -- --host1 … --user1 …) or a sync_loop file
    into config YAML. Options mailmirror cannot express are named on stderr and in a comment at the top;
    passwords are never written: --password1 becomes {env: NAME} (export it), --passfile1 {file: PATH}.
    When an option that narrows which folders or messages are taken (an unreadable --include/--exclude
    regex, --search2, --justfolders, an unknown option, …) is not converted, the deletions (--delete1,
    --delete2, --delete2folders) are left out too, named. docs/imapsync.md maps every option.

    Exit 0 when everything was converted; 78 when something was not (the YAML is still written: review
    it before use); 64 on unusable options (a missing --host1, a value that is not a number).
    """
    from mailmirror.config.imapsync import convert_command_line, convert_sync_loop

    if sync_loop is not None:
        conversion = convert_sync_loop(sync_loop, options, state_path=state_path)
    else:
        conversion = convert_command_line(options, state_path=state_path)
    text = conversion.yaml_text()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
    for line in conversion.unsupported:
        click.echo(f"mailmirror: not converted: {line}", err=True)
    for line in conversion.notes:
        click.echo(f"mailmirror: note: {line}", err=True)
    if conversion.unsupported:
        sys.exit(ExitCode.CONFIG)


# -- demo -------------------------------------------------------------------------------------------------


@cli.command(short_help="Two throwaway local IMAP servers, sample mail, one sync, a verify.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the demo servers keep their files (default: a new temporary folder).",
)
@click.option(
    "--messages",
    default=240,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many sample messages to generate.",
)
@click.option("--keep", is_flag=True, help="Leave the two servers running until Ctrl-C, to look around.")
@pass_context
def demo(context: Context, workdir: Path | None, messages: int, keep: bool) -> None:
    """Start two throwaway Dovecot servers on 127.0.0.1, fill one with sample mail, mirror it, verify.

    Needs Dovecot (Debian package dovecot-imapd). Nothing outside the work folder is touched.
    """
    from mailmirror.cli.demo import run_demo

    if workdir is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--workdir {workdir}: cannot create it ({error.strerror or error})") from None
    if not context.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # the demo's tables tell the story
    sys.exit(run_demo(context.stdout, workdir=workdir, messages=messages, keep=keep))


# -- entry point ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="mailmirror", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mailmirror: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(ExitCode.USAGE)
    except ConfigError as error:
        from mailmirror.config.problems import format_config_error

        click.echo(format_config_error(error), err=True)  # file:line: field: message, one per line
        sys.exit(error.exit_code)
    except MailmirrorError as error:
        click.echo(f"mailmirror: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("mailmirror: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `mailmirror plan --json | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitCode.OK)
    except SystemExit:
        raise
    except Exception as error:  # a bug: say so, with the traceback only when asked for
        if os.environ.get("MAILMIRROR_DEBUG"):
            raise
        click.echo(
            f"mailmirror: internal error ({type(error).__name__}: {error}). This is a bug: please report it "
            "(set MAILMIRROR_DEBUG=1 for the traceback).",
            err=True,
        )
        sys.exit(ExitCode.SOFTWARE)
    sys.exit(ExitCode.OK)
