"""Issue 13, path 1, as it was found: a destination that stalls mid-copy and then executes the APPENDs it
had buffered. Not a test (the outcome depends on timing); a trial to re-run by hand.

    .venv/bin/python bench/stall_trial.py [--messages 1500] [--stall 15] [--timeout 5]

Two throwaway Dovecot servers; the source holds --messages messages in three folders; the destination
account has `timeout: --timeout s`. Once 300 messages are on the destination, its imap processes are
stopped (SIGSTOP) for --stall seconds, then continued. Prints the exit code of that pass, the count on
the destination a few seconds later (above the source's: late writes), the next pass's exit code and
what it removed, and `mailmirror verify`'s verdict.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mailmirror.lab.corpus import generated_message
from mailmirror.lab.dovecot import DovecotServer, LabCA, LabUser, seed

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("INBOX", "Archive", "Sent")


def account(name: str, server: DovecotServer, user: LabUser, directory: Path, timeout: int) -> str:
    secret = directory / f"{name}.password"
    secret.write_text(user.password + "\n", encoding="utf-8")
    return (
        f"  {name}:\n    host: 127.0.0.1\n    port: {server.port}\n    tls: starttls\n"
        f"    tls_ca: {server.ca_path}\n    username: {user.username}\n    password: {{file: {secret}}}\n"
        f"    timeout: {timeout}s\n"
    )


def on_destination(server: DovecotServer, user: LabUser) -> int:
    client = server.connect(user)
    try:
        return sum(int(client.folder_status(f, ["MESSAGES"])[b"MESSAGES"]) for f in FOLDERS if client.folder_exists(f))
    finally:
        client.logout()


def imap_processes(server: DovecotServer) -> list[int]:
    return [
        pid for pid in server.pids() if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/imap")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--stall", type=float, default=15.0, help="seconds the destination is stopped")
    parser.add_argument("--timeout", type=int, default=5, help="the destination account's timeout (s)")
    args = parser.parse_args()
    lab = Path(tempfile.mkdtemp(prefix="mailmirror-stall-"))
    lab.chmod(0o755)
    ca = LabCA(lab / "ca")
    source, destination = DovecotServer(lab / "s", "stall-s", ca=ca), DovecotServer(lab / "d", "stall-d", ca=ca)
    source.start()
    destination.start()
    try:
        source_user, destination_user = source.add_user(), destination.add_user()
        client = source.connect(source_user)
        rng = random.Random(13)
        share = args.messages // len(FOLDERS)
        for folder in FOLDERS:
            seed(client, folder, [generated_message(rng, i, 3000, folder=folder) for i in range(share)])
        client.logout()
        work = lab / "work"
        work.mkdir()
        config = work / "mailmirror.yaml"
        config.write_text(
            f"state: {{path: {work / 'state.db'}}}\naccounts:\n"
            + account("src", source, source_user, work, 60)
            + account("dst", destination, destination_user, work, args.timeout)
            + "pairs:\n  trial:\n    source: src\n    destination: dst\n",
            encoding="utf-8",
        )
        env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon")}
        command = [sys.executable, "-m", "mailmirror", "-c", str(config)]
        first = subprocess.Popen([*command, "sync"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        while on_destination(destination, destination_user) < 300:
            time.sleep(0.1)
        stopped = imap_processes(destination)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(args.stall)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        first.communicate(timeout=900)
        time.sleep(5)
        print(
            f"pass 1: exit {first.returncode}; {share * len(FOLDERS)} on the source, "
            f"{on_destination(destination, destination_user)} on the destination 5 s later"
        )
        second = subprocess.run([*command, "sync"], capture_output=True, text=True, env=env, check=False)
        removed = [line.strip() for line in second.stdout.splitlines() if "Removed" in line]
        print(f"pass 2: exit {second.returncode}; {removed[0] if removed else 'removed nothing'}")
        verify = subprocess.run([*command, "verify"], capture_output=True, text=True, env=env, check=False)
        print(f"verify: exit {verify.returncode}; {verify.stdout.strip().splitlines()[-1]}")
    finally:
        source.stop()
        destination.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
