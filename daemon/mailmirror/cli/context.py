"""What every command shares: the Context (config, pair selection, consoles), the global options that work
before or after the command name, --shard, and the log set-up."""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from mailmirror.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from mailmirror.config.config_file import Config
    from mailmirror.config.shards import Shard

DEFAULT_CONFIG = "/etc/mailmirror/config.yaml"

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
        setup_logging(context.verbose, context.quiet)


def _later_quiet(click_context: click.Context, _param: click.Parameter, value: bool) -> None:
    context = click_context.find_object(Context)
    if value and context is not None:
        context.quiet = True
        setup_logging(context.verbose, context.quiet)


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


def verify_parallel_option(help_text: str) -> Callable[[F], F]:
    """-j/--parallel N of the commands that verify pairs: how many at the same time (1 to 64, default 1)."""
    return click.option(
        "-j", "--parallel", type=click.IntRange(1, 64), default=1, show_default=True, metavar="N", help=help_text
    )


def setup_logging(verbose: int, quiet: bool, log_format: str = "text") -> None:
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
    # APScheduler logs each job's start and end at INFO: four of five lines of a daemon pass, 50,000 a round
    # for a fleet of 10,000 pairs; our own line per pass says what happened. -v shows them.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbose else logging.WARNING)


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


def apply_log_config(context: Context) -> None:
    """Log format and level from the config; -v / -q on the command line win over the level."""
    setup_logging(context.verbose, context.quiet, context.config.log.format)
    if not context.verbose and not context.quiet:
        logging.getLogger().setLevel(context.config.log.level.upper())
