"""Peak memory of a first copy with very large messages: `mailmirror sync` (a process of its own, peak RSS
by GNU time) on a source holding `--big` messages of `--size` MiB among `--small` ordinary ones.

    .venv/bin/python bench/bigmessages.py --big 4 --size 25 --small 300 [--transfer '{workers: 3}']

Prints wall time, peak RSS, CPU and whether `mailmirror verify` finds the copy identical. The
memory bound this checks is in docs/architecture.md (Transfer: peak memory).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from harness import Deadline, Lab, folder_names, run_measured, seed_source
from peers import Mailmirror

from mailmirror.lab.corpus import generated_message


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", type=int, default=4, help="messages of --size MiB (default 4)")
    parser.add_argument("--size", type=float, default=25, help="MiB per big message (default 25)")
    parser.add_argument("--small", type=int, default=300, help="default-mix messages besides (default 300)")
    parser.add_argument("--transfer", help="the pair's transfer settings, e.g. '{workers: 3}'")
    args = parser.parse_args()
    with Lab("none") as lab:
        source = lab.add_user(lab.source, "src")
        folders = folder_names(4)
        seed_source(
            source, count=args.small, folders=folders, mix="default", workers=2, deadline=Deadline(3600), log=print
        )
        client = source.connect()
        rng = random.Random("bench/bigmessages")
        for index in range(args.big):
            message = generated_message(rng, 900_000 + index, int(args.size * 1024 * 1024), folder=folders[index % 2])
            client.append(folders[index % 2], message.raw, message.flags, message.internaldate or datetime.now(UTC))
        client.logout()
        destination = lab.add_user(lab.destination, "dst")
        state = lab.root / "state"
        state.mkdir()
        peer = Mailmirror(Path(sys.executable).parent / "mailmirror", transfer=args.transfer)
        argv = peer.command(source, destination, state)
        measured = run_measured(argv, log_path=state / "sync.log", timeout=1800)
        verify = subprocess.run(
            peer.verify_command(source, destination, state), capture_output=True, text=True, check=False
        )
        print(
            f"{args.big} × {args.size:g} MiB + {args.small} messages, transfer {args.transfer or 'defaults'}: "
            f"exit {measured.returncode}, wall {measured.wall:.2f} s, peak RSS {measured.max_rss_kib / 1024:.0f} MiB "
            f"({measured.rss_method}), CPU {measured.user + measured.sys:.2f} s; verify exit {verify.returncode}"
        )
        if measured.returncode != 0:
            print(measured.log_tail())
        return 0 if measured.returncode == 0 and verify.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
