"""Push latency of `mailmirror run`: source APPEND → message visible on the destination.

Starts two lab Dovecot servers, a daemon with `schedule: {idle: [INBOX], every: 1h}` (so only IDLE can
deliver in time), appends N messages to the source INBOX at a steady rate, and watches the destination
INBOX (polling UID SEARCH every 20 ms) to note when each message appears. Prints p50/p95/p99/max.

    .venv/bin/python bench/push_latency.py --messages 200 --rate 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from mailmirror.lab.dovecot import DovecotServer, LabCA  # noqa: E402


def message(index: int) -> bytes:
    return (
        f"From: bench@example.org\r\nTo: alice@example.org\r\nSubject: push {index}\r\n"
        f"Message-ID: <push-{index}@bench.example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
        f"body {index}\r\n"
    ).encode()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="messages per second")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mailmirror-push-"))
    root.chmod(0o755)
    ca = LabCA(root / "ca")
    with DovecotServer(root / "src", "src", ca=ca) as source, DovecotServer(root / "dst", "dst", ca=ca) as dest:
        src_user, dst_user = source.add_user(), dest.add_user()
        (root / "src.pw").write_text(src_user.password)
        (root / "dst.pw").write_text(dst_user.password)
        config = root / "mailmirror.yaml"
        config.write_text(
            f"state: {{path: {root}/state.db}}\nlog: {{level: warning}}\naccounts:\n"
            f"  src: {{host: 127.0.0.1, port: {source.port}, tls: starttls, tls_ca: {ca.cert_path}, "
            f"username: {src_user.username}, password: {{file: {root}/src.pw}}}}\n"
            f"  dst: {{host: 127.0.0.1, port: {dest.port}, tls: starttls, tls_ca: {ca.cert_path}, "
            f"username: {dst_user.username}, password: {{file: {root}/dst.pw}}}}\n"
            "pairs:\n  bench: {source: src, destination: dst, schedule: {idle: [INBOX], every: 1h}}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
        log = (root / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mailmirror", "-v", "-c", str(config), "run"], stderr=log, stdout=log, env=env
        )
        try:
            deadline = time.monotonic() + 30
            while "watching INBOX with IDLE" not in (root / "daemon.log").read_text():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"daemon did not start:\n{(root / 'daemon.log').read_text()}")
                time.sleep(0.1)
            sent: dict[int, float] = {}
            seen: dict[int, float] = {}
            done = threading.Event()

            def watch() -> None:
                with dest.connect(dst_user) as client:
                    client.select_folder("INBOX", readonly=True)
                    known: set[int] = set()
                    while not done.is_set():
                        client.noop()
                        new = [uid for uid in client.search(["ALL"]) if uid not in known]
                        if new:
                            now = time.monotonic()
                            for uid, data in client.fetch(new, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).items():
                                subject = next(v for k, v in data.items() if k.startswith(b"BODY"))
                                seen[int(subject.split()[-1])] = now
                                known.add(uid)
                        time.sleep(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            with source.connect(src_user) as client:
                for index in range(args.messages):
                    client.append("INBOX", message(index))
                    sent[index] = time.monotonic()
                    time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - sent[index])))
            deadline = time.monotonic() + 30
            while len(seen) < args.messages and time.monotonic() < deadline:
                time.sleep(0.1)
            done.set()
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
            log.close()
    latencies = [seen[i] - sent[i] for i in sent if i in seen]
    missing = args.messages - len(latencies)
    print(f"messages {args.messages} at {args.rate:g}/s, arrived {len(latencies)}, missing {missing}")
    print(
        f"p50 {percentile(latencies, 0.50):.3f} s  p95 {percentile(latencies, 0.95):.3f} s  "
        f"p99 {percentile(latencies, 0.99):.3f} s  max {max(latencies):.3f} s  mean {statistics.mean(latencies):.3f} s"
    )
    return 0 if not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
