"""Provisioning a torch + tensorflow + onnx2tf environment from a warm cache: ours vs venv + pip.

Ours is what the runner does (`uv venv` + `uv pip sync` of the compiled lock, hard-linked from uv's cache).
The alternative is `python -m venv` + `pip install --require-hashes -r lock` with pip's own cache warmed by
an untimed first install. Same lock, same interpreter, same run; rounds alternate. Target: >= 20x.
Run: uv run python bench/provision.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench._env import smoke_environment
from runner import uv
from store.locks import Lock


def _pip_env(cache: Path) -> dict[str, str]:
    # pip's machine-wide config (local wheel folders, caps) must not change what is installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_CACHE_DIR=str(cache), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def ours(target: Path, python: Path, lock: Lock) -> None:
    uv.venv(target, python)
    uv.sync(target, lock)


def pip(target: Path, python: Path, lock_file: Path, cache: Path) -> None:
    subprocess.run([str(python), "-m", "venv", str(target)], check=True)
    # uv ignores upper bounds of Requires-Python (the smoke lock has backports-strenum 1.3.1, "<3.11"); pip
    # refuses them, so it is told to install the same lock regardless.
    subprocess.run([str(target / "bin" / "pip"), "install", "--quiet", "--no-deps", "--require-hashes",
                    "--ignore-requires-python", "-r", str(lock_file)], check=True, env=_pip_env(cache))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _, resolved = smoke_environment()  # also warms uv's cache
    assert resolved.lock is not None and resolved.python_exe is not None
    with tempfile.TemporaryDirectory(prefix="kg-provision-") as tmp:
        work = Path(tmp)
        lock_file = work / "lock.txt"
        lock_file.write_text(resolved.lock.text)
        cache = work / "pip-cache"
        pip(work / "warm", resolved.python_exe, lock_file, cache)  # untimed: fills pip's cache
        shutil.rmtree(work / "warm")
        times: dict[str, list[float]] = {"uv (ours)": [], "venv + pip": []}
        for i in range(args.rounds):
            for label in times:
                target = work / f"{label[:2]}-{i}"
                started = time.perf_counter()
                if label.startswith("uv"):
                    ours(target, resolved.python_exe, resolved.lock)
                else:
                    pip(target, resolved.python_exe, lock_file, cache)
                times[label].append(time.perf_counter() - started)
                shutil.rmtree(target)
    table = Table(title=f"Provisioning the smoke lock ({len(resolved.lock.pins)} packages), warm caches")
    table.add_column("")
    for i in range(args.rounds):
        table.add_column(f"round {i + 1} s", justify="right")
    table.add_column("median s", justify="right")
    for label, values in times.items():
        table.add_row(label, *(f"{v:.1f}" for v in values), f"{statistics.median(values):.1f}")
    ratio = statistics.median(times["venv + pip"]) / statistics.median(times["uv (ours)"])
    Console().print(table)
    print(f"speed-up (median): {ratio:.1f}x  target >= 20x: {'met' if ratio >= 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
