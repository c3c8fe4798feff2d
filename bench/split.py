"""Joint vs split chains on the same plan: installs, exports, conversions, distinct graphs, wall time, disk peak.

Both modes run the same spec for real (fresh databases, fresh environment and artifact folders), in one
invocation, one after the other. First, untimed, every joint environment of the plan is resolved and installed once
into a throwaway folder, so that uv's cache holds every wheel either mode needs and neither pays for downloads the
other does not (`--no-warm` skips this where the cache is known to be warm). Counts come from the databases; the
disk peak is the largest size the environment root plus artifact root reached while each mode ran (every 2 s). From
the measured per-step costs, both modes are then extrapolated to the full grid of a spec (default: history.toml,
every torch minor × every TF minor) using the plan's install counts and the measured dedup ratio.

Run: uv run python bench/split.py [--spec bench/split-plan.toml] [--grid matrix/specs/history.toml] [--plan-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).parents[1]))
from matrix import expand, spec, versions
from runner import environments, uv
from store.db import make_engine, make_sessionmaker
from store.models import Artifact, Case, Step

ROOT = Path(__file__).parents[1]
PLAN_SPEC = ROOT / "bench" / "split-plan.toml"
GRID_SPEC = ROOT / "matrix" / "specs" / "history.toml"
CONVERT_STEPS = ("runtime", "convert")  # one per conversion: ONNX Runtime's session, or the converter's run


@dataclass
class Measured:
    mode: str
    installs: int
    exports: int
    conversions: int
    graphs: int
    wall: float
    disk_peak: int
    install_seconds: float  # mean per installed environment (resolution and install, from the run's own figures)
    export_seconds: float  # mean per export (export + check + reference [+ save])
    convert_seconds: float  # mean per conversion (runtime, convert, tf_run, load, parity)


def _du(paths: list[Path]) -> int:
    total = 0
    for root in paths:
        for folder, _, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                total += st.st_blocks * 512
    return total


class DiskPeak(threading.Thread):
    """Poll the size of the folders a run fills; hard links into uv's cache count as the blocks they share."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.paths, self.peak, self.stop = paths, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(2.0):
            self.peak = max(self.peak, _du(self.paths))


def measure(mode: str, spec_path: Path, work: Path) -> Measured:
    text = spec_path.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("mode ")) + "\n"
    run_spec = work / f"{mode}.toml"
    run_spec.write_text(text.replace("[axes]", f'mode = "{mode}"\n\n[axes]', 1))
    db = f"sqlite:///{work / f'{mode}.db'}"
    env_root, artifacts = work / f"{mode}-envs", work / f"{mode}-artifacts"
    env = {**os.environ, "KNOWNGOOD_ENV_ROOT": str(env_root), "KNOWNGOOD_ARTIFACT_ROOT": str(artifacts),
           "KNOWNGOOD_WORK_ROOT": str(work / f"{mode}-work")}
    disk = DiskPeak([env_root, artifacts])
    disk.start()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(run_spec), "--db", db],
                          env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    disk.stop.set()
    disk.join()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        exports = s.scalar(select(func.count()).select_from(Step).where(Step.name == "export")) or 0
        conversions = s.scalar(select(func.count()).select_from(Step).where(Step.name.in_(CONVERT_STEPS))) or 0
        graphs = s.scalar(select(func.count()).select_from(Artifact)) or 0
        export_s = [x or 0 for x in s.scalars(
            select(func.sum(Step.seconds)).where(Step.name.in_(("export", "check", "reference", "save")))
            .group_by(Step.case_id))]
        convert_s = [x or 0 for x in s.scalars(
            select(func.sum(Step.seconds)).join(Case, Case.id == Step.case_id)
            .where(Case.route != "export", Step.name.in_((*CONVERT_STEPS, "load", "parity")))
            .group_by(Step.case_id))]
    engine.dispose()
    other = wall - sum(export_s) - sum(convert_s)
    return Measured(mode, summary["installs"], exports, conversions, graphs, wall, disk.peak,
                    max(other, 0) / max(summary["installs"], 1),
                    statistics.fmean(export_s) if export_s else 0.0,
                    statistics.fmean(convert_s) if convert_s else 0.0)


def warm(spec_path: Path) -> None:
    """Install every joint environment of the plan once, untimed, so both modes start from the same warm cache."""
    plan = _plan(spec_path)
    with tempfile.TemporaryDirectory(prefix="knowngood-bench-warm-") as tmp:
        for env, _ in plan.items:
            resolved = environments.resolve(env)
            if resolved.lock is not None:
                venv, _ = environments.install(Path(tmp), resolved)
                environments.remove(venv)  # the wheels stay in uv's cache; the links go


