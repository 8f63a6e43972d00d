"""References to secrets (passwords, OAuth2 tokens) kept outside the config file.

A secret is written as exactly one of::

    password: {env: OLD_PASS}                                  # an environment variable
    password: {file: /run/credentials/mailmirror.service/old}  # a file (systemd credentials)
    password: {command: [pass, show, mail/old]}                # the output of a command, run without a shell

An inline string (``password: hunter2``) is rejected: secrets never sit in config files.

The value is read only when :meth:`Secret.reveal` is called, at login time, never while the config is
loaded, so ``mailmirror config validate`` works on a machine that does not hold the secrets. A
:class:`Secret` never keeps, prints, logs or serialises the value: ``repr()``, ``str()``,
``model_dump()`` and every error message show only the reference (``Secret(env=OLD_PASS)``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import time
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)

from mailmirror.config.units import ConfigPath
from mailmirror.errors import ConfigError

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
COMMAND_TIMEOUT_SECONDS = 30
_PIPE_GRACE_SECONDS = 1.0
MAX_SECRET_BYTES = 64 * 1024  # a password or token; a larger file is the wrong file
_POLL_SECONDS = 0.2
SECRET_KINDS = ("env", "file", "command")

INLINE_SECRET_MESSAGE = (
    "inline secrets are not allowed in the config file; use {env: NAME}, {file: PATH} or {command: [argv, ...]}"
)
SHAPE_MESSAGE = "must be a mapping with exactly one of env, file or command, e.g. {env: NAME}"


def _check_env_name(value: str) -> str:
    if not re.fullmatch(ENV_NAME_PATTERN, value):
        # Never echo the value: a password typed here by mistake must not end up in an error message.
        raise ValueError("must be the name of an environment variable (letters, digits and _)")
    return value


def _reject_command_string(value: object) -> object:
    if isinstance(value, str):
        raise ValueError("must be a list of arguments, e.g. [pass, show, mail/old] (it is run without a shell)")
    return value


def _check_program(argv: tuple[str, ...]) -> tuple[str, ...]:
    if not argv[0]:
        raise ValueError("the first argument (the program to run) must not be empty")
    return argv


EnvName = Annotated[
    str,
    AfterValidator(_check_env_name),
    WithJsonSchema({"type": "string", "pattern": ENV_NAME_PATTERN}),
]
Command = Annotated[
    tuple[str, ...],
    Field(min_length=1),
    BeforeValidator(_reject_command_string),
    AfterValidator(_check_program),
]


class Secret(BaseModel):
    """A secret kept outside the config file: exactly one of env, file or command. Inline values are rejected."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,  # command: [get-token, --port, 8080]
        json_schema_extra={"minProperties": 1, "maxProperties": 1},
    )

    env: EnvName | None = Field(default=None, description="Name of an environment variable holding the secret.")
    file: ConfigPath | None = Field(
        default=None,
        description=(
            "File holding the secret (e.g. a systemd credential under $CREDENTIALS_DIRECTORY); one trailing "
            "newline is removed. Relative to the config file's directory."
        ),
    )
    command: Command | None = Field(
        default=None,
        description=(
            "Command whose standard output is the secret, as a list of arguments (run without a shell, "
            f"killed after {COMMAND_TIMEOUT_SECONDS}s); one trailing newline is removed."
        ),
    )

    _label: str = PrivateAttr(default="secret")

    @model_validator(mode="before")
    @classmethod
    def _reject_inline_values(cls, data: Any) -> Any:
        if isinstance(data, str | bytes | int | float):
            raise ValueError(INLINE_SECRET_MESSAGE)
        if not isinstance(data, dict | Secret):
            raise ValueError(SHAPE_MESSAGE)
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Secret:
        given = [kind for kind in SECRET_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"{SHAPE_MESSAGE} (got {', '.join(given) or 'none of them'})")
        return self

    def attach_label(self, label: str) -> None:
        """Name the config field holding this secret (``accounts.old.password``) for error messages.

        Called by the config loader; the label is metadata, not a field, so the model stays frozen.
        """
        self._label = label

    @property
    def label(self) -> str:
        """Where this secret is configured, e.g. ``accounts.old.password``."""
        return self._label

    def describe(self) -> str:
        """The reference in words, e.g. ``environment variable OLD_PASS``: safe to print and log."""
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        return f"command {_flow_list(self.command or ())}"

    def reveal(self) -> str:
        """Read the secret now. Raises :class:`ConfigError` naming the field and the reference, never the value."""
        if self.env is not None:
            value = self._read_env(self.env)
        elif self.file is not None:
            value = _strip_one_newline(self._read_file())
        else:
            value = _strip_one_newline(self._run_command(self.command or ()))
        if not value:
            raise self._error("is empty")
        return value

    def _read_env(self, name: str) -> str:
        value = os.environ.get(name)
        if value is None:
            raise self._error("is not set")
        return value

    def _read_file(self) -> str:
        assert self.file is not None
        try:
            if not stat.S_ISREG(os.stat(self.file).st_mode):  # a FIFO blocks, /dev/zero never ends
                raise self._error("is not a regular file")
            with self.file.open("rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
            if len(data) > MAX_SECRET_BYTES:
                raise self._error(f"is larger than {MAX_SECRET_BYTES} bytes: is it the right file?")
        except OSError as error:
            raise self._error(f"cannot be read: {error.strerror or error}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error("is not UTF-8 text") from None

    def _run_command(self, argv: tuple[str, ...]) -> str:
        try:
            returncode, stdout, stderr = _run_in_own_group(argv, command_timeout())
        except FileNotFoundError:
            raise self._error(f"cannot run: {argv[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise self._error(
                f"did not finish within {command_timeout():g}s (it and the processes it started were killed); "
                "does it wait for input, such as a password prompt?"
            ) from None
        except OSError as error:
            raise self._error(f"cannot run: {error.strerror or error}") from None
        if returncode != 0:
            raise self._error(f"failed with exit status {returncode}{_stderr_hint(stderr)}")
        try:
            return stdout.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error("printed something that is not UTF-8 text") from None

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self._label}: {self.describe()} {problem}")

    def __repr__(self) -> str:
        if self.env is not None:
            return f"Secret(env={self.env})"
        if self.file is not None:
            return f"Secret(file={self.file})"
        return f"Secret(command={_flow_list(self.command or ())})"

    __str__ = __repr__


def command_timeout() -> float:
    """How long a secret command may run: 30s, or $MAILMIRROR_SECRET_COMMAND_TIMEOUT seconds."""
    try:
        return max(0.1, float(os.environ.get("MAILMIRROR_SECRET_COMMAND_TIMEOUT", COMMAND_TIMEOUT_SECONDS)))
    except ValueError:
        return float(COMMAND_TIMEOUT_SECONDS)


def _run_in_own_group(argv: tuple[str, ...], timeout: float) -> tuple[int, bytes, bytes]:
    """Run the command in a process group of its own: (exit status, stdout, stderr).

    Its output ends when the command exits, even if a process it started in the background still holds
    the pipe (then that group is killed after a grace second). On timeout the whole group is killed.
    """
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while True:
            try:
                stdout, stderr = process.communicate(timeout=_POLL_SECONDS)
                return process.returncode, stdout, stderr
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if exited_at is None and process.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at >= _PIPE_GRACE_SECONDS:
                    _kill_group(process.pid)  # a background child holds the pipe: the command itself is done
                    stdout, stderr = process.communicate()
                    return process.returncode, stdout, stderr
                if now >= deadline:
                    _kill_group(process.pid)
                    process.communicate()
                    raise


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _flow_list(argv: tuple[str, ...]) -> str:
    """``[pass, show, mail/old]``: the command as it is written in the config file."""
    return "[" + ", ".join(argv) + "]"


def _strip_one_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _stderr_hint(stderr: bytes) -> str:
    """The last line the command wrote to standard error (its diagnostic), shortened; never its output."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return f": {last[:200]}"
