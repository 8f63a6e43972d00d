"""The commands that read the state database over a fleet: `status` (one line per pair) and `report` (the
cutover sign-off)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from mailmirror.cli.context import Context, apply_log_config, pass_context, shard_option, verify_parallel_option
from mailmirror.cli.exits import exit_code_for
from mailmirror.errors import ExitCode


@click.command(short_help="One line per pair from the state database: state, messages, pending, errors.")
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
    from mailmirror.cli.status_table import print_status
    from mailmirror.service.fleet import fleet_status
    from mailmirror.service.fleet_render import status_json
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


@click.command(short_help="The cutover sign-off: per pair and in total, as Markdown, JSON or CSV.")
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
@verify_parallel_option("With --verify: pairs verified at the same time.")
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
    from mailmirror.service.fleet import fleet_status, verify_pairs
    from mailmirror.service.fleet_render import ReportContext, render_report
    from mailmirror.state.store import StateStore

    apply_log_config(context)
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
        sys.exit(exit_code_for(errors))
    if not all(verdict.clean for verdict in verdicts):
        sys.exit(ExitCode.DIFFERENCES)
