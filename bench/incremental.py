"""Re-running an unchanged spec whose environments are all recorded: zero installs, zero cases, under 5 s.

By default it writes a 20-environment spec of tiny real uv environments with a toy corpus, runs it once
(untimed) and then times the re-run through the CLI, as a nightly job would. `--spec S --db URL` times the
re-run of a spec already recorded there instead (e.g. seed-chain after its real run).
Run: uv run python bench/incremental.py [--spec S --db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
TOY = ROOT / "tests" / "fixtures" / "corpus" / "slow.py"
SPEC = f"""\
name = "incremental-bench"
models = ["a", "b", "c"]
routes = ["onnxruntime"]
corpus = "{TOY}"
exclude-newer = "2025-01-01"

[axes]
python = ["3.11"]
six = ["==1.15.0", "==1.16.0", "==1.17.0", "==1.14.0"]
packaging = ["==24.2", "==24.1", "==23.2", "==23.1", "==22.0"]
"""


def _run(spec: str, db: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", spec, "--db", db], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - started, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec")
    parser.add_argument("--db")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kg-incremental-") as tmp:
        env = dict(os.environ)
        if args.spec:
            spec, db = args.spec, args.db
        else:
            spec, db = str(Path(tmp) / "spec.toml"), f"sqlite:///{tmp}/kg.db"
            Path(spec).write_text(SPEC)
            env.update(KNOWNGOOD_ENV_ROOT=f"{tmp}/envs", KNOWNGOOD_WORK_ROOT=f"{tmp}/work")
            first, summary = _run(spec, db, env)
            print(f"first run: {first:.1f} s, {summary['installs']} installs, {sum(summary['cases'].values())} cases")
        seconds, summary = _run(spec, db, env)
    environments = sum(summary["environments"].values())
    print(f"re-run of {spec}: {environments} environments, {summary['skipped_recorded']} cases already recorded")
    print(f"  installs: {summary['installs']}  cases run: {sum(summary['cases'].values())}  wall: {seconds:.2f} s")
    ok = summary["installs"] == 0 and not summary["cases"] and seconds < 5 and environments >= 20
    print(f"target (>= 20 environments, 0 installs, 0 cases, < 5 s): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
