"""Getting started: `check` (log in to every account), `config` (validate, schema, reference, example),
`oauth2 authorize`, `import imapsync` and the `demo`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from mailmirror.cli.context import Context, apply_log_config, global_options, pass_context
from mailmirror.cli.exits import exit_code_for
from mailmirror.errors import ExitCode, MailmirrorError, UsageError


@click.command(short_help="Log in to every account, report login mechanism and capabilities.")
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

    apply_log_config(context)
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
        sys.exit(exit_code_for(errors))


def _capability_text(capabilities: frozenset[str], name: str) -> str:
    """The capability as the server announces it (APPENDLIMIT=…), or "" when it does not."""
    if name in capabilities:
        return name
    return next((c for c in sorted(capabilities) if c.startswith(name + "=")), "")


@click.group("config", short_help="Validate the config, print its JSON Schema, reference or an example.")
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


@click.group("oauth2", short_help="OAuth2 tokens: obtain the first refresh token of an account.")
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

    apply_log_config(context)
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


@click.group("import", short_help="Convert another tool's settings (imapsync) into a mailmirror config.")
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


@click.command(short_help="Two throwaway local IMAP servers, sample mail, one sync, a verify.")
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
