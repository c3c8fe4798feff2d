"""Artifact dedup across torch releases, for real: torch 2.14 and 2.15 emit the same graphs for these models, so
each graph is converted once per runtime environment; a sweep killed midway resumes without redoing anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from store.db import make_engine, make_sessionmaker
from store.models import Artifact, Case, Environment, Step

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]

SPEC = """
name = "split-dedup"
models = ["resnet", "batchnorm"]
routes = ["onnxruntime"]
exporters = ["torchscript", "dynamo"]
opsets = [17]
mode = "split"

[axes]
python = ["3.11"]
torch = ["==2.14.1", "==2.15.0"]
onnx = ["*"]
onnxruntime = ["*"]

[companions]
torch = ["onnxscript"]
"""


def _counts(db: str) -> dict[str, object]:
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        out = {
            "exports": s.scalar(select(func.count()).select_from(Case).where(Case.route == "export")),
            "export_steps": s.scalar(select(func.count()).select_from(Step).where(Step.name == "export")),
            "runtime": s.scalar(select(func.count()).select_from(Case).where(Case.route == "onnxruntime")),
            "artifacts": s.scalar(select(func.count()).select_from(Artifact)),
            "passed": s.scalar(select(func.count()).select_from(Case).where(Case.status == "pass")),
            "kinds": sorted(s.scalars(select(Environment.kind))),
            "dedup": sorted(str(d.get("dedup", "stored")) for d in s.scalars(
                select(Step.details).where(Step.name == "save"))),
        }
    engine.dispose()
    return out


def test_same_graphs_from_two_torch_releases_are_converted_once_and_a_killed_sweep_resumes(tmp_path: Path) -> None:
    spec = tmp_path / "dedup.toml"
    spec.write_text(SPEC)
    db = f"sqlite:///{tmp_path / 'dedup.db'}"
    env = {**os.environ, "KNOWNGOOD_ARTIFACT_ROOT": str(tmp_path / "artifacts")}
    argv = [sys.executable, "-m", "knowngood", "run", str(spec), "--db", db]

    # Kill the sweep once the first export environment has recorded a case, then resume it.
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and first.poll() is None:
        time.sleep(2)
        try:
            if _counts(db)["exports"]:
                break
        except OperationalError:  # the run is still creating the schema
            continue
    if first.poll() is None:
        os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = _counts(db)
    assert killed["exports"], "the first attempt recorded an export before it was killed"

    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    json.loads(proc.stdout.strip().splitlines()[-1])
    done = _counts(db)
    # exactly one export per (export environment, model, exporter, opset): 2 torch × 2 models × 2 exporters
    assert done["exports"] == 8 and done["export_steps"] == 8
    # the two releases emit the same graphs: 4 distinct graphs, each checked against the stored references
    assert done["artifacts"] == 4
    assert done["dedup"].count("same graph, same inputs and reference outputs") == 4
    # conversions = distinct graphs × runtime environments (one here) × routes (one)
    assert done["runtime"] == 4 and done["passed"] == 12
    assert done["kinds"] == ["export", "export", "runtime"]
