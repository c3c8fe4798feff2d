"""Deployment targets for real (issue 11): onnx2tf 2.x writes a SavedModel and a .tflite, each is reloaded and run
the way production runs it; a SavedModel without signatures is the failure it is; an environment resolved with
uv overrides is served with them, installs unchanged and passes again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from runner import pythons, uv
from store.db import make_engine, make_sessionmaker
from store.locks import Lock, parse_lock
from store.models import Case, Environment
from store.settings import Settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
TARGETS = ROOT / "matrix" / "specs" / "targets.toml"
# One model, and of the spec's environments: onnx2tf 2.6.9 with TF 2.21 (flatbuffer_direct backend), and TF 2.19.1
# (tf_converter backend), which onnx2tf 2.6.9's exact numpy/protobuf pins make unresolvable, so it is measured
# with them relaxed.
DIRECT = "py3.12-torch-tfcpu2.21.0-onnx2tf2.6.9-flatbuffer_direct"
ONLY = "py3.12-torch-tfcpu{2.21.0-onnx2tf2.6.9-flatbuffer_direct,2.19.1-onnx2tf2.6.9-tf_converter}*"
RELAXED = "py3.12-torch-tfcpu2.19.1-onnx2tf2.6.9-tf_converter-override.numpy.protobuf"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    tmp = tmp_path_factory.mktemp("targets")
    spec = tmp / "targets.toml"
    spec.write_text(TARGETS.read_text().replace('models = ["resnet", "batchnorm"]', 'models = ["resnet"]'))
    db = f"sqlite:///{tmp / 'targets.db'}"
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(spec), "--db", db, "--only", ONLY],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield db, json.loads(proc.stdout.strip().splitlines()[-1])


def _cases(db: str) -> dict[tuple[str, str], Case]:
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        out = {(c.environment.name, c.target): c for c in s.scalars(select(Case))}
        for c in out.values():
            _ = [st.details for st in c.steps]  # loaded before the session closes
    engine.dispose()
    return out


def test_the_declared_pins_conflict_and_the_relaxed_twin_is_measured(run: tuple[str, dict]) -> None:
    db, summary = run
    assert summary["environments"] == {"resolved": 2, "conflict": 1, "override-unneeded": 1}
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        envs = {e.name: e for e in s.scalars(select(Environment))}
    engine.dispose()
    plain = envs["py3.12-torch-tfcpu2.19.1-onnx2tf2.6.9-tf_converter"]
    assert plain.status == "conflict" and plain.signature and plain.signature.startswith("ResolutionConflict(")
    relaxed = envs[RELAXED]
    assert relaxed.status == "installed" and relaxed.overrides == ["numpy>=1.26,<2.2", "protobuf>=4.25,<6"]
    assert relaxed.options == {"onnx2tf-backend": "tf_converter"}


@pytest.mark.parametrize("target", ["saved_model", "tflite"])
def test_the_deployed_artifact_is_checked_through_what_a_user_runs(run: tuple[str, dict], target: str) -> None:
    case = _cases(run[0])[(DIRECT, target)]
    steps = {s.name: s for s in case.steps}
    assert [s.name for s in case.steps] == ["export", "check", "reference", "convert", "tf_run", "parity"]
    assert case.status == "pass", {s.name: (s.status, s.message) for s in case.steps}
    convert, tf_run, parity = steps["convert"].details, steps["tf_run"].details, steps["parity"].details
    assert convert["target"] == target and convert["tflite_backend"] == "flatbuffer_direct" and convert["bytes"] > 0
    if target == "saved_model":
        assert tf_run["called"] == "tf.saved_model.load(...).signatures['serving_default']"
        assert "output_signaturedefs" in convert["options"]
    else:
        assert convert["artifact"].endswith("_float32.tflite")
        assert tf_run["called"].startswith(("ai_edge_litert.interpreter.Interpreter", "tf.lite.Interpreter"))
    # the layout the artifact expects and what the runner fed it
    assert tf_run["inputs"][0]["layout"] == "NCHW (torch's)" and tf_run["inputs"][0]["fed"]
    assert parity["against"] == f"onnx2tf:{target}"
    assert case.max_abs_diff is not None and case.max_abs_diff < 1e-4
    for step in case.steps:  # time and memory per target step, like every other step
        assert step.seconds is not None and step.peak_rss and step.peak_rss > 0


def test_a_savedmodel_without_signatures_is_recorded_as_the_failure_it_is(run: tuple[str, dict],
                                                                           tmp_path: Path) -> None:
    """onnx2tf 1.15 wrote SavedModels with no signatures: TF Serving cannot call them. Built here as a plain
    tf.Module saved without signatures, in the real TF environment, and fed to the worker's tf_run step."""
    from runner.results import StepResult
    from runner.signatures import normalise

    db = run[0]
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        env = s.scalars(select(Environment).where(Environment.name == DIRECT)).one()
        venv = Settings().env_root / f"3.12-{env.lock_hash[:16]}"  # type: ignore[index]
    engine.dispose()
    script = tmp_path / "nosig.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / "runner" / "worker")!r})
        import torch  # first, as the worker does
        import tensorflow as tf
        import steps

        class Plain(tf.Module):
            def __init__(self):
                self.w = tf.Variable(2.0)

            # Two functions and no `signatures=`: tf.saved_model.save makes a serving_default only when it finds
            # exactly one, so this SavedModel has none, like onnx2tf 1.15's.
            @tf.function(input_signature=[tf.TensorSpec([1, 3, 4, 4], tf.float32)])
            def run(self, x):
                return x * self.w

            @tf.function(input_signature=[tf.TensorSpec([1, 3, 4, 4], tf.float32)])
            def run_twice(self, x):
                return x * self.w * self.w

        path = {str(tmp_path / "saved_model")!r}
        tf.saved_model.save(Plain(), path)
        ctx = steps.Context(corpus=None, case={{"key": "nosig", "route": "onnx2tf", "target": "saved_model"}},
                            workdir={str(tmp_path / "work")!r})
        ctx.artifact = path
        ctx.examples = [steps._Example((torch.ones(1, 3, 4, 4),), "ones")]
        try:
            steps.step_tf_run(ctx)
            print(json.dumps({{"status": "ok"}}))
        except steps.StepFailed as exc:
            print(json.dumps({{"status": "fail", "error_type": exc.error_type, "message": str(exc),
                              "details": exc.details}}))
    """))
    proc = subprocess.run([str(venv / "bin" / "python"), "-I", str(script)], capture_output=True, text=True,
                          timeout=600, env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2",
                                            "CUDA_VISIBLE_DEVICES": "", "HOME": os.environ.get("HOME", "/root")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "fail" and result["error_type"] == "NoServingSignature"
    assert "no signatures at all" in result["message"]
    step = StepResult(case="nosig", step="tf_run", ordinal=4, status="fail", error_type=result["error_type"],
                      message=result["message"], details=result["details"])
    assert normalise(step.error_type, step.message, step="tf_run", details=step.details) == "NoServingSignature"
    # recorded like any case: the case fails with that signature
    from matrix.expand import Case as PlannedCase
    from runner import record
    from store.models import Run

    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        run_row = s.scalars(select(Run)).first()
        env_row = s.scalars(select(Environment).where(Environment.name == env.name)).one()
        planned = PlannedCase(model="nosig", route="onnx2tf", exporter="torchscript", opset=17, target="saved_model",
                              model_hash="m")
        row = record.save_case(s, run_row, env_row, planned, "c", [step])  # type: ignore[arg-type]
        assert row is not None and row.status == "fail" and row.signature == "NoServingSignature"
        assert row.target == "saved_model"
    engine.dispose()


def test_the_relaxed_environment_is_served_with_its_overrides_and_passes_again(run: tuple[str, dict],
                                                                             tmp_path: Path) -> None:
    db = run[0]
    case = _cases(db)[(RELAXED, "tflite")]
    assert case.status == "pass", {s.name: (s.status, s.message) for s in case.steps}
    with TestClient(create_app(Settings(database_url=db))) as client:
        params = {"models": "resnet", "route": "onnx2tf", "target": "tflite", "require": "tensorflow-cpu<2.20"}
        served = client.get("/api/v1/lockfile", params=params)
        assert served.status_code == 200, served.text
        constraints = client.get("/api/v1/lockfile", params={**params, "format": "constraints"}).text
        pyproject = client.get("/api/v1/lockfile", params={**params, "format": "pyproject"}).text
    text = served.text
    assert "# resolved with uv overrides (declared pins relaxed): numpy>=1.26,<2.2; protobuf>=4.25,<6" in text
    assert "--overrides constraints.txt" in constraints and 'override-dependencies = [' in pyproject
    pins = {p.name: p.version for p in parse_lock(text)}
    assert pins["onnx2tf"] == "2.6.9" and pins["tensorflow-cpu"] == "2.19.1" and pins["numpy"].startswith("2.1.")
    # the served text, unchanged, installs into a fresh venv in hash-checking mode
    exe, _ = pythons.find("3.12")
    fresh = tmp_path / "fresh"
    uv.venv(fresh, exe)
    uv.sync(fresh, Lock(text, parse_lock(text)))
    assert uv.freeze(fresh) == pins
    # and the case passes again there
    from runner.execute import Job, execute

    job = Job(key="resnet.onnx2tf.torchscript.op17.tflite", model="resnet", route="onnx2tf", exporter="torchscript",
              opset=17, target="tflite", options={"tflite_backend": "tf_converter"})
    outcome = execute(fresh, [job], corpus=ROOT / "matrix" / "corpus", workdir=tmp_path / "work", step_timeout=600,
                      memory_limit=8 * 2**30)
    steps = outcome.steps[job.key]
    assert [str(s.status) for s in steps] == ["ok"] * 6, steps
    assert steps[-1].max_abs_diff is not None and steps[-1].max_abs_diff < 1e-4
