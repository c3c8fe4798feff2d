"""The default exporter for real: `torch.onnx.export(model, args, f)` unchanged, in a real uv environment.

On torch 2.15 it runs the dynamo exporter (the default since 2.9) at its own default opset, which needs
onnxscript: the plan brings it as the environment's companion; an environment without it gets the
ModuleNotFound(onnxscript) a user without it gets. dynamic_batch is exported with a dynamic batch axis and
run at batch 2 (traced), 1 and 5.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]

# The smoke environment's torch, onnx and onnxruntime (warm in the uv cache), without TensorFlow.
SPEC = """
name = "e2e-default-exporter"
models = {models}
routes = ["onnxruntime"]
exporters = ["default"]
{companions}
[axes]
python = ["3.11"]
torch = ["==2.15.0"]
onnx = ["==1.19.1"]
onnxruntime = ["==1.23.0"]

[limits]
step-timeout = 600
memory-limit-mb = 8000
prune = true
"""


def _run(tmp_path: Path, name: str, models: str, companions: str = "") -> tuple[str, dict]:
    spec_file = tmp_path / f"{name}.toml"
    spec_file.write_text(SPEC.format(models=models, companions=companions))
    db = f"sqlite:///{tmp_path / (name + '.db')}"
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(spec_file), "--db", db],
                          capture_output=True, text=True, cwd=ROOT, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return db, json.loads(proc.stdout.strip().splitlines()[-1])


def _cases(db: str) -> dict[str, dict]:
    from store.db import make_engine, make_sessionmaker
    from store.models import Case

    engine = make_engine(db)
    out: dict[str, dict] = {}
    with make_sessionmaker(engine)() as s:
        for c in s.scalars(select(Case)):
            out[c.model] = {"status": c.status, "signature": c.signature, "opset": c.opset,
                            "opset_emitted": c.opset_emitted, "requirements": c.environment.requirements,
                            "steps": {st.name: (st.status, st.details) for st in c.steps}}
    engine.dispose()
    return out


def test_default_exporter_runs_dynamo_on_torch_2_15_and_says_so(tmp_path: Path) -> None:
    db, summary = _run(tmp_path, "default", '["transformer", "dynamic_batch"]')
    assert summary["cases"] == {"pass": 2}, summary
    cases = _cases(db)
    for model in ("transformer", "dynamic_batch"):
        case = cases[model]
        assert any(r.startswith("onnxscript") for r in case["requirements"]), case["requirements"]
        status, export = case["steps"]["export"]
        assert status == "ok"
        assert export["exporter_requested"] == "default" and export["opset_requested"] is None
        assert export["exporter_call"] == "torch.onnx.export(model, args, f)"
        assert export["exporter_ran"] == "dynamo"  # torch >= 2.9: dynamo by default
        assert export["opset_emitted"] == case["opset_emitted"] == 20  # torch 2.15's ONNX_DEFAULT_OPSET
        assert export["ir_version"] == 10
        assert case["opset"] == 0  # no opset asked for
    parity = cases["dynamic_batch"]["steps"]["parity"][1]
    assert [i["note"] for i in parity["inputs"]] == ["batch of 2 (the traced size)", "batch of 1",
                                                    "batch of 5, U(-0.5,1.5)"]
    assert all(i["ok"] for i in parity["inputs"])
    assert cases["dynamic_batch"]["steps"]["export"][1]["dynamic_axes"] == {"input_0": {"0": "batch"},
                                                                            "output_0": {"0": "batch"}}


def test_without_onnxscript_the_default_export_fails_as_a_users_does(tmp_path: Path) -> None:
    # The smoke environment has torch 2.15 and no onnxscript (its spec asks only for TorchScript), which is
    # what a spec saying `[companions] torch = []` gets: reuse it rather than install another environment.
    from bench._env import smoke_environment
    from runner.execute import Job, execute
    from runner.signatures import normalise

    venv, _ = smoke_environment()
    job = Job(key="transformer.onnxruntime.default.op0", model="transformer", route="onnxruntime",
              exporter="default", opset=0)
    outcome = execute(venv, [job], corpus=ROOT / "matrix" / "corpus", workdir=tmp_path / "work",
                      step_timeout=600, memory_limit=8 * 2**30)
    export = outcome.steps[job.key][0]
    assert export.step == "export" and str(export.status) == "fail"
    assert normalise(export.error_type, export.message, step="export") == "ModuleNotFound(onnxscript)"
