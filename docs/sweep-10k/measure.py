"""The README's 10,000-variant sweep: four shards one after another on this machine, then a merge.

    python docs/sweep-10k/measure.py [--out sweep-10k] [--shards 4] [--workers 2] [-- PYTEST ARGS]

Each shard is ``attnforge sweep --specs docs/sweep-10k --shard I/N -n WORKERS``; while it runs, the
resident memory of its whole process tree (the sweep, pytest's controller and its xdist workers)
is sampled twice a second from /proc. Writes ``measure.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _tree_rss_kib(root: int) -> tuple[int, int]:
    """(total, largest) resident KiB over ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry), int(fields["PPid"])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total = largest = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        largest = max(largest, rss.get(pid, 0))
        stack += children.get(pid, [])
    return total, largest


def run_measured(cmd: list[str]) -> dict[str, float | int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_total = peak_one = 0
    while proc.poll() is None:
        total, one = _tree_rss_kib(proc.pid)
        peak_total, peak_one = max(peak_total, total), max(peak_one, one)
        time.sleep(0.5)
    return {
        "exit": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "peak_tree_mib": peak_total / 1024,
        "peak_process_mib": peak_one / 1024,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("sweep-10k"))
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--workers", default="2")
    p.add_argument("pytest_args", nargs="*", help="after --: passed to every shard's pytest")
    args = p.parse_args()
    results = []
    for i in range(1, args.shards + 1):
        cmd = [
            sys.executable, "-m", "attnforge", "sweep", "--specs", str(HERE),
            "--shard", f"{i}/{args.shards}", "--out", str(args.out / f"shard-{i}"),
            "-n", args.workers, "--progress", "120",
        ]
        if args.pytest_args:
            cmd += ["--", *args.pytest_args]
        print("$", " ".join(cmd), flush=True)
        results.append({"shard": f"{i}/{args.shards}", **run_measured(cmd)})
        print(json.dumps(results[-1]), flush=True)
    merge = [sys.executable, "-m", "attnforge", "sweep", "merge", *(str(args.out / f"shard-{i}") for i in range(1, args.shards + 1)), "--out", str(args.out / "merged")]
    print("$", " ".join(merge), flush=True)
    merged = run_measured(merge)
    (args.out / "measure.json").write_text(json.dumps({"shards": results, "merge": merged}, indent=2) + "\n")
    print("| shard | wall | peak memory (process tree) | largest process | exit |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['shard']} | {r['wall_s'] / 60:.1f} min | {r['peak_tree_mib']:.0f} MiB | {r['peak_process_mib']:.0f} MiB | {r['exit']} |")
    print(f"| merge | {merged['wall_s']:.1f} s | {merged['peak_tree_mib']:.0f} MiB | | {merged['exit']} |")
    return int(any(r["exit"] not in (0, 1) for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
