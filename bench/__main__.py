"""`python -m bench` (from the repository root): the benchmark of issue 5; `make bench` runs it.

    python -m bench                 # the full run (about 15 minutes on 2 cores)
    python -m bench --quick         # a smoke run (1-2 minutes): every scenario, small numbers
    python -m bench --profile       # py-spy on the coordinator during a c=16 run -> results/profile.md
    python -m bench --observability # tripmesh with metrics + tracing on vs off, round by round
    python -m bench --replicas      # 1 vs 3 coordinator replicas on PostgreSQL -> results/replicas-latest.md
    python -m bench --tls           # the same with mutual TLS between every process (kit.tls)

Writes bench/results/latest.{md,png,json} and a timestamped copy of each, and prints the table.
Every process it starts is stopped by PID on the way out, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import bench.mesh
from bench.mesh import REGISTRY, REPO
from bench.scenarios import (
    FULL,
    QUICK,
    Config,
    Point,
    Progress,
    ScaleRecovery,
    as_json,
    run_scale_recovery,
    run_throughput,
)

RESULTS = Path(__file__).resolve().parent / "results"


def _parse_trips(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        c, _, n = part.partition(":")
        out[int(c)] = int(n)
    return out


def build_config(args: argparse.Namespace) -> Config:
    config = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.trips:
        trips = _parse_trips(args.trips)
        changes["trips"] = trips
        changes["concurrencies"] = tuple(sorted(trips))
    if args.inflight is not None:
        levels = (*(x for x in config.inflight_levels if x < args.inflight), args.inflight)
        changes["inflight_levels"] = levels
    if args.recovery_limit is not None:
        changes["recovery_limit"] = args.recovery_limit
    if args.coordinators:
        changes["kinds"] = tuple(args.coordinators.split(","))
    if args.observability:
        changes["kinds"] = ("tripmesh", "observed")
    return dataclasses.replace(config, **changes)


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "coordinator", "services"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{head}{' + uncommitted changes in coordinator/ or services/' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _switch_tls_on(directory: Path) -> None:
    """Certificates for this run; every mesh it starts, and its own load and probes, use them."""
    from services.kit.certs import issue
    from services.kit.tls import TLS_DIR_VARIABLE

    issue(directory)
    bench.mesh.TLS_DIR = directory
    os.environ[TLS_DIR_VARIABLE] = str(directory)


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run with small numbers")
    parser.add_argument("--rounds", type=int, help="throughput rounds per coordinator (default 3; quick 1)")
    parser.add_argument("--trips", help="trips per concurrency point, e.g. '1:150,16:600,64:1200' (the default)")
    parser.add_argument("--inflight", type=int, help="trips left in flight for scale and recovery (default 10000)")
    parser.add_argument("--recovery-limit", type=float, help="seconds to wait for recovery to finish (default 300)")
    parser.add_argument("--coordinators", help="which of tripmesh,nolog,dbos to measure (default all three)")
    parser.add_argument(
        "--observability",
        action="store_true",
        help="throughput of tripmesh with metrics + tracing on (d) vs off (a), pairwise; skips scale and recovery",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true", help="skip scale and recovery")
    parser.add_argument("--profile", action="store_true", help="py-spy the coordinator during a c=16 run instead")
    parser.add_argument(
        "--replicas", action="store_true", help="1 vs 3 coordinator replicas on PostgreSQL (127.0.0.1:5432) instead"
    )
    parser.add_argument("--tls", action="store_true", help="mutual TLS between every process and for the load")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary var dirs and logs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    config = build_config(args)
    if args.observability:
        args.skip_recovery = True
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job inherits it ignored
        signal.signal(signum, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="tripmesh-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tls:
        _switch_tls_on(work / "certs")
    try:
        if args.profile:
            from bench.profile import run_profile

            run_profile(work, args.out, quick=args.quick)
            return 0
        if args.replicas:
            from bench.replicas import run_replicas

            run_replicas(work, args.out, quick=args.quick)
            return 0
        return run(args, config, work)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping every process it started", file=sys.stderr)
        return 130
    finally:
        REGISTRY.kill_all()
        if args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, config: Config, work: Path) -> int:
    from bench.report import Summary, chart, markdown

    started_at = datetime.now(UTC)
    started = time.monotonic()
    load_before = _load()
    total = (0 if args.skip_throughput else config.throughput_trips) + (0 if args.skip_recovery else config.scale_total)
    progress = Progress(total, disable=args.no_progress)
    messages: list[str] = []

    def log(text: str) -> None:
        messages.append(text)
        progress.bar.write(f"bench: {text}")

    points: list[Point] = []
    scale: ScaleRecovery | None = None
    try:
        if not args.skip_throughput:
            points = run_throughput(config, work, progress, log)
        if not args.skip_recovery:
            scale = run_scale_recovery(config, work, progress, log)
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    summary = Summary(points) if points else None
    others = sorted(p.other_cpu_cores for p in points)
    meta = {
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "machine": _machine(),
        "cores": os.cpu_count(),
        "commit": _git_commit(),
        "duration": f"{elapsed / 60:.1f} min",
        "load_before": load_before,
        "load_after": _load(),
        "others_cores": f"{others[len(others) // 2]:.2f}" if others else "n/a",
        "transport": "mutual TLS" if args.tls else "plaintext",
    }
    text = markdown(summary, scale, config, meta)
    if messages:
        text += "\n## Messages\n\n" + "\n".join(f"- {m}" for m in messages) + "\n"
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out
    for name in (f"{stamp}.md", "latest.md"):
        (out / name).write_text(text + "\n")
    data = {"meta": meta, "config": dataclasses.asdict(config), **as_json(points, scale), "messages": messages}
    for name in (f"{stamp}.json", "latest.json"):
        (out / name).write_text(json.dumps(data, indent=1, default=str) + "\n")
    chart(summary, scale, out / "latest.png", f"tripmesh benchmark {meta['started']} ({meta['commit']})")
    shutil.copyfile(out / "latest.png", out / f"{stamp}.png")
    print(text)
    print(f"\nbench: wrote {out / 'latest.md'}, latest.png, latest.json (and {stamp}.*) in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
