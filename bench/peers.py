"""The tools under test: how each one is configured and started for one source → destination copy.

Every tool runs as its own process (so wall time includes start-up, and peak RSS is the tool's own).
``command(source, destination, state_dir)`` (re)writes the tool's configuration in ``state_dir`` and
returns the argv; calling it again with other endpoints (the counting proxies) keeps the same state.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path

from harness import Endpoint

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


class Peer(ABC):
    name: str = ""
    #: Whether the tool remembers what it copied (stateless tools re-read both sides every pass).
    stateful: bool = True

    @abstractmethod
    def command(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> list[str]: ...

    def env(self) -> dict[str, str]:
        """Variables to set in the tool's environment (on top of the bench's)."""
        return {}

    def version(self) -> str:
        return ""


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


class Mailmirror(Peer):
    """``mailmirror -q -c CFG sync --no-progress``: one pair, the state DB in ``state_dir``.

    ``mailmirror`` is the working tree (the venv's editable install).  ``mailmirror@REF`` is the code of
    a git commit, exported with ``git archive`` into ``export_dir`` and run as ``python -m mailmirror``
    with that ``daemon/`` first on PYTHONPATH: an engine pinned to a commit, unaffected by edits in
    progress, and comparable with the working tree in the same run.
    """

    def __init__(
        self,
        executable: Path,
        *,
        ref: str | None = None,
        export_dir: Path | None = None,
        transfer: str | None = None,
    ) -> None:
        self.executable = executable
        self.transfer = transfer  # the pair's transfer settings (YAML flow mapping), None: the defaults
        self.ref = ref
        self.name = "mailmirror" if ref is None else f"mailmirror@{ref}"
        self.commit = ""
        self.pythonpath: Path | None = None
        if ref is not None:
            if export_dir is None:
                raise ValueError("mailmirror@REF needs an export directory")
            self.commit = _git("rev-parse", "--short", f"{ref}^{{commit}}")
            target = export_dir / f"mailmirror-{self.commit}"
            target.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", "--format=tar", self.commit, "daemon"],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
            self.pythonpath = target / "daemon"

    def base_argv(self) -> list[str]:
        if self.pythonpath is None:
            return [str(self.executable)]
        return [sys.executable, "-m", "mailmirror"]

    def env(self) -> dict[str, str]:
        return {} if self.pythonpath is None else {"PYTHONPATH": str(self.pythonpath)}

    @staticmethod
    def account(endpoint: Endpoint) -> str:
        lines = [
            f"host: {endpoint.host}",
            f"port: {endpoint.port}",
            f"tls: {endpoint.tls}",
            f"username: {_yaml_str(endpoint.username)}",
            f"password: {{file: {_yaml_str(str(endpoint.password_file))}}}",
            "timeout: 300s",
        ]
        if endpoint.tls != "none":
            lines.append(f"tls_ca: {_yaml_str(str(endpoint.ca))}")
        return "".join(f"    {line}\n" for line in lines)

    def config_text(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> str:
        return (
            "# written by bench/peers.py\n"
            f"state: {{path: {_yaml_str(str(state_dir / 'state.db'))}}}\n"
            "metrics: {enabled: false}\n"
            "log: {format: text, level: warning}\n"
            "accounts:\n"
            "  src:\n" + self.account(source) + "  dst:\n" + self.account(destination) + "pairs:\n"
            "  bench: {source: src, destination: dst"
            + (f", transfer: {self.transfer}" if self.transfer else "")
            + "}\n"
        )

    def write_config(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> Path:
        path = state_dir / "mailmirror.yaml"
        path.write_text(self.config_text(source, destination, state_dir))
        return path

    def command(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> list[str]:
        config = self.write_config(source, destination, state_dir)
        # -q is a global option: before the subcommand.
        return [*self.base_argv(), "-q", "-c", str(config), "sync", "--no-progress"]

    def verify_command(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> list[str]:
        config = self.write_config(source, destination, state_dir)
        return [*self.base_argv(), "-c", str(config), "verify"]

    def version(self) -> str:
        if self.pythonpath is not None:
            return f"commit {self.commit} ({self.ref})"
        return f"working tree {_git('describe', '--always', '--dirty')}"


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FileNotFoundError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


class Mbsync(Peer):
    """isync's ``mbsync``: one IMAP → IMAP channel, ``Sync Pull`` (far = source → near = destination),
    ``Create Near``, nothing expunged or removed, arrival dates kept, state in ``state_dir``."""

    name = "mbsync"

    def __init__(self, executable: str = "mbsync") -> None:
        found = shutil.which(executable)
        if found is None:
            raise FileNotFoundError(f"{executable} not found (Debian: apt-get install -y isync)")
        self.executable = found

    @staticmethod
    def store(label: str, endpoint: Endpoint) -> str:
        ssl = "None" if endpoint.tls == "none" else "STARTTLS"
        lines = [
            f"IMAPAccount {label}",
            f"Host {endpoint.host}",
            f"Port {endpoint.port}",
            f"User {endpoint.username}",
            f'PassCmd "cat {endpoint.password_file}"',
            f"SSLType {ssl}",
            "AuthMechs LOGIN PLAIN",  # what the lab offers; with "*" (default) mbsync also works here
            "Timeout 300",
        ]
        if endpoint.tls != "none":
            lines += [f"CertificateFile {endpoint.ca}", "SystemCertificates no"]
        lines += ["", f"IMAPStore {label}", f"Account {label}", ""]
        return "\n".join(lines) + "\n"

    def config_text(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> str:
        sync_state = state_dir / "mbsync-state"
        sync_state.mkdir(exist_ok=True)
        return (
            "# written by bench/peers.py\n"
            + self.store("src", source)
            + self.store("dst", destination)
            + "Channel bench\n"
            "Far :src:\n"
            "Near :dst:\n"
            'Patterns "*"\n'
            "Create Near\n"
            "Remove None\n"
            "Expunge None\n"
            "Sync Pull\n"
            "CopyArrivalDate yes\n"
            f"SyncState {sync_state}/\n"
        )

    def command(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> list[str]:
        path = state_dir / "mbsyncrc"
        path.write_text(self.config_text(source, destination, state_dir))
        path.chmod(0o600)
        return [self.executable, "-c", str(path), "-q", "bench"]

    def version(self) -> str:
        out = subprocess.run([self.executable, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()


class Imapsync(Peer):
    """imapsync (not packaged in Debian 12; give its path with --imapsync).  Stateless: every pass
    re-reads the headers of both sides."""

    name = "imapsync"
    stateful = False

    def __init__(self, executable: str) -> None:
        found = shutil.which(executable)
        if found is None:
            raise FileNotFoundError(f"imapsync not found at {executable}")
        self.executable = found

    @staticmethod
    def side(n: int, endpoint: Endpoint) -> list[str]:
        args = [
            f"--host{n}", endpoint.host, f"--port{n}", str(endpoint.port),
            f"--user{n}", endpoint.username, f"--passfile{n}", str(endpoint.password_file),
            f"--nossl{n}",
        ]  # fmt: skip
        args += [f"--notls{n}"] if endpoint.tls == "none" else [f"--tls{n}"]
        return args

    def command(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> list[str]:
        tmp = state_dir / "imapsync-tmp"
        tmp.mkdir(exist_ok=True)
        return [
            self.executable,
            *self.side(1, source),
            *self.side(2, destination),
            "--nolog", "--noreleasecheck", "--nofoldersizes", "--tmpdir", str(tmp),
        ]  # fmt: skip

    def version(self) -> str:
        out = subprocess.run([self.executable, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()


class Floor(Peer):
    """bench/floor.py: FETCH every body and MULTIAPPEND it, no sync logic (see its docstring).
    ``floor`` overlaps fetching and appending (two stages, like mbsync's pipelining); ``floor-seq``
    does one after the other, as mailmirror's executor does."""

    def __init__(self, python: str = sys.executable, *, pipelined: bool = True) -> None:
        self.python = python
        self.pipelined = pipelined
        self.name = "floor" if pipelined else "floor-seq"

    def command(self, source: Endpoint, destination: Endpoint, state_dir: Path) -> list[str]:
        spec = {
            "source": _endpoint_json(source),
            "destination": _endpoint_json(destination),
            "state": str(state_dir / "floor-state.json"),
            "pipelined": self.pipelined,
        }
        path = state_dir / "floor.json"
        path.write_text(json.dumps(spec, indent=2))
        path.chmod(0o600)
        return [self.python, str(BENCH_DIR / "floor.py"), str(path)]

    def version(self) -> str:
        import imapclient

        return f"imapclient {imapclient.__version__}"


def _endpoint_json(endpoint: Endpoint) -> dict[str, str | int]:
    return {
        "host": endpoint.host,
        "port": endpoint.port,
        "username": endpoint.username,
        "password_file": str(endpoint.password_file),
        "tls": endpoint.tls,
        "ca": str(endpoint.ca),
    }
