"""The `mailmirror` command line: one program, subcommands, sysexits-style exit codes.

The commands live by area: pass_commands (sync, run, plan, verify), fleet_commands (status, report),
setup_commands (check, config, oauth2, import, demo); context.py holds what they share, exits.py the exit
codes and the error handling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from mailmirror import __version__
from mailmirror.cli import fleet_commands, pass_commands, setup_commands
from mailmirror.cli.context import CONFIG_PATH, DEFAULT_CONFIG, Context, setup_logging
from mailmirror.cli.exits import EXIT_CODES_HELP, run_with_exit_codes


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
    setup_logging(verbose, quiet)


for command in (
    pass_commands.sync,
    pass_commands.run,
    pass_commands.plan,
    pass_commands.verify,
    fleet_commands.status,
    fleet_commands.report,
    setup_commands.check,
    setup_commands.config_group,
    setup_commands.oauth2_group,
    setup_commands.import_group,
    setup_commands.demo,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    run_with_exit_codes(
        lambda: cli.main(args=list(argv) if argv is not None else None, prog_name="mailmirror", standalone_mode=False)
    )
