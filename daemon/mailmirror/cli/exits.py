"""Exit codes (sysexits, as in the README) and the error handling around every command: a clear sentence
on stderr and the error's code, never a traceback unless MAILMIRROR_DEBUG asks for one."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import click

from mailmirror.errors import (
    AuthenticationFailure,
    ConfigError,
    ConnectionFailure,
    ExitCode,
    MailmirrorError,
)

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


def exit_code_for(errors: Sequence[MailmirrorError]) -> ExitCode:
    for kind, code in ((ConfigError, ExitCode.CONFIG), (AuthenticationFailure, ExitCode.NOPERM)):
        if any(isinstance(error, kind) for error in errors):
            return code
    if any(isinstance(error, ConnectionFailure) for error in errors):
        return ExitCode.UNAVAILABLE
    return errors[0].exit_code if errors else ExitCode.OK


def run_with_exit_codes(invoke: Callable[[], object]) -> NoReturn:
    """Run the command line and exit with the code its outcome calls for."""
    try:
        invoke()
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
