"""The real smoke run: a real uv environment with real torch, onnx, onnxruntime, tensorflow and onnx2tf."""

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
from runner import uv
from store.locks import Lock, parse_lock
from store.settings import Settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "matrix" / "specs" / "smoke.toml"


def _knowngood(*args: str, db: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "knowngood", *args, "--db", db], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ}, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('smoke') / 'smoke.db'}"
    yield db, _knowngood("run", str(SMOKE), db=db)


@pytest.fixture(scope="module")
def client(smoke: tuple[str, dict]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=smoke[0]))) as c:
        yield c


def _cases(client: TestClient) -> dict[tuple[str, str], dict]:
    from store.db import make_engine, make_sessionmaker
    from store.models import Case

    engine = make_engine(client.app.state.settings.database_url)  # type: ignore[attr-defined]
    out: dict[tuple[str, str], dict] = {}
    with make_sessionmaker(engine)() as s:
        for c in s.scalars(select(Case)):
            out[(c.model, c.route)] = {"status": c.status, "diff": c.max_abs_diff, "signature": c.signature,
                                       "target": c.target,
                                       "steps": {st.name: (st.status, st.details) for st in c.steps}}
    engine.dispose()
    return out


def test_every_case_is_recorded_with_all_its_steps(smoke: tuple[str, dict], client: TestClient) -> None:
    _, summary = smoke
    assert summary["environments"] == {"resolved": 1}
    assert sum(summary["cases"].values()) == 8
    cases = _cases(client)
    assert len(cases) == 8
    for (model, route), case in cases.items():
        expected = ["export", "check", "reference", "runtime", "parity"] if route == "onnxruntime" else \
            ["export", "check", "reference", "convert", "tf_run", "parity"]
        assert list(case["steps"]) == expected, (model, route)
        assert case["target"] == ("" if route == "onnxruntime" else "tflite")  # smoke.toml: targets = ["tflite"]


def test_resnet_passes_on_onnxruntime_within_tolerance(client: TestClient) -> None:
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime"}).json()
    assert len(body["chains"]) == 1
    (evidence,) = body["chains"][0]["models"]
    assert evidence["model"] == "resnet" and evidence["opset_emitted"] == 17
    assert 0 <= evidence["max_abs_diff"] < 1e-3


def test_control_flow_trace_fails_parity_on_the_branch_it_did_not_take(client: TestClient) -> None:
    case = _cases(client)[("control_flow", "onnxruntime")]
    assert case["status"] == "fail"
    assert case["steps"]["export"][0] == "ok"  # the tracer silently baked one branch in
    parity_status, parity = case["steps"]["parity"]
    taken = [i["takes"] for i in case["steps"]["reference"][1]["inputs"]]
    assert parity_status == "fail" and case["signature"] == f"ParityExceeded(input={parity['failed_input']})"
    ok_branches = {taken[i["input"]] for i in parity["inputs"] if i["ok"]}
    bad_branches = {taken[i["input"]] for i in parity["inputs"] if not i["ok"]}
    assert len(ok_branches) == 1 and len(bad_branches) == 1 and ok_branches != bad_branches
    body = client.get("/api/v1/chains", params={"models": "resnet,control_flow", "route": "onnxruntime"}).json()
    assert body["chains"] == []


def test_served_lockfile_is_what_was_installed_and_uv_accepts_it(client: TestClient, tmp_path: Path) -> None:
    resp = client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnxruntime"})
    assert resp.status_code == 200
    served = resp.text
    pins = {p.name: p.version for p in parse_lock(served)}
    assert {"torch", "onnx", "onnxruntime", "tensorflow-cpu", "onnx2tf", "numpy", "protobuf"} <= set(pins)
    assert "tensorflow" not in pins  # excluded: tensorflow-cpu provides the module
    chain = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime"}).json()["chains"][0]
    venv = Settings().env_root / f"3.11-{chain['lock_hash'][:16]}"
    assert uv.freeze(venv) == pins
    # the served text, unchanged, installs into a fresh venv in hash-checking mode
    lock_file = tmp_path / "requirements.txt"
    lock_file.write_text(served)
    fresh = tmp_path / "fresh"
    from runner import pythons

    exe, _ = pythons.find("3.11")
    uv.venv(fresh, exe)
    uv.sync(fresh, Lock(served, parse_lock(served)))
    assert uv.freeze(fresh) == pins
    # and a corpus case passes again in the round-tripped environment
    from runner.execute import Job, execute

    job = Job(key="resnet.onnxruntime.torchscript.op17", model="resnet", route="onnxruntime",
              exporter="torchscript", opset=17)
    outcome = execute(fresh, [job], corpus=ROOT / "matrix" / "corpus", workdir=tmp_path / "work",
                      step_timeout=600, memory_limit=8 * 2**30)
    steps = outcome.steps[job.key]
    assert [str(s.status) for s in steps] == ["ok"] * 5, steps
    assert steps[-1].max_abs_diff is not None and steps[-1].max_abs_diff < 1e-4


def test_rerun_skips_what_is_recorded(smoke: tuple[str, dict]) -> None:
    db, _ = smoke
    again = _knowngood("run", str(SMOKE), db=db)
    assert again["skipped_recorded"] == 8 and again["installs"] == 0 and again["cases"] == {}


def test_a_user_corpus_goes_through_a_real_run(tmp_path: Path) -> None:
    spec_text = SMOKE.read_text().replace(
        'models = ["resnet", "transformer", "grid_sample", "control_flow"]', 'models = ["tiny_mlp", "gelu_head"]'
    ).replace('routes = ["onnxruntime", "onnx2tf"]', 'routes = ["onnxruntime"]')
    spec_file = tmp_path / "mine.toml"
    spec_file.write_text(spec_text)
    db = f"sqlite:///{tmp_path / 'mine.db'}"
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(spec_file), "--db", db,
                           "--corpus", str(ROOT / "examples" / "my_models.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cases"] == {"pass": 2}
    with TestClient(create_app(Settings(database_url=db))) as c:
        body = c.get("/api/v1/chains", params={"models": "tiny_mlp,gelu_head", "route": "onnxruntime"}).json()
    assert len(body["chains"]) == 1
