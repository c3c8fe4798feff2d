"""Matrix, failures, runs, environments and every lockfile format, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from runner import pythons, uv
from store.locks import Lock
from store.models import Environment, Package
from store.settings import Settings


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        yield c


@pytest.fixture
def make_conflict(session: Session) -> Callable[..., Environment]:
    """An environment uv could not resolve: no lock, no packages, no cases; the reason is its result."""
    def make(requirements: list[str], signature: str = "ResolutionConflict(protobuf)") -> Environment:
        env = Environment(
            hash="c" * 64, name="py3.11-" + "-".join(requirements), python="3.11", requirements=requirements,
            excludes=[], index_url="https://pypi.org/simple", cutoff="2026-11-01", status="conflict",
            error="Because onnx==1.17.0 depends on protobuf>=3.20.2 and you require protobuf==3.19.6 …",
            signature=signature, memory={},
        )
        session.add(env)
        session.commit()
        return env
    return make


@pytest.fixture
def recorded(make_run: Callable, make_environment: Callable, make_case: Callable,
             make_conflict: Callable) -> dict:
    """torch 2.3 / 2.4 / 2.5 against tensorflow 2.16 (tensorflow) and 2.17 (tensorflow-cpu), plus one conflict."""
    run = make_run()
    envs = {
        "a": make_environment({"torch": "2.3.1", "onnx": "1.16.0", "onnxruntime": "1.18.0", "tensorflow": "2.16.2",
                               "onnx2tf": "1.22.0"}),
        "b": make_environment({"torch": "2.4.1", "onnx": "1.16.2", "onnxruntime": "1.19.2",
                               "tensorflow-cpu": "2.17.0", "onnx2tf": "1.25.9"}),
        "c": make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0",
                               "tensorflow-cpu": "2.17.0", "onnx2tf": "1.26.3"}, python="3.12"),
    }
    for env in envs.values():
        make_case(run, env, "resnet", "onnxruntime", max_abs_diff=2e-6)
    make_case(run, envs["a"], "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::grid_sampler)")
    make_case(run, envs["b"], "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::grid_sampler)")
    make_case(run, envs["c"], "grid_sample", "onnxruntime", max_abs_diff=3e-6)
    make_case(run, envs["b"], "resnet", "onnx2tf", status="crash", max_abs_diff=None, signature="Crash(SIGSEGV)")
    make_case(run, envs["b"], "resnet", "onnxruntime", exporter="dynamo", max_abs_diff=5e-6)
    conflict = make_conflict(["torch==2.5.1", "tensorflow==2.12.0", "onnxruntime"])
    return {"run": run, **envs, "conflict": conflict}


# /chains ---------------------------------------------------------------------------------------------------------


def test_chains_page_and_filters(client: TestClient, recorded: dict) -> None:
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime", "limit": 2}).json()
    assert body["total"] == 3
    assert [c["versions"]["torch"] for c in body["chains"]] == ["2.5.1", "2.4.1"]
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime",
                                                "exporter": "dynamo"}).json()
    assert [c["name"] for c in body["chains"]] == [recorded["b"].name]
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime", "python": "3.12"}).json()
    assert [c["name"] for c in body["chains"]] == [recorded["c"].name]
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime",
                                                "require": "tensorflow-cpu<2.17"}).json()
    assert [c["versions"]["torch"] for c in body["chains"]] == ["2.3.1"]  # tensorflow 2.16.2 matches the alias
    evidence = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime"}).json()["chains"][1]
    assert evidence["cases_passed"] == 2  # torchscript and dynamo
    assert evidence["models"] == [{"model": "resnet", "exporter": "dynamo", "opset": 17, "opset_emitted": 17,
                                   "max_abs_diff": 5e-6, "target": ""}]  # the worst passing diff is the one reported


@pytest.mark.parametrize(
    ("path", "params", "param", "fragment"),
    [
        ("/api/v1/chains", {"models": "resnet", "route": "onnxruntime", "require": "tensorflw>2"}, "require",
         "tensorflw"),
        ("/api/v1/chains", {"models": "resnet", "route": "onnxruntime", "limit": 0}, "limit", "greater"),
        ("/api/v1/matrix", {"x": "pytorch"}, "x", "no recorded environment pins pytorch"),
        ("/api/v1/matrix", {"route": "tflite"}, "route", "expected one of"),
        ("/api/v1/matrix", {"models": "resnet,nosuch"}, "models", "nosuch"),
        ("/api/v1/failures", {"package": "nosuch"}, "package", "nosuch"),
        ("/api/v1/failures", {"exporter": "jit"}, "exporter", "expected one of"),
        ("/api/v1/matrix", {"x": "tor\x00ch"}, "x", "NUL"),
    ],
)
def test_bad_parameters_name_themselves(client: TestClient, recorded: dict, path: str, params: dict, param: str,
                                        fragment: str) -> None:
    resp = client.get(path, params=params)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["query", param]
    assert fragment in detail["msg"]


@pytest.mark.parametrize("recheck", [0.0, 0.5])
def test_answers_follow_new_results(db_url: str, recorded: dict, make_case: Callable, recheck: float) -> None:
    """Answers are cached per data version: a newly recorded case shows up at once, or after `recheck` seconds."""
    params = {"models": "grid_sample", "route": "onnxruntime"}
    with TestClient(create_app(Settings(database_url=db_url, response_cache_recheck=recheck))) as client:
        assert client.get("/api/v1/chains", params=params).json()["total"] == 1
        assert client.get("/api/v1/chains", params=params).json()["total"] == 1  # served from the cache
        make_case(recorded["run"], recorded["b"], "grid_sample", "onnxruntime", exporter="dynamo", max_abs_diff=1e-6)
        if recheck:
            assert client.get("/api/v1/chains", params=params).json()["total"] == 1  # within `recheck`: cached
            time.sleep(recheck)
        assert client.get("/api/v1/chains", params=params).json()["total"] == 2
        lock = client.get("/api/v1/lockfile", params={**params, "require": "torch<2.5"}).text
        assert lock.startswith("# knowngood lockfile for " + recorded["b"].name)


def test_a_new_environment_is_ranked_with_its_own_versions(db_url: str, recorded: dict, make_environment: Callable,
                                                          make_case: Callable) -> None:
    """Versions are memoised per environment: one recorded after the first answer is read, not missed or mixed up."""
    params = {"models": "resnet", "route": "onnxruntime", "python": "3.11"}
    # recheck 0: each answer reads the data version, so the new environment shows in the next one.
    with TestClient(create_app(Settings(database_url=db_url, response_cache_size=0,
                                        response_cache_recheck=0))) as client:
        before = client.get("/api/v1/chains", params=params).json()
        assert [c["versions"]["torch"] for c in before["chains"]] == ["2.4.1", "2.3.1"]
        newer = make_environment({"torch": "2.6.0", "onnx": "1.18.0", "onnxruntime": "1.21.0",
                                  "tensorflow-cpu": "2.19.0", "onnx2tf": "1.27.0", "onnxscript": "0.5.4"})
        make_case(recorded["run"], newer, "resnet", "onnxruntime", max_abs_diff=1e-6)
        after = client.get("/api/v1/chains", params=params).json()
        assert [c["versions"]["torch"] for c in after["chains"]] == ["2.6.0", "2.4.1", "2.3.1"]
        assert after["chains"][0]["versions"]["tensorflow-cpu"] == "2.19.0"
        assert client.get("/api/v1/chains", params={**params, "require": "tensorflow<2.19"}).json()["total"] == 2
        assert client.get("/api/v1/chains", params={**params, "require": "numpy==1.26.4"}).json()["total"] == 3
        # a package outside the memoised key set is read from the lock
        only = client.get("/api/v1/chains", params={**params, "require": "onnxscript>=0.5"}).json()
        assert [c["name"] for c in only["chains"]] == [newer.name]


# /matrix ---------------------------------------------------------------------------------------------------------


def test_matrix_merges_tensorflow_cpu_and_counts_cells(client: TestClient, recorded: dict) -> None:
    grid = client.get("/api/v1/matrix", params={"route": "onnxruntime"}).json()
    assert grid["x"] == "torch" and grid["y"] == "tensorflow"
    assert grid["x_versions"] == ["2.3.1", "2.4.1", "2.5.1"]
    assert grid["y_versions"] == ["2.12.0", "2.16.2", "2.17.0"]  # 2.12.0 only requested, never resolved
    cells = {(c["x"], c["y"]): c for c in grid["cells"]}
    assert {k: (c["status"], c["passed"], c["failed"]) for k, c in cells.items()} == {
        ("2.3.1", "2.16.2"): ("mixed", 1, 1),
        ("2.4.1", "2.17.0"): ("mixed", 2, 1),
        ("2.5.1", "2.17.0"): ("pass", 2, 0),
        ("2.5.1", "2.12.0"): ("unresolved", 0, 0),
    }
    assert cells[("2.5.1", "2.12.0")]["environments"][0]["signature"] == "ResolutionConflict(protobuf)"
    assert cells[("2.4.1", "2.17.0")]["environments"][0]["id"] == recorded["b"].id


def test_matrix_any_two_packages_and_model_filter(client: TestClient, recorded: dict) -> None:
    grid = client.get("/api/v1/matrix", params={"x": "onnx", "y": "onnxruntime", "models": "grid_sample"}).json()
    assert {(c["x"], c["y"], c["status"]) for c in grid["cells"]} == {
        ("1.16.0", "1.18.0", "fail"), ("1.16.2", "1.19.2", "fail"), ("1.17.0", "1.20.0", "pass"),
        (None, None, "unresolved"),  # the conflict pinned neither onnx nor onnxruntime
    }
    assert grid["x_versions"][-1] is None
    grid = client.get("/api/v1/matrix", params={"route": "onnx2tf"}).json()
    assert [(c["x"], c["status"]) for c in grid["cells"]] == [("2.4.1", "fail")]  # the conflict never asked onnx2tf


# /failures -------------------------------------------------------------------------------------------------------


def test_failures_count_span_and_example(client: TestClient, recorded: dict) -> None:
    body = client.get("/api/v1/failures").json()
    by_sig = {f["signature"]: f for f in body["failures"]}
    assert next(iter(by_sig)) == "UnsupportedOperator(aten::grid_sampler)"  # most frequent first
    grid = by_sig["UnsupportedOperator(aten::grid_sampler)"]
    assert (grid["count"], grid["environments"]) == (2, 2)
    assert (grid["first_version"], grid["last_version"]) == ("2.3.1", "2.4.1")
    assert grid["models"] == ["grid_sample"] and grid["routes"] == ["onnxruntime"]
    assert grid["example"]["step"] == "export" and grid["example"]["environment"] == recorded["a"].name
    conflict = by_sig["ResolutionConflict(protobuf)"]
    assert conflict["scope"] == "environment" and conflict["first_version"] == "2.5.1"
    assert "protobuf" in conflict["example"]["message"]
    body = client.get("/api/v1/failures", params={"package": "tensorflow", "route": "onnx2tf"}).json()
    assert [(f["signature"], f["first_version"]) for f in body["failures"]] == [("Crash(SIGSEGV)", "2.17.0")]


# /runs, /environments --------------------------------------------------------------------------------------------


def test_runs_and_run_detail(client: TestClient, recorded: dict, make_run: Callable) -> None:
    later = make_run(spec_name="nightly")
    body = client.get("/api/v1/runs").json()
    assert body["total"] == 2 and [r["id"] for r in body["runs"]] == [later.id, recorded["run"].id]
    assert body["runs"][1]["cases"] == {"pass": 5, "fail": 2, "crash": 1}
    assert client.get("/api/v1/runs", params={"limit": 1, "offset": 1}).json()["runs"][0]["id"] == recorded["run"].id
    run = client.get(f"/api/v1/runs/{recorded['run'].id}").json()
    assert {e["name"]: e["cases"] for e in run["environments"]}[recorded["b"].name] == {"pass": 2, "fail": 1,
                                                                                       "crash": 1}
    assert client.get("/api/v1/runs/no-such-run").status_code == 404


def test_environment_detail_has_cases_steps_and_lockfiles(client: TestClient, recorded: dict) -> None:
    env = client.get(f"/api/v1/environments/{recorded['a'].id}").json()
    assert env["name"] == recorded["a"].name
    assert {p["name"]: p["version"] for p in env["packages"]}["tensorflow"] == "2.16.2"
    failed = next(c for c in env["cases"] if c["status"] == "fail")
    assert failed["signature"] == failed["steps"][0]["signature"] == "UnsupportedOperator(aten::grid_sampler)"
    assert set(env["lockfiles"]) == {"requirements", "constraints", "pylock", "pyproject"}
    text = client.get(env["lockfiles"]["constraints"]).text
    assert text.startswith(f"# knowngood lockfile for {env['name']}") and "tensorflow==2.16.2" in text
    conflict = client.get(f"/api/v1/environments/{recorded['conflict'].id}").json()
    assert conflict["lockfiles"] == {} and conflict["cases"] == []
    assert client.get(f"/api/v1/environments/{recorded['conflict'].id}/lockfile").status_code == 409
    assert client.get("/api/v1/environments/999999").status_code == 404
    assert client.get(f"/api/v1/environments/{2**40}").status_code == 422


# lockfile formats ------------------------------------------------------------------------------------------------


def test_every_format_is_stamped(client: TestClient, recorded: dict) -> None:
    params = {"models": "resnet,grid_sample", "route": "onnxruntime"}
    for fmt in ("requirements", "constraints", "pyproject"):
        resp = client.get("/api/v1/lockfile", params={**params, "format": fmt})
        assert resp.status_code == 200
        head = resp.text.splitlines()[:3]
        assert recorded["run"].id in head[1] and "cutoff 2026-11-01" in head[1]
        assert "resolved against https://pypi.org/simple" in head[2]
    constraints = client.get("/api/v1/lockfile", params={**params, "format": "constraints"}).text
    assert constraints.splitlines()[3:] == ["numpy==1.26.4", "onnx==1.17.0", "onnx2tf==1.26.3", "onnxruntime==1.20.0",
                                            "protobuf==4.25.5", "tensorflow-cpu==2.17.0", "torch==2.5.1"]
    project = tomllib.loads(client.get("/api/v1/lockfile", params={**params, "format": "pyproject"}).text)
    assert "torch==2.5.1" in project["project"]["dependencies"]
    assert project["project"]["requires-python"] == "==3.12.*"
    assert project["tool"]["uv"]["exclude-newer"] == "2026-11-01"
    resp = client.get("/api/v1/lockfile", params={**params, "format": "poetry"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "format"]


@pytest.fixture(scope="session")
def tiny_lock() -> tuple[Path, Lock]:
    """A real lock, resolved once: six and packaging as of 2025-01-01."""
    exe, _ = pythons.find("3.11")
    lock = uv.compile(exe, ["six", "packaging"], cutoff="2025-01-01")
    assert isinstance(lock, Lock), lock
    return exe, lock


def _uv(*args: str) -> str:
    proc = subprocess.run([uv.uv_binary(), *args], capture_output=True, text=True, env=uv.uv_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(("fmt", "install"), [
    ("requirements", ["pip", "sync", "--require-hashes"]),
    ("pylock", ["pip", "sync"]),  # a pylock carries a hash for every file: always checked
    ("pyproject", ["pip", "install", "-r"]),
])
def test_served_lockfile_round_trips_through_uv(client: TestClient, session: Session, make_run: Callable,
                                                make_case: Callable, tiny_lock: tuple[Path, Lock],
                                                tmp_path: Path, fmt: str, install: list[str]) -> None:
    """Serve the lock of a real resolution, install it into a fresh venv, and get exactly the recorded set."""
    exe, lock = tiny_lock
    env = Environment(
        hash="r" * 64, name="py3.11-six-packaging", python="3.11", python_full="3.11",
        requirements=["six", "packaging"], excludes=[], index_url="https://pypi.org/simple", cutoff="2025-01-01",
        status="installed", lock_hash=lock.hash, lock_text=lock.text, memory={},
        packages=[Package(name=p.name, version=p.version, hashes=list(p.hashes)) for p in lock.pins],
    )
    session.add(env)
    session.commit()
    run = make_run()
    make_case(run, env, "resnet", "onnxruntime")
    resp = client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnxruntime", "format": fmt})
    assert resp.status_code == 200, resp.text
    name = {"requirements": "requirements.txt", "pylock": "pylock.toml", "pyproject": "pyproject.toml"}[fmt]
    assert resp.headers["content-disposition"] == f'inline; filename="{name}"'
    served = tmp_path / name
    served.write_text(resp.text)
    venv = tmp_path / "venv"
    uv.venv(venv, exe)
    _uv(*install, str(served), "--python", str(venv / "bin" / "python"), "--quiet")
    recorded = {p.name: p.version for p in session.get_one(Environment, env.id).packages}
    assert uv.freeze(venv) == recorded == {"packaging": "24.2", "six": "1.17.0"}
    if fmt == "pylock":
        doc = tomllib.loads(resp.text)
        assert doc["tool"]["knowngood"]["run"] == run.id and doc["tool"]["knowngood"]["cutoff"] == "2025-01-01"
        locked = {h.removeprefix("sha256:") for p in lock.pins for h in p.hashes}
        files = [f for p in doc["packages"] for f in [*p.get("wheels", []), p.get("sdist", {})] if f]
        assert {f["hashes"]["sha256"] for f in files} == locked  # exactly the files uv locked, no others


# OpenAPI ---------------------------------------------------------------------------------------------------------


def test_openapi_documents_every_read_endpoint(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("/api/v1/chains", "/api/v1/lockfile", "/api/v1/matrix", "/api/v1/failures", "/api/v1/runs",
                 "/api/v1/runs/{run_id}", "/api/v1/environments/{env_id}", "/api/v1/environments/{env_id}/lockfile"):
        get = paths[path]["get"]
        assert get.get("description") or get.get("summary"), path
        assert "200" in get["responses"] and "422" in get["responses"], path
        assert get["responses"]["200"]["content"], path
    assert "text/plain" in paths["/api/v1/lockfile"]["get"]["responses"]["200"]["content"]
    fmt = next(p for p in paths["/api/v1/lockfile"]["get"]["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["requirements", "constraints", "pylock", "pyproject"]
    assert {"MatrixOut", "FailuresOut", "RunsOut", "EnvironmentOut"} <= set(doc["components"]["schemas"])



def test_constraints_pin_what_breaks_chains_when_it_moves() -> None:
    """ml-dtypes is nobody's top-level requirement, but the data shows chains break when the resolver moves it."""
    from api.lockfile import _top_level
    from store.models import Environment, Package

    env = Environment(requirements=["torch==2.9.1", "tensorflow-cpu==2.17.1", "onnx2tf", "tf-keras>=2.17,<2.18"],
                      packages=[Package(name=n, version=v, hashes=[]) for n, v in [
                          ("absl-py", "2.1.0"), ("ml-dtypes", "0.4.1"), ("numpy", "1.26.4"), ("onnx2tf", "1.26.2"),
                          ("tensorflow-cpu", "2.17.1"), ("tf-keras", "2.17.0"), ("torch", "2.9.1")]])
    assert [p.name for p in _top_level(env)] == ["ml-dtypes", "numpy", "onnx2tf", "tensorflow-cpu", "tf-keras", "torch"]
