"""Start-up cost of the command line: process wall time of `--version`, `config validate` and a no-change
`sync`, each run N times, median wall time (and min/max) and median CPU time printed as a Markdown table.

    .venv/bin/python bench/startup.py --config config.example.yaml --sync-config /tmp/demo/mailmirror.yaml

The sync config is any config whose pairs are already in step (e.g. the one `mailmirror demo --workdir DIR
--keep` leaves running). `--code DIR` runs another checkout's package (its `daemon/` folder) with the same
interpreter, for a before/after comparison. Bytecode is cached under a temporary PYTHONPYCACHEPREFIX (and
PYTHONDONTWRITEBYTECODE dropped), so the runs measure imports, not compiling; one warm-up run each.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_runs(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of each run; CPU is steadier on a shared machine."""
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), children_cpu()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu() - cpu)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr.decode(errors='replace')}")
    return walls, cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.example.yaml", help="config for `config validate`")
    parser.add_argument("--sync-config", help="config whose pairs are in step, for a no-change `sync`")
    parser.add_argument("--code", type=Path, help="another checkout's root: run its daemon/ package instead")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailmirror-startup-") as pycache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pycache
        if args.code:
            env["PYTHONPATH"] = str(args.code.resolve() / "daemon")
        command = [sys.executable, "-m", "mailmirror"]
        cases = [("python -c pass (interpreter)", [sys.executable, "-c", "pass"])]
        cases.append(("mailmirror --version", [*command, "--version"]))
        cases.append(("mailmirror config validate", [*command, "-c", args.config, "config", "validate"]))
        if args.sync_config:
            cases.append(("mailmirror sync (no change)", [*command, "-c", args.sync_config, "sync"]))
        print(f"| command ({args.runs} runs) | wall median s | wall min s | wall max s | CPU median s |")
        print("|---|---:|---:|---:|---:|")
        for name, argv in cases:
            walls, cpus = timed_runs(argv, env, args.runs)
            print(
                f"| {name} | {statistics.median(walls):.3f} | {min(walls):.3f} | {max(walls):.3f} "
                f"| {statistics.median(cpus):.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
