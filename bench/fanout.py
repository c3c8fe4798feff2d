"""Makespan of a fan-out, replayed on the recorded costs: modulo sharding against a work queue.

Each job is the work one run did for one environment: the seconds of every step of its cases, read from the
shipped snapshot (data/snapshot.json.gz). Jobs keep the order in which the runs met them (run start, then the
first case recorded), which is the plan order `--shard I/N` indexes. Replayed on N workers:
- modulo: job i goes to worker i mod N, as `knowngood run --shard I/N` does; the slowest shard ends the night;
- queue, FIFO: each worker claims the next job in plan order as soon as it is free;
- queue, LPT: the same, with the longest (previously recorded) job claimed first.
The lower bound is max(longest job, total / N). Resolution, install and interpreter start-up are not in step
seconds; `--overhead S` adds S per job for them. `--scale K` repeats the jobs K times (a K-fold matrix).
Run: uv run python bench/fanout.py [--snapshot PATH] [--workers 4,16,64,256] [--overhead S] [--scale K]
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
SNAPSHOT = ROOT / "data" / "snapshot.json.gz"
TARGET = 1.10  # the queue should end within 10% of the lower bound


def jobs(snapshot: dict[str, Any], overhead: float = 0.0) -> list[float]:
    """Seconds per (run, environment), in the order the runs met them."""
    started = {run["id"]: run["started_at"] for run in snapshot["runs"]}
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    first: dict[tuple[str, str], str] = {}
    for case in snapshot["cases"]:
        key = (case["run"], case["environment"]["hash"])
        seconds[key] += sum(step["seconds"] or 0.0 for step in case["steps"])
        first[key] = min(first.get(key, case["recorded_at"]), case["recorded_at"])
    order = sorted(seconds, key=lambda key: (started.get(key[0], ""), first[key]))
    return [seconds[key] + overhead for key in order]


def modulo(durations: Sequence[float], workers: int) -> float:
    shards = [0.0] * workers
    for i, seconds in enumerate(durations):
        shards[i % workers] += seconds
    return max(shards)


def queue(durations: Iterable[float], workers: int) -> float:
    """Greedy list scheduling: the next job goes to whichever worker is free first."""
    free = [0.0] * workers
    for seconds in durations:
        heapq.heapreplace(free, free[0] + seconds)
    return max(free)


def bound(durations: Sequence[float], workers: int) -> float:
    return max(max(durations), sum(durations) / workers)


def table(durations: Sequence[float], counts: Sequence[int]) -> list[dict[str, float]]:
    rows = []
    for n in counts:
        lower = bound(durations, n)
        rows.append({"workers": n, "bound": lower, "modulo": modulo(durations, n),
                     "fifo": queue(durations, n), "lpt": queue(sorted(durations, reverse=True), n)})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT)
    parser.add_argument("--workers", default="4,16,64,256", help="comma-separated worker counts")
    parser.add_argument("--overhead", type=float, default=0.0, help="seconds added per job (install, start-up)")
    parser.add_argument("--scale", type=int, default=1, help="repeat the recorded jobs this many times")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)

    with gzip.open(args.snapshot, "rt") as f:
        durations = jobs(json.load(f), args.overhead) * args.scale
    rows = table(durations, [int(n) for n in args.workers.split(",")])
    if args.json:
        print(json.dumps({"jobs": len(durations), "total": sum(durations), "rows": rows}))
        return
    print(f"{len(durations)} jobs (run × environment), {sum(durations) / 3600:.2f} h of steps, longest "
          f"{max(durations):.0f} s, overhead {args.overhead:g} s per job, scale ×{args.scale}\n")
    print("| workers | lower bound (s) | modulo (s) | ×bound | queue FIFO (s) | ×bound | queue LPT (s) | ×bound |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        b = r["bound"]
        print(f"| {r['workers']} | {b:.0f} | {r['modulo']:.0f} | {r['modulo'] / b:.2f} | {r['fifo']:.0f} | "
              f"{r['fifo'] / b:.2f} | {r['lpt']:.0f} | {r['lpt'] / b:.2f} |")
    within = all(r["lpt"] <= TARGET * r["bound"] for r in rows)
    print(f"\nqueue (LPT) within {TARGET - 1:.0%} of the bound at every worker count: {'yes' if within else 'NO'}")


if __name__ == "__main__":
    main()
