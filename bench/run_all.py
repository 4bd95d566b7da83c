"""``make bench``: every benchmark in one go, then one table of the headline ratios and
latencies each recorded (``_common.summary``), with the machine, commit and wall time.

Each script runs in its own process, in sequence (they share the 2 cores and the local Kafka
and Redis; none must overlap another), with its output shown as it runs and kept in
``--out`` (one log per script plus ``summary.jsonl`` and ``summary.md``). A script that fails
is reported in the table and the others still run; the exit status is 1 if any failed.

Usage: python bench/run_all.py [--out reports/bench] [--quick] [--only limits,cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, SUMMARY_ENV, git_commit, machine

# (script, extra arguments of a full run); the order puts the cheap in-process ones first.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("limits.py", []),
    ("batching.py", []),
    ("cache.py", []),
    ("compression.py", []),
    ("training_agent.py", []),
    ("memory.py", []),
    (
        "throughput.py",
        ["--load", "0.25,0.5,0.75", "--latency-seconds", "20", "--passthrough-runs", "3"],
    ),
    ("scaleout.py", []),
    ("encoder.py", []),
    ("search.py", []),
]
QUICK_OK = {"limits.py", "cache.py", "compression.py", "memory.py", "scaleout.py"}


def run(script: str, args: list[str], out: Path, summary: Path) -> tuple[int, float]:
    env = dict(os.environ, **{SUMMARY_ENV: str(summary)})
    t0 = time.perf_counter()
    with open(out / (Path(script).stem + ".log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / script), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log.write(line)
        code = proc.wait()
    return code, time.perf_counter() - t0


def table(rows: list[dict[str, object]], walls: dict[str, tuple[int, float]]) -> list[str]:
    lines = ["| bench | metric | value | goal |", "|---|---|---:|---|"]
    for r in rows:
        value = float(r["value"])  # type: ignore[arg-type]
        text = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        lines.append(f"| {r['bench']} | {r['metric']} | {text} {r['unit']} | {r['goal']} |")
    lines += ["", "| script | exit | wall s |", "|---|---:|---:|"]
    for script, (code, wall) in walls.items():
        lines.append(f"| {script} | {code} | {wall:.0f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    p.add_argument("--quick", action="store_true", help="smoke run (scripts that have --quick)")
    p.add_argument("--only", default="", help="comma-separated script stems")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "summary.jsonl"
    summary.unlink(missing_ok=True)
    only = {s for s in args.only.split(",") if s}
    walls: dict[str, tuple[int, float]] = {}
    started = time.perf_counter()
    for script, extra in SCRIPTS:
        if only and Path(script).stem not in only:
            continue
        if not (ROOT / "bench" / script).exists():
            continue
        if args.quick and script not in QUICK_OK:
            continue
        print(f"\n===== bench/{script} =====", flush=True)
        walls[script] = run(script, [*extra, *(["--quick"] if args.quick else [])], args.out,
                            summary)  # fmt: skip
    total = time.perf_counter() - started
    rows = [json.loads(x) for x in summary.read_text().splitlines()] if summary.exists() else []
    head = [
        f"machine: {machine()}",
        f"commit: {git_commit()}",
        f"command: python bench/run_all.py{' --quick' if args.quick else ''}"
        f"{' --only ' + args.only if args.only else ''}",
        f"total wall time: {total:.0f} s ({total / 60:.1f} min)",
        "",
    ]
    text = "\n".join(head + table(rows, walls))
    (args.out / "summary.md").write_text(text + "\n")
    print("\n===== summary =====\n" + text)
    return 1 if any(code for code, _ in walls.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
