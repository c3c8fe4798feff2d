"""The API's answers from a database of known content, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store.settings import Settings


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        yield c


@pytest.fixture
def recorded(make_run: Callable, make_environment: Callable, make_case: Callable) -> dict:
    run = make_run()
    old = make_environment({"torch": "2.0.1", "onnx": "1.14.0", "onnxruntime": "1.15.1", "tensorflow": "2.13.0",
                            "onnx2tf": "1.15.9"})
    new = make_environment({"torch": "2.4.1", "onnx": "1.16.2", "onnxruntime": "1.19.2",
                            "tensorflow-cpu": "2.17.0", "onnx2tf": "1.25.9"})
    broken = make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0",
                               "tensorflow-cpu": "2.18.0", "onnx2tf": "1.26.3"})
    for env in (old, new, broken):
        make_case(run, env, "resnet", "onnxruntime", max_abs_diff=2e-6)
    make_case(run, old, "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::grid_sampler)")
    make_case(run, new, "grid_sample", "onnxruntime", max_abs_diff=3e-6)
    make_case(run, broken, "grid_sample", "onnxruntime", status="fail", signature="ParityExceeded(input=1)")
    return {"run": run, "old": old, "new": new, "broken": broken}


def test_chains_require_every_model_to_pass(client: TestClient, recorded: dict) -> None:
    body = client.get("/api/v1/chains", params={"models": "resnet,grid_sample", "route": "onnxruntime"}).json()
    assert [c["name"] for c in body["chains"]] == [recorded["new"].name]
    chain = body["chains"][0]
    assert chain["versions"]["torch"] == "2.4.1"
    assert chain["run_id"] == recorded["run"].id
    assert {m["model"]: m["max_abs_diff"] for m in chain["models"]} == {"resnet": 2e-6, "grid_sample": 3e-6}


def test_chains_rank_newest_first_and_filter(client: TestClient, recorded: dict) -> None:
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime"}).json()
    assert [c["versions"]["torch"] for c in body["chains"]] == ["2.5.1", "2.4.1", "2.0.1"]
    # tensorflow and tensorflow-cpu are one framework to a user
    body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime",
                                                "require": ["tensorflow<2.18", "torch>=2.1"]}).json()
    assert [c["versions"]["torch"] for c in body["chains"]] == ["2.4.1"]


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        ({"models": "resnet", "route": "tflite"}, "route", "expected one of"),
        ({"models": "nosuchmodel", "route": "onnxruntime"}, "models", "nosuchmodel"),
        ({"models": "resnet", "route": "onnxruntime", "require": "torch>>2"}, "require", "PEP 508"),
        ({"models": "resnet", "route": "onnxruntime", "exporter": "jit"}, "exporter", "expected one of"),
    ],
)
def test_bad_parameters_get_a_specific_422(client: TestClient, recorded: dict, params: dict, param: str,
                                           fragment: str) -> None:
    resp = client.get("/api/v1/chains", params=params)
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["query", param]
    assert fragment in detail["msg"]


def test_lockfile_is_the_stored_lock_with_a_stamp(client: TestClient, recorded: dict) -> None:
    resp = client.get("/api/v1/lockfile", params={"models": "resnet,grid_sample", "route": "onnxruntime"})
    assert resp.status_code == 200
    text = resp.text
    assert text.startswith("# knowngood lockfile for " + recorded["new"].name)
    assert recorded["run"].id in text
    assert text.endswith(recorded["new"].lock_text)
    constraints = client.get("/api/v1/lockfile", params={"models": "resnet", "route": "onnxruntime",
                                                         "format": "constraints"}).text
    assert "torch==2.5.1" in constraints and "protobuf==4.25.5" in constraints


def test_lockfile_404_when_nothing_passes(client: TestClient, recorded: dict) -> None:
    resp = client.get("/api/v1/lockfile", params={"models": "grid_sample", "route": "onnxruntime",
                                                  "require": "torch<2.1"})
    assert resp.status_code == 404


def test_first_page_is_the_dashboard(client: TestClient, recorded: dict) -> None:
    """The page itself; tests/test_dashboard.py drives it in a real browser."""
    html = client.get("/").text
    assert '<table id="heatmap">' in html and '"grid_sample"' in html  # the controls' values are embedded
    assert "://" not in html.replace("http://www.w3.org", "")  # nothing fetched from outside the app
