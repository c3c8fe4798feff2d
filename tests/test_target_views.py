"""/matrix and /failures say which target and which kind of environment measured each row (issues 11, 12)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store.settings import Settings


@pytest.fixture
def client(db_url: str, targets_and_split: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        yield c


def _cells(body: dict[str, Any]) -> set[tuple[Any, ...]]:
    return {(c["x"], c["y"], c["target"], c["kind"], c["status"], c["passed"], c["failed"]) for c in body["cells"]}


def test_matrix_has_one_cell_per_target_and_kind(client: TestClient, targets_and_split: dict[str, Any]) -> None:
    body = client.get("/api/v1/matrix", params={"route": "onnx2tf", "models": "resnet"}).json()
    # The joint environment's three targets stay three verdicts; the runtime side is placed by each export side's
    # torch (the graph both exported is one artifact), never in a joint cell.
    assert _cells(body) == {
        ("2.5.1", "2.17.0", "saved_model", "joint", "pass", 1, 0),
        ("2.5.1", "2.17.0", "tflite", "joint", "fail", 0, 1),
        ("2.5.1", "2.17.0", "keras", "joint", "pass", 1, 0),
        ("2.6.0", "2.17.0", "saved_model", "runtime", "pass", 1, 0),
        ("2.6.0", "2.17.0", "tflite", "runtime", "fail", 0, 1),
        ("2.7.0", "2.17.0", "saved_model", "runtime", "pass", 1, 0),
        ("2.7.0", "2.17.0", "tflite", "runtime", "fail", 0, 1),
    }
    split = next(c for c in body["cells"] if c["kind"] == "runtime" and c["x"] == "2.6.0" and c["target"] == "tflite")
    [member] = split["environments"]
    assert member["id"] == targets_and_split["runtime"].id and member["kind"] == "runtime"
    assert member["export_environment"]["id"] == targets_and_split["export26"].id
    assert member["export_environment"]["versions"]["torch"] == "2.6.0"
    joint = next(c for c in body["cells"] if c["kind"] == "joint")
    assert [e["export_environment"] for e in joint["environments"]] == [None]


def test_a_runtime_case_counts_once_per_cell_whatever_exported_it(client: TestClient,
                                                                  targets_and_split: dict[str, Any]) -> None:
    # onnx2tf across: both export sides land in the runtime side's cell; its one case per target is counted once.
    body = client.get("/api/v1/matrix", params={"x": "onnx2tf", "route": "onnx2tf", "kind": "runtime"}).json()
    assert _cells(body) == {("1.26.3", "2.17.0", "saved_model", "runtime", "pass", 1, 0),
                            ("1.26.3", "2.17.0", "tflite", "runtime", "fail", 0, 1)}
    exporters = {e["export_environment"]["id"] for c in body["cells"] for e in c["environments"]}
    assert exporters == {targets_and_split["export26"].id, targets_and_split["export27"].id}


def test_matrix_filters_by_target_and_kind(client: TestClient) -> None:
    def cells(**params: str) -> set[tuple[Any, ...]]:
        body = client.get("/api/v1/matrix", params={"route": "onnx2tf", **params}).json()
        assert (body["target"], body["kind"]) == (params.get("target"), params.get("kind"))
        return {(c["x"], c["target"], c["kind"]) for c in body["cells"]}

    assert cells(target="tflite") == {("2.5.1", "tflite", "joint"), ("2.6.0", "tflite", "runtime"),
                                      ("2.7.0", "tflite", "runtime")}
    assert cells(kind="joint") == {("2.5.1", t, "joint") for t in ("saved_model", "tflite", "keras")}
    assert cells(kind="runtime", target="keras") == set()
    # The export side's own cases (route export) are an export-kind row, with no target.
    body = client.get("/api/v1/matrix", params={"kind": "export"}).json()
    assert _cells(body) == {("2.6.0", None, "", "export", "pass", 1, 0), ("2.7.0", None, "", "export", "pass", 1, 0)}


@pytest.mark.parametrize(("path", "param", "value"), [
    ("/api/v1/matrix", "target", "tflight"),
    ("/api/v1/failures", "target", "savedmodel"),
    ("/api/v1/matrix", "kind", "split"),
    ("/api/v1/failures", "kind", "hybrid"),
])
def test_unknown_target_or_kind_is_a_422_naming_the_field(client: TestClient, path: str, param: str,
                                                          value: str) -> None:
    resp = client.get(path, params={param: value})
    assert resp.status_code == 422
    [error] = resp.json()["detail"]
    assert error["loc"] == ["query", param] and repr(value) in error["msg"]
    assert ("saved_model, tflite, keras" if param == "target" else "joint, export, runtime") in error["msg"]


def test_failures_are_sliced_by_target_and_kind(client: TestClient, targets_and_split: dict[str, Any]) -> None:
    body = client.get("/api/v1/failures", params={"route": "onnx2tf"}).json()
    [row] = body["failures"]
    assert row["signature"] == targets_and_split["signature"] and row["count"] == 2
    assert row["targets"] == ["tflite"] and row["kinds"] == ["joint", "runtime"]
    # The runtime side pins no torch: its span is the export sides' torch, so the row spans 2.5.1 to 2.7.0.
    assert (row["first_version"], row["last_version"]) == ("2.5.1", "2.7.0")
    slices = {(s["target"], s["kind"]): s for s in row["slices"]}
    assert set(slices) == {("tflite", "joint"), ("tflite", "runtime")}
    assert (slices["tflite", "joint"]["first_version"], slices["tflite", "joint"]["last_version"]) == ("2.5.1",) * 2
    split = slices["tflite", "runtime"]
    assert (split["first_version"], split["last_version"], split["count"]) == ("2.6.0", "2.7.0", 1)
    example = split["example"]
    assert example["environment_id"] == targets_and_split["runtime"].id
    assert (example["target"], example["kind"]) == ("tflite", "runtime")
    assert "torch" not in example["versions"] and example["versions"]["onnx2tf"] == "1.26.3"
    assert [(x["id"], x["versions"]["torch"]) for x in example["exported_by"]] == [
        (targets_and_split["export26"].id, "2.6.0"), (targets_and_split["export27"].id, "2.7.0")]
    assert slices["tflite", "joint"]["example"]["exported_by"] == []


def test_failures_filter_by_target_and_kind(client: TestClient) -> None:
    def kinds(**params: str) -> list[list[tuple[str, str]]]:
        body = client.get("/api/v1/failures", params={"route": "onnx2tf", **params}).json()
        return [[(s["target"], s["kind"]) for s in f["slices"]] for f in body["failures"]]

    assert kinds(kind="runtime") == [[("tflite", "runtime")]]
    assert kinds(kind="joint", target="tflite") == [[("tflite", "joint")]]
    assert kinds(target="saved_model") == []  # saved_model passed everywhere
