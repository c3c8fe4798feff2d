"""The corpus in a real environment: every model builds, runs deterministically, and the control-flow
inputs take the branches and trip counts they claim (tests/corpus_check.py, run under the smoke venv)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench._env import smoke_environment
from runner.execute import worker_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def test_corpus_check_passes_in_the_smoke_environment(tmp_path: Path) -> None:
    venv, _ = smoke_environment()
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-I", str(ROOT / "tests" / "corpus_check.py")],
        capture_output=True, text=True, cwd=ROOT, env=worker_env(venv, tmp_path), timeout=1200,
    )
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert summary, proc.stdout[-3000:] + proc.stderr[-3000:]
    passed, failed = map(int, summary[-1])
    assert failed == 0 and passed > 100, proc.stdout[-5000:]
    assert proc.returncode == 0
