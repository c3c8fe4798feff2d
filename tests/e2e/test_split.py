"""A split chain for real: an export environment with torch stores graphs, a runtime environment without torch
converts and runs them (onnxruntime and onnx2tf), and the chain is served as two lockfiles that install as served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from runner import pythons, uv
from runner.execute import Job, execute
from store.db import make_engine, make_sessionmaker
from store.locks import Lock, parse_lock
from store.models import Artifact, Case, Environment
from store.settings import Settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
SPEC = ROOT / "matrix" / "specs" / "split-smoke.toml"


def _run(db: str, artifacts: Path) -> dict:
    env = {**os.environ, "KNOWNGOOD_ARTIFACT_ROOT": str(artifacts)}
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(SPEC), "--db", db],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def split_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict]]:
    folder = tmp_path_factory.mktemp("split")
    db, artifacts = f"sqlite:///{folder / 'split.db'}", folder / "artifacts"
    yield db, artifacts, _run(db, artifacts)


def _rows(db: str) -> tuple[list[Environment], list[tuple[str, str, str, str | None]]]:
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        envs = list(s.scalars(select(Environment).order_by(Environment.id)))
        for e in envs:
            _ = e.packages
        cases = [(c.model, c.route, c.status, key) for c, key in
                 s.execute(select(Case, Artifact.key).outerjoin(Artifact, Artifact.id == Case.artifact_id))]
    engine.dispose()
    return envs, cases


def test_each_side_holds_only_its_frameworks(split_run: tuple[str, Path, dict]) -> None:
    db, _, summary = split_run
    assert summary["environments"] == {"resolved": 2}  # one export, one runtime environment
    envs, _ = _rows(db)
    kinds = {e.kind: {p.name for p in e.packages} for e in envs}
    assert set(kinds) == {"export", "runtime"}
    assert "torch" in kinds["export"] and "tensorflow-cpu" not in kinds["export"]
    assert "torch" not in kinds["runtime"] and {"tensorflow-cpu", "onnx2tf", "onnxruntime"} <= kinds["runtime"]


def test_one_export_per_model_and_one_conversion_per_graph_and_route(split_run: tuple[str, Path, dict]) -> None:
    db, artifacts, _ = split_run
    _, cases = _rows(db)
    exports = [c for c in cases if c[1] == "export"]
    assert sorted(c[0] for c in exports) == ["control_flow", "resnet"] and all(c[2] == "pass" for c in exports)
    keys = {c[3] for c in exports}
    assert len(keys) == 2 and all(k and (artifacts / k[:2] / k / "model.onnx").is_file() for k in keys)
    runtime = sorted((c[0], c[1], c[2]) for c in cases if c[1] != "export")
    # conversions = distinct graphs × runtime routes, each starting from a stored graph
    assert {c[3] for c in cases if c[1] != "export"} == keys
    assert runtime == [("control_flow", "onnx2tf", "fail"), ("control_flow", "onnxruntime", "fail"),
                       ("resnet", "onnx2tf", "pass"), ("resnet", "onnxruntime", "pass")]


def test_a_rerun_redoes_nothing(split_run: tuple[str, Path, dict]) -> None:
    db, artifacts, _ = split_run
    again = _run(db, artifacts)
    assert again["cases"] == {} and again["installs"] == 0 and again["skipped_recorded"] == 6


def test_served_as_two_lockfiles_that_install_unchanged_and_pass_again(
    split_run: tuple[str, Path, dict], tmp_path: Path,
) -> None:
    db, artifacts, _ = split_run
    with TestClient(create_app(Settings(database_url=db))) as client:
        body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnx2tf"}).json()
        assert body["chains"] == [] and body["split_total"] == 1
        (chain,) = body["split_chains"]
        assert chain["kind"] == "split" and "torch" in chain["research"]["versions"]
        assert "torch" not in chain["production"]["versions"]
        # no joint chain exists, so a lockfile must name its side
        assert client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnx2tf"}).status_code == 409
        served = {side: client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnx2tf",
                                                               "side": side}).text
                  for side in ("research", "production")}
    exe, _ = pythons.find("3.11")
    venvs = {}
    for side, text in served.items():
        venvs[side] = tmp_path / side
        uv.venv(venvs[side], exe)
        uv.sync(venvs[side], Lock(text, parse_lock(text)))  # hash-checked, as served
        assert uv.freeze(venvs[side]) == {p.name: p.version for p in parse_lock(text)}
    # the production side alone converts and runs the stored graph again
    resnet = next(p for p in artifacts.glob("*/*") if json.loads((p / "meta.json").read_text())["model"] == "resnet")
    job = Job(key="resnet.onnx2tf", model="resnet", route="onnx2tf", exporter="torchscript", opset=17,
              artifact=str(resnet))
    outcome = execute(venvs["production"], [job], corpus=ROOT / "matrix" / "corpus", workdir=tmp_path / "work",
                      step_timeout=600, memory_limit=8 * 2**30)
    steps = outcome.steps[job.key]
    assert [s.step for s in steps] == ["load", "convert", "tf_run", "parity"]
    assert [str(s.status) for s in steps] == ["ok"] * 4, steps
