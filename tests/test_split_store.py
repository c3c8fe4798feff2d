"""Split chains in the store: answered as pairs, superseded results don't count, and snapshots carry them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api import queries
from api.app import create_app
from knowngood import cli
from store import snapshot
from store.models import Artifact, Case, Environment, Run
from store.settings import Settings


def _split_rows(session: Session, make_run: Callable[..., Run], make_environment: Callable[..., Environment],
                make_case: Callable[..., Case]) -> tuple[Environment, Environment, Environment]:
    """torch 2.14 and 2.15 export the same resnet graph; one runtime environment ran it once and passed."""
    run = make_run()
    e14, e15 = make_environment({"torch": "2.14.1", "onnx": "1.20.0"}), make_environment({"torch": "2.15.0",
                                                                                          "onnx": "1.20.0"})
    rt = make_environment({"onnxruntime": "1.23.0", "onnx": "1.19.0"})
    for env, kind in ((e14, "export"), (e15, "export"), (rt, "runtime")):
        env.kind = kind
    graph = Artifact(key="a" * 64, model="resnet", opset_emitted=17, ir_version=8)
    session.add(graph)
    session.commit()
    for env in (e14, e15):
        make_case(run, env, "resnet", "export").artifact_id = graph.id
    make_case(run, rt, "resnet", "onnxruntime").artifact_id = graph.id
    session.commit()
    return e14, e15, rt


def test_one_runtime_case_serves_every_export_of_the_same_graph(
    session: Session, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    e14, e15, rt = _split_rows(session, make_run, make_environment, make_case)
    query = queries.ChainQuery.parse("resnet", "onnxruntime")
    chains, total = queries.split_chain_page(session, query)
    assert total == 2 and [(c.research.environment_id, c.production.environment_id) for c in chains] == [
        (e15.id, rt.id), (e14.id, rt.id)]  # newest torch first
    assert "torch" not in chains[0].production.versions and chains[0].research.versions["torch"] == "2.15.0"
    # a runtime environment's case never makes it a joint chain on its own
    assert queries.known_good_chains(session, query) == []
    # require filters on either side's pins
    narrowed = queries.ChainQuery.parse("resnet", "onnxruntime", require=["torch<2.15"])
    assert [c.research.environment_id for c in queries.split_chain_page(session, narrowed)[0]] == [e14.id]


def test_a_newer_failure_of_the_same_graph_ends_the_split_chain(
    session: Session, make_run: Callable, make_environment: Callable, make_case: Callable,
) -> None:
    _, _, rt = _split_rows(session, make_run, make_environment, make_case)
    graph = session.query(Artifact).one()
    newer = make_case(make_run(), rt, "resnet", "onnxruntime", status="fail", signature="ParityExceeded(input=0)")
    newer.artifact_id, newer.model_hash = graph.id, "m2"  # re-measured after a corpus change
    session.commit()
    assert queries.split_chain_page(session, queries.ChainQuery.parse("resnet", "onnxruntime")) == ([], 0)


def test_a_snapshot_carries_split_chains_to_another_database(
    session: Session, make_run: Callable, make_environment: Callable, make_case: Callable,
    fresh_db: Callable[[str], str], tmp_path: Path,
) -> None:
    _split_rows(session, make_run, make_environment, make_case)
    doc = snapshot.build(session)
    assert doc.format_version == 3 and [a.key for a in doc.artifacts] == ["a" * 64]
    assert sorted(e.kind for e in doc.environments) == ["export", "export", "runtime"]
    path = tmp_path / "split.json"
    path.write_text(snapshot.dumps(doc))
    for kind in ("sqlite", "postgresql"):
        url = fresh_db(kind)
        assert cli.main(["snapshot", "import", str(path), "--db", url]) == 0
        assert cli.main(["snapshot", "import", str(path), "--db", url]) == 0  # twice changes nothing
        with TestClient(create_app(Settings(database_url=url))) as client:
            body = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime"}).json()
        assert body["split_total"] == 2 and body["chains"] == []
        assert {c["research"]["versions"]["torch"] for c in body["split_chains"]} == {"2.14.1", "2.15.0"}


def test_an_older_format_cannot_carry_split_rows() -> None:
    doc = {"format": "knowngood-snapshot", "format_version": 2, "runs": [], "environments": [], "cases": [],
           "artifacts": [{"key": "a" * 64, "model": "resnet"}]}
    try:
        snapshot.parse(json.loads(json.dumps(doc)))
    except snapshot.SnapshotError as exc:
        assert "format_version 3" in str(exc)
    else:
        raise AssertionError("a version-2 document with artifacts was accepted")
