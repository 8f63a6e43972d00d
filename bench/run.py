"""mailmirror benchmarks against real local Dovecot servers, side by side with its peers in the same run.

    .venv/bin/python bench/run.py --messages 20000 --folders 12 \\
        --scenarios first,nochange,incremental --tools mailmirror,mbsync,floor [--imapsync PATH] \\
        [--count mailmirror,mbsync] [--json results.json] [--markdown results.md]

One run: two private Dovecot servers (source, destination) in a temporary directory; the source is seeded
with a deterministic corpus (MULTIAPPEND, timed separately, not part of any result).  Every tool copies
into its own fresh destination account, scenario by scenario, all tools one after the other on the same
source state:

* ``first``: the initial copy into an empty account;
* ``nochange``: a pass right after (``--repeat`` times, the median is reported);
* ``incremental``: after 1% new messages (spread over the folders) and \\Flagged toggled on 2% of the
  source messages, one pass.

Per tool and scenario: wall time of the tool's process, messages/s and MiB/s (of what the scenario had to
copy), peak RSS and CPU time of the process (``wait4``), and a fidelity check (per folder: message count,
\\Seen, \\Flagged and \\Answered counts equal on both sides).  ``mailmirror verify`` runs once at the end,
untimed.  IMAP commands are counted for the tools in ``--count`` in separate, untimed *shadow* passes of
every scenario through a counting proxy (its own destination account), so timed passes never go
through a proxy.

The whole run is bounded: each tool pass by ``--timeout``, everything by ``--deadline`` (remaining
steps are skipped and reported as such).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from countproxy import CountingProxy
from harness import (
    MIB,
    SIZE_MIXES,
    BenchTimeout,
    Deadline,
    Endpoint,
    Lab,
    Measured,
    Mutation,
    Snapshot,
    differences,
    folder_names,
    mutate_source,
    run_measured,
    seed_source,
    size_delta,
    snapshot,
    totals,
    warm_source,
)
from peers import BENCH_DIR, REPO, Floor, Imapsync, Mailmirror, Mbsync, Peer

SCENARIOS = ("first", "nochange", "incremental")
TOOLS = ("mailmirror", "mbsync", "floor", "floor-seq", "imapsync")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ arguments


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark mailmirror against mbsync, imapsync and a raw-copy floor on local Dovecot servers.",
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages in the source account (default 1000)")
    parser.add_argument("--folders", type=int, default=12, help="source folders (default 12)")
    parser.add_argument(
        "--size-mix",
        choices=sorted(SIZE_MIXES),
        default="default",
        help="default: ~70%% 2-20 KiB, ~25%% 50-500 KiB, ~5%% 1-5 MiB; small: all 1-4 KiB",
    )
    parser.add_argument(
        "--scenarios",
        type=_csv,
        default=list(SCENARIOS),
        help="comma-separated, from first,nochange,incremental (first is always run)",
    )
    parser.add_argument(
        "--tools",
        type=_csv,
        default=["mailmirror", "mbsync", "floor"],
        help="comma-separated, from mailmirror,mbsync,floor,floor-seq (imapsync: give --imapsync); "
        "mailmirror@REF runs the code of git commit REF side by side with the working tree",
    )
    parser.add_argument(
        "--imapsync",
        metavar="PATH",
        default=os.environ.get("IMAPSYNC") or None,
        help="imapsync executable: adds imapsync to the tools (default: $IMAPSYNC, when set)",
    )
    parser.add_argument(
        "--mailmirror-transfer",
        metavar="YAML",
        help="the pair's transfer settings for mailmirror, e.g. '{workers: 2, prefetch: 1}' (default: built-in)",
    )
    parser.add_argument(
        "--count",
        type=_csv,
        default=["mailmirror"],
        help="tools whose IMAP commands are counted in untimed shadow passes (default mailmirror; 'none' for none)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="nochange passes per tool; the median is reported")
    parser.add_argument(
        "--tls",
        choices=("none", "starttls"),
        default="none",
        help="how the timed passes connect (default none: loopback, measures the engines)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one tool pass may take (default 1800)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=3600,
        help="seconds the whole benchmark may take; later steps are skipped (default 3600)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes generating the corpus")
    parser.add_argument("--json", type=Path, help="write all results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown tables here")
    parser.add_argument("--no-verify", action="store_true", help="skip the final `mailmirror verify`")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed read of the source after seeding (then the first tool pays for Dovecot's cache)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the lab directory (Maildirs, logs, configs)")
    parser.add_argument("--tmpdir", type=Path, help="where to make the lab directory (default: $TMPDIR or /tmp)")
    args = parser.parse_args(argv)
    if args.imapsync and "imapsync" not in args.tools:
        args.tools.append("imapsync")
    unknown = [t for t in args.tools if t not in TOOLS and not t.startswith("mailmirror@")]
    if unknown:
        parser.error(f"unknown tools: {', '.join(unknown)} (known: {', '.join(TOOLS)})")
    if "imapsync" in args.tools and not args.imapsync:
        parser.error("imapsync needs --imapsync PATH or IMAPSYNC=PATH (it is not packaged in Debian 12)")
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    args.scenarios = [s for s in SCENARIOS if s in args.scenarios or s == "first"]
    args.count = [] if args.count == ["none"] else [t for t in args.count if t in args.tools]
    if args.messages < 1 or args.repeat < 1:
        parser.error("--messages and --repeat must be at least 1")
    return args


# ------------------------------------------------------------------------------------------- results


@dataclass
class Result:
    tool: str
    scenario: str
    status: str = "ok"  # ok | failed | timeout | skipped
    wall: float | None = None
    walls: list[float] = field(default_factory=list)
    returncode: int | None = None
    max_rss_mib: float | None = None
    cpu_seconds: float | None = None
    messages: int = 0  # what the scenario had to copy
    bytes: int = 0
    flag_changes: int = 0
    fidelity_ok: bool | None = None  # message counts and flag counts equal per folder
    differences: list[str] = field(default_factory=list)
    size_delta: int | None = None  # destination bytes - source bytes (0: byte-identical sizes)
    size_delta_per_message: float | None = None
    commands: dict[str, Any] | None = None  # from the shadow pass: {"source": ..., "destination": ...}
    shadow_fidelity_ok: bool | None = None
    note: str = ""
    log: str = ""
    load1: float | None = None  # 1-minute load average just before the (first) timed pass

    @property
    def msgs_per_s(self) -> float | None:
        ok = self.status == "ok" and self.wall and self.messages
        return self.messages / self.wall if ok and self.wall else None

    @property
    def mib_per_s(self) -> float | None:
        ok = self.status == "ok" and self.wall and self.bytes
        return self.bytes / MIB / self.wall if ok and self.wall else None

    @property
    def total_commands(self) -> int | None:
        if not self.commands:
            return None
        return int(self.commands["source"]["total"]) + int(self.commands["destination"]["total"])

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(msgs_per_s=self.msgs_per_s, mib_per_s=self.mib_per_s, total_commands=self.total_commands)
        return data


@dataclass
class Slot:
    """One tool's destination account and state directory (a timed one, or a counted shadow)."""

    peer: Peer
    destination: Endpoint
    state_dir: Path
    broken: str = ""  # why later scenarios are skipped (a pass failed or timed out)


