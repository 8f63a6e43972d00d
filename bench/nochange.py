"""No-change pass cost at growing mailbox sizes (the incremental engine's promise: flat).

For each size: two lab Dovecot servers, N small messages over F folders on the source (MULTIAPPEND, not
timed), one first pass (timed), then a pass with nothing changed (timed, IMAP commands counted in
process). Prints a Markdown table.

    .venv/bin/python bench/nochange.py --sizes 1000,10000,100000 --folders 20
"""

from __future__ import annotations

import argparse
import imaplib
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from mailmirror.config.config_file import load_config  # noqa: E402
from mailmirror.engine.sync import PairPass, PairReport  # noqa: E402
from mailmirror.lab.dovecot import DovecotServer, LabCA  # noqa: E402
from mailmirror.state.store import StateStore  # noqa: E402


def message(index: int) -> bytes:
    return (
        f"From: s{index % 97}@example.org\r\nTo: alice@example.org\r\nSubject: message {index}\r\n"
        f"Message-ID: <m{index}@bench.example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
        + "x" * (500 + index % 1500)
        + "\r\n"
    ).encode()


def one_pass(config_path: Path, counts: Counter[str] | None = None) -> tuple[float, PairReport]:
    config = load_config(config_path)
    store = StateStore(config.state.path)
    original = imaplib.IMAP4._command

    def counted(self: imaplib.IMAP4, name: str, *args: Any) -> Any:
        if counts is not None:
            counts[f"UID {args[0]}" if name == "UID" and args else name] += 1
        return original(self, name, *args)

    imaplib.IMAP4._command = counted  # type: ignore[method-assign,assignment]
    try:
        started = time.perf_counter()
        report = PairPass("bench", config.effective_pairs()["bench"], config, store).run()
        return time.perf_counter() - started, report
    finally:
        imaplib.IMAP4._command = original  # type: ignore[method-assign]
        store.close()


def measure(size: int, folders: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mailmirror-nochange-"))
    root.chmod(0o755)
    ca = LabCA(root / "ca")
    with DovecotServer(root / "src", "src", ca=ca) as source, DovecotServer(root / "dst", "dst", ca=ca) as dest:
        src_user, dst_user = source.add_user(), dest.add_user()
        seeding = time.perf_counter()
        with source.connect(src_user) as client:
            per_folder = size // folders
            for f in range(folders):
                name = "INBOX" if f == 0 else f"Folder {f:02d}"
                if f:
                    client.create_folder(name)
                for start in range(0, per_folder, 500):
                    batch = range(f * per_folder + start, f * per_folder + min(per_folder, start + 500))
                    when = datetime(2024, 1, 1, tzinfo=UTC)
                    typ, data = client.multiappend(name, [{"msg": message(i), "date": when} for i in batch])
                    assert typ == "OK", data
        seeding = time.perf_counter() - seeding
        (root / "s.pw").write_text(src_user.password)
        (root / "d.pw").write_text(dst_user.password)
        config = root / "c.yaml"
        config.write_text(
            f"state: {{path: {root}/state.db}}\naccounts:\n"
            f"  s: {{host: 127.0.0.1, port: {source.port}, tls: starttls, tls_ca: {ca.cert_path}, "
            f"username: {src_user.username}, password: {{file: {root}/s.pw}}}}\n"
            f"  d: {{host: 127.0.0.1, port: {dest.port}, tls: starttls, tls_ca: {ca.cert_path}, "
            f"username: {dst_user.username}, password: {{file: {root}/d.pw}}}}\n"
            "pairs:\n  bench: {source: s, destination: d}\n"
        )
        first, report = one_pass(config)
        assert report.error is None and report.copied == per_folder * folders, report.error
        counts: Counter[str] = Counter()
        nochange, again = one_pass(config, counts)
        assert again.copied == 0 and all(f.unchanged for f in again.folders)
    return {
        "messages": per_folder * folders,
        "seed_s": seeding,
        "first_s": first,
        "first_msgs_per_s": report.copied / first,
        "nochange_s": nochange,
        "commands": sum(counts.values()),
        "command_kinds": dict(counts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--folders", type=int, default=20)
    args = parser.parse_args()
    print("| messages | first pass | msg/s | no-change pass | IMAP commands (no-change) |")
    print("|---:|---:|---:|---:|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(size, args.folders)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["command_kinds"].items()))
        print(
            f"| {row['messages']:,} | {row['first_s']:.1f} s | {row['first_msgs_per_s']:.0f} | "
            f"{row['nochange_s']:.3f} s | {row['commands']} ({kinds}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