def _plan(path: Path) -> expand.Plan:
    loaded = spec.load(path)
    return expand.plan(loaded, index=uv.index_settings(), selectors=versions.resolve_selectors(loaded))


def grid_counts(grid: Path) -> tuple[expand.Plan, expand.SplitPlan]:
    plan = _plan(grid)
    return plan, expand.split(plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=PLAN_SPEC, help="the plan measured in both modes")
    parser.add_argument("--grid", type=Path, default=GRID_SPEC, help="the full grid to extrapolate to")
    parser.add_argument("--plan-only", action="store_true", help="print the full grid's counts; run nothing")
    parser.add_argument("--no-warm", action="store_true", help="skip the untimed install that warms uv's cache")
    args = parser.parse_args()
    console = Console()

    plan, split = grid_counts(args.grid)
    joint_cases = sum(len(c) for _, c in plan.items)
    exports = sum(len(c) for _, c in split.exports)
    table = Table(title=f"full grid ({args.grid.name}): counted from the plan")
    for col in ("", "joint", "split", "ratio"):
        table.add_column(col, justify="right")
    table.add_row("installs", str(len(plan.items)), str(split.installs), f"{len(plan.items) / split.installs:.1f}×")
    table.add_row("exports", str(joint_cases), str(exports), f"{joint_cases / max(exports, 1):.1f}×")
    console.print(table)
    if args.plan_only:
        return

    if not args.no_warm:
        warm(args.spec)
    with tempfile.TemporaryDirectory(prefix="knowngood-bench-split-") as tmp:
        work = Path(tmp)
        results = [measure(mode, args.spec, work) for mode in ("joint", "split")]
        for mode in ("joint", "split"):
            shutil.rmtree(work / f"{mode}-envs", ignore_errors=True)
    joint, split_m = results
    table = Table(title=f"measured: {args.spec.name}, both modes in this run")
    for col in ("", "joint", "split", "joint / split"):
        table.add_column(col, justify="right")

    def row(name: str, a: float, b: float, fmt: str = "{:.0f}") -> None:
        table.add_row(name, fmt.format(a), fmt.format(b), f"{a / b:.2f}×" if b else "–")

    row("installs", joint.installs, split_m.installs)
    row("exports", joint.exports, split_m.exports)
    row("conversions", joint.conversions, split_m.conversions)
    row("distinct graphs", joint.graphs or joint.exports, split_m.graphs)
    row("wall time (s)", joint.wall, split_m.wall, "{:.0f}")
    row("disk peak (GB)", joint.disk_peak / 1e9, split_m.disk_peak / 1e9, "{:.2f}")
    console.print(table)
    dedup = split_m.exports / max(split_m.graphs, 1)
    console.print(f"dedup: {split_m.exports} exports → {split_m.graphs} distinct graphs "
                  f"({dedup:.2f} exports per graph)")

    # Extrapolation: joint converts every case in every environment; split converts each distinct graph once
    # per runtime environment, with the dedup ratio measured above.
    # Every runtime environment meets the graphs of all its export partners: exports / dedup distinct graphs
    # per route (an upper bound where the grid spans several Pythons, whose graphs never meet).
    runtime_routes = sum(len(r) for _, r in split.runtimes)
    joint_s = len(plan.items) * joint.install_seconds + joint_cases * (joint.export_seconds + joint.convert_seconds)
    export_cases_per_route = exports / max(1, len({r for _, rs in split.runtimes for r in rs}))
    split_conversions = runtime_routes * export_cases_per_route / dedup
    split_s = (split.installs * split_m.install_seconds + exports * split_m.export_seconds
               + split_conversions * split_m.convert_seconds)
    table = Table(title="full grid, extrapolated from the measured per-step costs")
    for col in ("", "joint", "split", "joint / split"):
        table.add_column(col, justify="right")
    table.add_row("conversions", str(joint_cases), f"{split_conversions:.0f}",
                  f"{joint_cases / max(split_conversions, 1):.1f}×")
    table.add_row("hours", f"{joint_s / 3600:.1f}", f"{split_s / 3600:.1f}", f"{joint_s / max(split_s, 1):.1f}×")
    console.print(table)


if __name__ == "__main__":
    main()
