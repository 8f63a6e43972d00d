"""`mailmirror demo`: two throwaway Dovecot servers on 127.0.0.1, sample mail, one pass, a verify.

Everything lives in one work folder; the servers are stopped at the end (or on Ctrl-C with --keep).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from mailmirror.errors import ConnectionFailure, ExitCode
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabError, LabUser, seed

DEMO_CONFIG = """\
# Written by `mailmirror demo`: two lab servers on 127.0.0.1, STARTTLS verified against the lab CA.
state: {{path: state.db}}
log: {{level: warning}}
accounts:
  old:
    host: 127.0.0.1
    port: {source_port}
    tls: starttls
    tls_ca: {ca}
    username: {source_user}
    password: {{file: secrets/old.password}}
  new:
    host: 127.0.0.1
    port: {destination_port}
    tls: starttls
    tls_ca: {ca}
    username: {destination_user}
    password: {{file: secrets/new.password}}
pairs:
  alice:
    source: old
    destination: new
"""


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)


def write_demo_config(
    root: Path, source: DovecotServer, destination: DovecotServer, source_user: LabUser, destination_user: LabUser
) -> Path:
    _write_secret(root / "secrets" / "old.password", source_user.password)
    _write_secret(root / "secrets" / "new.password", destination_user.password)
    path = root / "mailmirror.yaml"
    path.write_text(
        DEMO_CONFIG.format(
            source_port=source.port,
            destination_port=destination.port,
            ca=source.ca_path,
            source_user=source_user.username,
            destination_user=destination_user.username,
        ),
        encoding="utf-8",
    )
    return path


def run_demo(console: Console, *, workdir: Path | None, messages: int, keep: bool) -> int:
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="mailmirror-demo-")) if workdir is None else workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # Dovecot's unprivileged mail processes must reach the mail folders below it
    console.rule("mailmirror demo")
    console.print(f"Work folder: {root}")
    try:
        return _demo(console, root, messages, keep)
    except LabError as error:
        raise ConnectionFailure(f"demo: the local Dovecot servers could not be started: {error}") from None
    finally:
        if temporary and not keep:
            shutil.rmtree(root, ignore_errors=True)


def _demo(console: Console, root: Path, messages: int, keep: bool) -> int:
    from mailmirror.cli.report import RichProgress, print_pass, print_verdict
    from mailmirror.config.config_file import load_config
    from mailmirror.engine.sync import LogProgress, PairPass
    from mailmirror.engine.verify import verify_pair
    from mailmirror.lab.corpus import describe, sample_mailbox
    from mailmirror.state.store import StateStore

    ca = LabCA(root / "ca")
    with (
        DovecotServer(root / "source", "source", ca=ca) as source,
        DovecotServer(root / "destination", "destination", ca=ca) as destination,
    ):
        source_user = source.add_user("alice")
        destination_user = destination.add_user("alice")
        mailbox = sample_mailbox(seed=1, messages=messages)
        client = source.connect(source_user)
        try:
            for folder, folder_messages in mailbox.items():
                seed(client, folder, folder_messages)
        finally:
            client.logout()
        console.print(
            f"Source      imap://127.0.0.1:{source.port} (STARTTLS) user alice: {describe(mailbox)}\n"
            f"Destination imap://127.0.0.1:{destination.port} (STARTTLS) user alice: empty"
        )
        config_path = write_demo_config(root, source, destination, source_user, destination_user)
        console.print(f"Config      {config_path}\n")
        config = load_config(config_path)
        pair = config.effective_pairs()["alice"]
        store = StateStore(config.state.path)
        try:
            console.rule("mailmirror sync alice (first pass)")
            bars = RichProgress(console) if console.is_terminal else None
            if bars is not None:
                with bars:
                    report = PairPass("alice", pair, config, store, bars).run()
            else:
                report = PairPass("alice", pair, config, store, LogProgress()).run()
            print_pass(console, report, pair.source, pair.destination)
            console.rule("mailmirror sync alice (second pass: nothing changed)")
            started = time.monotonic()
            again = PairPass("alice", pair, config, store, LogProgress()).run()
            console.print(
                f"  {again.copied} messages copied, {again.total('adopted')} re-matched, "
                f"{again.failed} failed in {time.monotonic() - started:.2f} s: the state database knows "
                "what is already there."
            )
        finally:
            store.close()
        console.rule("mailmirror verify alice")
        verdict = verify_pair("alice", pair, config)
        print_verdict(console, verdict)
        if keep:
            _wait_for_ctrl_c(console, config_path, source, destination)
    if report.error is not None:
        return int(report.error.exit_code)
    if not verdict.clean:
        return int(verdict.error.exit_code if verdict.error else ExitCode.DIFFERENCES)
    return int(ExitCode.TEMPFAIL if report.failed else ExitCode.OK)


def _wait_for_ctrl_c(console: Console, config_path: Path, source: DovecotServer, destination: DovecotServer) -> None:
    console.print(
        f"\nThe servers keep running (source port {source.port}, destination port {destination.port}).\n"
        f"Try: mailmirror -c {config_path} sync   |   mailmirror -c {config_path} verify\n"
        "Press Ctrl-C to stop them."
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("Stopping the demo servers.")
