"""The default exporter for real: `torch.onnx.export(model, args, f)` unchanged, in a real uv environment.

On torch 2.15 it runs the dynamo exporter (the default since 2.9) at its own default opset, which needs
onnxscript: the plan brings it as the environment's companion, and a spec that says not to gets the
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


def test_without_the_companion_the_default_export_needs_onnxscript(tmp_path: Path) -> None:
    db, summary = _run(tmp_path, "bare", '["transformer"]', companions="[companions]\ntorch = []\n")
    assert summary["cases"] == {"fail": 1}, summary
    case = _cases(db)["transformer"]
    assert not any(r.startswith("onnxscript") for r in case["requirements"])
    assert case["status"] == "fail" and case["signature"] == "ModuleNotFound(onnxscript)", case