def _machine() -> dict[str, Any]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "os": out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "dovecot": out(["dovecot", "--version"]),
        "git_commit": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_describe": out(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "git_dirty_daemon": out(["git", "-C", str(REPO), "status", "--short", "--", "daemon"]).splitlines(),
    }


def _make_peer(name: str, args: argparse.Namespace, export_dir: Path) -> Peer:
    executable = Path(sys.executable).parent / "mailmirror"
    if name == "mailmirror":
        return Mailmirror(executable, transfer=args.mailmirror_transfer)
    if name.startswith("mailmirror@"):
        return Mailmirror(
            executable, ref=name.split("@", 1)[1], export_dir=export_dir, transfer=args.mailmirror_transfer
        )
    if name == "mbsync":
        return Mbsync()
    if name in ("floor", "floor-seq"):
        return Floor(sys.executable, pipelined=name == "floor")
    return Imapsync(args.imapsync)


# ------------------------------------------------------------------------------------------ benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = Deadline(args.deadline)
        self.results: list[Result] = []
        self.report: dict[str, Any] = {
            "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": _machine(),
            "load_start": [round(x, 2) for x in os.getloadavg()],
        }
        self.export_dir = Path(tempfile.mkdtemp(prefix="mailmirror-bench-code-"))
        self.pycache = self.export_dir / "pycache"
        try:
            self.peers = {name: _make_peer(name, args, self.export_dir) for name in args.tools}
        except BaseException:
            shutil.rmtree(self.export_dir, ignore_errors=True)
            raise
        self.report["versions"] = {name: peer.version() for name, peer in self.peers.items()}

    def env(self, peer: Peer | None = None) -> dict[str, str]:
        """Tool processes cache their bytecode in the lab (PYTHONPYCACHEPREFIX) even where the
        environment says PYTHONDONTWRITEBYTECODE: without it every start of mailmirror would compile
        its modules from source (nothing is written into the repository either way)."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        env["COLUMNS"] = "160"
        if peer is not None:
            env.update(peer.env())
        return env

    def timeout(self) -> float:
        return max(1.0, min(float(self.args.timeout), self.deadline.remaining))

    def run(self) -> dict[str, Any]:
        args = self.args
        with Lab(args.tls, keep=args.keep, base=args.tmpdir) as lab:
            log(
                f"lab in {lab.root}; source {lab.source.host}:{lab.source.port}, "
                f"destination {lab.destination.host}:{lab.destination.port}"
            )
            source = lab.add_user(lab.source, "source")
            folders = folder_names(args.folders)
            log(f"seeding {args.messages} messages ({args.size_mix} size mix) into {len(folders)} folders ...")
            seed = seed_source(
                source,
                count=args.messages,
                folders=folders,
                mix=args.size_mix,
                workers=args.workers,
                deadline=self.deadline,
                log=log,
            )
            self.report["seed"] = {
                "messages": seed.messages,
                "bytes": seed.bytes,
                "seconds": round(seed.seconds, 2),
                "append_commands": seed.append_commands,
                "messages_per_s": round(seed.messages / seed.seconds, 1),
                "mib_per_s": round(seed.bytes / MIB / seed.seconds, 1),
                "per_folder": seed.per_folder,
            }
            log(
                f"seeded {seed.messages} messages, {seed.bytes / MIB:.1f} MiB in {seed.seconds:.1f}s "
                f"({seed.append_commands} MULTIAPPENDs; not part of any result)"
            )
            if not args.no_warmup:
                warm = warm_source(source, folders)
                self.report["warmup_seconds"] = round(warm, 2)
                log(f"source read once (FLAGS, INTERNALDATE, RFC822.SIZE, identity headers) in {warm:.1f}s: untimed")
            src_snap = snapshot(source)
            self.report["startup"] = self.startup(lab, source)

            slots = {name: self.slot(lab, peer, "t") for name, peer in self.peers.items()}
            shadows = {name: self.slot(lab, self.peers[name], "c") for name in args.count}
            mutation: Mutation | None = None
            for scenario in args.scenarios:
                if scenario == "incremental":
                    total_messages, _ = totals(src_snap)
                    mutation = mutate_source(source, folders=folders, total_messages=total_messages, mix=args.size_mix)
                    self.report["mutation"] = asdict(mutation)
                    log(
                        f"source changed: {mutation.new_messages} new messages "
                        f"({mutation.new_bytes / MIB:.1f} MiB), \\Flagged toggled on {mutation.flag_changes}"
                    )
                    src_snap = snapshot(source)
                for name in args.tools:
                    result = self.timed(scenario, slots[name], source, src_snap, mutation)
                    if name in shadows:
                        self.shadow(result, shadows[name], source, src_snap)
                    self.results.append(result)
                    log(_one_line(result))
            self.report["source"] = {
                "folders": len(src_snap),
                "messages": totals(src_snap)[0],
                "bytes": totals(src_snap)[1],
            }
            if not args.no_verify:
                self.report["verify"] = {
                    name: self.verify(slot, source) for name, slot in slots.items() if isinstance(slot.peer, Mailmirror)
                }
        self.report["results"] = [r.as_dict() for r in self.results]
        self.report["load_end"] = [round(x, 2) for x in os.getloadavg()]
        self.report["deadline_left_s"] = round(self.deadline.remaining, 1)
        return self.report

    def slot(self, lab: Lab, peer: Peer, kind: str) -> Slot:
        destination = lab.add_user(lab.destination, f"{kind}-{peer.name}")
        state_dir = lab.root / f"state-{kind}-{peer.name}"
        state_dir.mkdir()
        return Slot(peer, destination, state_dir)

    def startup(self, lab: Lab, source: Endpoint) -> dict[str, float]:
        """Process start-up cost, for reading the small numbers (median of 3)."""
        found: dict[str, float] = {}
        probe_dir = lab.root / "startup"
        probe_dir.mkdir()
        commands: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"]}
        envs: dict[str, dict[str, str]] = {}
        for peer in self.peers.values():
            if isinstance(peer, Mailmirror):
                config = peer.write_config(source, source, probe_dir)
                label = f"{peer.name} config validate"
                commands[label] = [*peer.base_argv(), "-c", str(config), "config", "validate"]
                envs[label] = self.env(peer)
        commands["python -c 'import imapclient'"] = [sys.executable, "-c", "import imapclient"]
        commands["floor.py (no arguments: imports, usage, exit)"] = [sys.executable, str(BENCH_DIR / "floor.py")]
        for label, argv in commands.items():
            run_measured(argv, log_path=probe_dir / "log", timeout=60, env=envs.get(label, self.env()))  # warm-up
            walls = [
                run_measured(argv, log_path=probe_dir / "log", timeout=60, env=envs.get(label, self.env())).wall
                for _ in range(3)
            ]
            found[label] = round(statistics.median(walls), 3)
        return found

    def timed(
        self, scenario: str, slot: Slot, source: Endpoint, src_snap: Snapshot, mutation: Mutation | None
    ) -> Result:
        result = Result(slot.peer.name, scenario)
        if scenario == "first":
            result.messages, result.bytes = totals(src_snap)
        elif scenario == "incremental" and mutation is not None:
            result.messages, result.bytes = mutation.new_messages, mutation.new_bytes
            result.flag_changes = mutation.flag_changes
        if slot.broken:
            result.status, result.note = "skipped", slot.broken
            return result
        repeat = self.args.repeat if scenario == "nochange" else 1
        result.load1 = round(os.getloadavg()[0], 2)
        runs: list[Measured] = []
        for _ in range(repeat):
            if self.deadline.expired:
                break
            argv = slot.peer.command(source, slot.destination, slot.state_dir)
            os.sync()  # start every timed pass with no dirty pages left by the previous one
            measured = run_measured(
                argv, log_path=slot.state_dir / f"{scenario}.log", timeout=self.timeout(), env=self.env(slot.peer)
            )
            runs.append(measured)
            if measured.timed_out or measured.returncode != 0:
                break
        if not runs:
            result.status, result.note = "skipped", "deadline reached"
            slot.broken = "deadline reached"
            return result
        last = runs[-1]
        result.walls = [round(m.wall, 4) for m in runs]
        result.wall = statistics.median(m.wall for m in runs)
        result.returncode = last.returncode
        result.max_rss_mib = round(max(m.max_rss_kib for m in runs) / 1024, 1) or None  # 0: killed, unknown
        result.cpu_seconds = round(statistics.median(m.user + m.sys for m in runs), 3)
        result.log = str(last.log_path)
        if last.timed_out:
            result.status, result.note = "timeout", f"killed after {self.timeout():.0f}s"
            slot.broken = f"{scenario} pass timed out"
        elif last.returncode != 0:
            result.status, result.note = "failed", f"exit {last.returncode}: {last.log_tail(5)}"
            slot.broken = f"{scenario} pass failed"
        dst_snap = snapshot(slot.destination)
        result.differences = differences(src_snap, dst_snap)
        result.size_delta = size_delta(src_snap, dst_snap)
        result.size_delta_per_message = round(result.size_delta / max(totals(src_snap)[0], 1), 1)
        result.fidelity_ok = not result.differences and result.status == "ok"
        return result

    def shadow(self, result: Result, slot: Slot, source: Endpoint, src_snap: Snapshot) -> None:
        """The same scenario for the same tool, untimed, through counting proxies, into its own account."""
        if slot.broken or self.deadline.expired:
            result.note = (
                (result.note + "; " if result.note else "")
                + "commands not counted: "
                + (slot.broken or "deadline reached")
            )
            return
        with (
            CountingProxy(source.host, source.port) as src_proxy,
            CountingProxy(slot.destination.host, slot.destination.port) as dst_proxy,
        ):
            argv = slot.peer.command(source.via(src_proxy.port), slot.destination.via(dst_proxy.port), slot.state_dir)
            log_path = slot.state_dir / f"{result.scenario}.log"
            measured = run_measured(argv, log_path=log_path, timeout=self.timeout(), env=self.env(slot.peer))
        if measured.timed_out or measured.returncode != 0:
            slot.broken = f"counted {result.scenario} pass failed (exit {measured.returncode})"
        result.commands = {
            "source": src_proxy.counts.as_dict(),
            "destination": dst_proxy.counts.as_dict(),
            "wall_through_proxy": round(measured.wall, 3),
        }
        result.shadow_fidelity_ok = not differences(src_snap, snapshot(slot.destination)) and not slot.broken

    def verify(self, slot: Slot, source: Endpoint) -> dict[str, Any]:
        peer = slot.peer
        assert isinstance(peer, Mailmirror)
        if self.deadline.expired:
            return {"status": "skipped", "note": "deadline reached"}
        argv = peer.verify_command(source, slot.destination, slot.state_dir)
        log_path = slot.state_dir / "verify.log"
        measured = run_measured(argv, log_path=log_path, timeout=self.timeout(), env=self.env(peer))
        outcome = {
            "returncode": measured.returncode,
            "seconds": round(measured.wall, 2),
            "timed_out": measured.timed_out,
            "output_tail": measured.log_tail(6),
        }
        log(f"{peer.name} verify: exit {measured.returncode} in {measured.wall:.1f}s (untimed)\n{measured.log_tail(6)}")
        return outcome


# -------------------------------------------------------------------------------------------- report


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _one_line(r: Result) -> str:
    rate = f", {_f(r.msgs_per_s, 0)} msg/s, {_f(r.mib_per_s, 1)} MiB/s" if r.msgs_per_s else ""
    cmds = f", {r.total_commands} IMAP commands (counted pass)" if r.total_commands is not None else ""
    if r.fidelity_ok is None:
        fid = "fidelity not checked"
    else:
        fid = "fidelity OK" if r.fidelity_ok else f"fidelity FAILED {r.differences[:3]}"
    rss = f"RSS {_f(r.max_rss_mib, 0)} MiB"
    return f"  {r.scenario:<11} {r.tool:<10} {r.status:<7} {_f(r.wall, 3)}s{rate}, {rss}{cmds}; {fid}"


def _top_commands(counts: dict[str, Any], n: int = 5) -> str:
    items = list(counts["commands"].items())
    shown = ", ".join(f"{name} {count}" for name, count in items[:n])
    return shown + (", …" if len(items) > n else "")


def markdown(report: dict[str, Any]) -> str:
    results = [r for r in report["results"]]
    meta = report["machine"]
    seed = report.get("seed", {})
    src = report.get("source", {})
    lines = [
        f"Corpus: {src.get('messages', '?')} messages, {src.get('bytes', 0) / MIB:.1f} MiB in "
        f"{src.get('folders', '?')} folders ({report['args']['size_mix']} size mix); "
        f"seeded in {seed.get('seconds', '?')}s ({seed.get('mib_per_s', '?')} MiB/s, not part of any result). "
        f"{meta['nproc']} CPUs, {meta['ram_gib']} GiB RAM, Dovecot {meta['dovecot']}, "
        f"Python {meta['python']}, commit {meta['git_describe']}, {meta['date']}.",
        "",
        "load: the 1-minute load average before the pass (other work on the machine shows here). "
        "Fidelity: per folder, message count and \\\\Seen/\\\\Flagged/\\\\Answered counts equal on both sides; "
        "`bytes ±N B/msg`: the copies are not the same size as the originals (STATUS SIZE).",
        "",
        "| scenario | tool | wall s | messages | MiB | msg/s | MiB/s | peak RSS MiB | CPU s | fidelity | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        wall = _f(r["wall"], 3)
        if len(r["walls"]) > 1:
            wall += f" ({min(r['walls']):.3f}–{max(r['walls']):.3f})"
        if r["status"] != "ok":
            wall += f" **{r['status']}**"
        moved = f"{r['messages']}" + (f" + {r['flag_changes']} flags" if r["flag_changes"] else "")
        fidelity = "OK" if r["fidelity_ok"] else ("—" if r["fidelity_ok"] is None else "**FAIL**")
        if r["fidelity_ok"] and r["size_delta"]:
            fidelity += f", bytes {r['size_delta_per_message']:+.0f} B/msg"
        lines.append(
            f"| {r['scenario']} | {r['tool']} | {wall} | {moved} | {r['bytes'] / MIB:.1f} | "
            f"{_f(r['msgs_per_s'], 0)} | {_f(r['mib_per_s'], 1)} | {_f(r['max_rss_mib'], 0)} | "
            f"{_f(r['cpu_seconds'], 2)} | {fidelity} | {_f(r['load1'], 1)} |"
        )
    by = {(r["tool"], r["scenario"]): r for r in results}
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    tools = list(dict.fromkeys(r["tool"] for r in results))
    ours = [t for t in tools if t.startswith("mailmirror")]
    peers = [t for t in ("mbsync", "imapsync", "floor", "floor-seq") if t in tools]
    pairs = [(a, b) for a in ours for b in peers]
    pairs += [("mbsync", b) for b in ("floor", "floor-seq") if "mbsync" in tools and b in tools]
    if pairs:
        lines += [
            "",
            "Wall-time ratios (lower is faster for the first tool):",
            "",
            "| scenario | " + " | ".join(f"{a} ÷ {b}" for a, b in pairs) + " |",
            "|---|" + "---:|" * len(pairs),
        ]
        for scenario in scenarios:
            cells = []
            for a, b in pairs:
                ra, rb = by.get((a, scenario)), by.get((b, scenario))
                ok = ra and rb and ra["wall"] and rb["wall"] and ra["status"] == rb["status"] == "ok"
                cells.append(f"{ra['wall'] / rb['wall']:.2f}×" if ok and ra and rb else "—")
            lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    counted = [r for r in results if r["commands"]]
    if counted:
        lines += [
            "",
            "IMAP commands sent (untimed shadow passes through a counting proxy; source / destination):",
            "",
            "| scenario | tool | total | source | destination | MiB up / down | source commands "
            "| destination commands |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for r in counted:
            s, d = r["commands"]["source"], r["commands"]["destination"]
            up = (s["bytes_up"] + d["bytes_up"]) / MIB
            down = (s["bytes_down"] + d["bytes_down"]) / MIB
            lines.append(
                f"| {r['scenario']} | {r['tool']} | {r['total_commands']} | {s['total']} | {d['total']} | "
                f"{up:.1f} / {down:.1f} | {_top_commands(s)} | {_top_commands(d)} |"
            )
    notes = [r for r in results if r["note"] or r["differences"]]
    if notes:
        lines += [""]
        for r in notes:
            text = r["note"] or ""
            if r["differences"]:
                text += (" " if text else "") + "differences: " + "; ".join(r["differences"][:5])
            lines.append(f"- {r['tool']} {r['scenario']}: {text}")
    if "startup" in report:
        lines += [
            "",
            "Process start-up (median of 3): " + ", ".join(f"`{k}` {v:.3f}s" for k, v in report["startup"].items()),
        ]
    for name, v in report.get("verify", {}).items():
        lines += ["", f"`{name} verify` (untimed): exit {v.get('returncode')} in {v.get('seconds')}s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        bench = Bench(args)
    except FileNotFoundError as error:
        log(f"bench/run.py: {error}")
        return 69
    log(
        f"mailmirror bench: {args.messages} messages, {args.folders} folders, scenarios {','.join(args.scenarios)}, "
        f"tools {','.join(args.tools)}, counted {','.join(args.count) or 'none'}; deadline {args.deadline:.0f}s"
    )
    began = time.monotonic()
    try:
        report = bench.run()
    except BenchTimeout as error:
        log(f"bench/run.py: {error}")
        return 75
    finally:
        shutil.rmtree(bench.export_dir, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - began, 1)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"results written to {args.json}")
    if args.markdown:
        args.markdown.write_text(text)
    failed = [r for r in bench.results if r.status != "ok" or r.fidelity_ok is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
