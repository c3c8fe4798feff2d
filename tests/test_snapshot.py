"""Snapshots: a round trip keeps every row, a second import changes nothing, and a bad document stores nothing."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from knowngood import cli, snapshot
from knowngood.db import make_engine, make_sessionmaker
from knowngood.models import Environment, Run, Step
from runner.results import StepStatus

SMOKE = Path(__file__).parent / "fixtures" / "smoke-snapshot.json.gz"  # a real smoke run, exported


@pytest.fixture
def recorded(session: Session, make_run: Callable, make_environment: Callable, make_case: Callable) -> dict:
    """A real smoke run plus made-up runs: a finished and a running one, a conflict, steps with details."""
    snapshot.import_(session, SMOKE)
    run = make_run(status="finished", finished_at=dt.datetime.now(dt.UTC))
    old = make_environment({"torch": "2.0.1", "onnx": "1.14.0", "onnxruntime": "1.15.1", "tensorflow": "2.13.0",
                            "onnx2tf": "1.15.9"})
    new = make_environment({"torch": "2.4.1", "onnx": "1.16.2", "onnxruntime": "1.19.2",
                            "tensorflow-cpu": "2.17.0", "onnx2tf": "1.25.9"})
    make_case(run, old, "resnet", "onnxruntime", max_abs_diff=2e-6)
    make_case(run, new, "resnet", "onnxruntime", max_abs_diff=1.2345678901234567e-7)
    make_case(run, old, "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::grid_sampler)")
    case = make_case(run, new, "grid_sample", "onnxruntime", max_abs_diff=3e-6)
    case.steps.append(Step(ordinal=1, name="parity", status="ok", seconds=0.25, peak_rss=2**33,
                           details={"inputs": [{"max_abs_diff": 3e-6, "branch": "négatif"}], "n": 2}))
    conflict = Environment(hash="c" * 64, name="py3.11-torch9-onnx0", python="3.11", requirements=["torch==9"],
                           excludes=[], index_url="https://pypi.org/simple", cutoff=None, status="conflict",
                           error="no solution", signature="ResolutionConflict(torch)", memory={})
    session.add(conflict)
    running = make_run(spec_name="other")
    make_case(running, new, "transformer", "onnxruntime", status="crash", signature="WorkerCrashed(SIGSEGV)")
    session.commit()
    return {"run": run, "running": running}


def test_snapshot_statuses_are_the_runners() -> None:
    assert set(typing.get_args(snapshot.StepStatus)) == {str(s) for s in StepStatus}


@pytest.mark.parametrize("name", ["snap.json", "snap.json.gz"])
@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
def test_round_trip_keeps_every_row(db_url: str, recorded: dict, fresh_db: Callable, tmp_path: Path,
                                    name: str, target: str, db_counts: Callable, db_dump: Callable) -> None:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        written = snapshot.export(s, tmp_path / name)
    engine.dispose()
    raw = (tmp_path / name).read_bytes()
    assert raw[:2] == b"\x1f\x8b" if name.endswith(".gz") else raw.startswith(b"{")
    data = json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
    assert (data["format"], data["format_version"]) == ("knowngood-snapshot", 1)
    assert "id" not in data["cases"][0] and "environment_id" not in data["cases"][0]  # natural keys only
    assert len(written.runs) == 3 and len(written.environments) == 4 and len(written.cases) == 13

    other = fresh_db(target)
    engine = make_engine(other)
    with make_sessionmaker(engine)() as s:
        stored = snapshot.import_(s, tmp_path / name)
    engine.dispose()
    assert (stored.runs_added, stored.environments_added, stored.cases_added) == (3, 4, 13)
    assert db_counts(other) == db_counts(db_url)
    assert db_dump(other) == db_dump(db_url)


def test_importing_twice_changes_nothing(db_url: str, recorded: dict, fresh_db: Callable, tmp_path: Path,
                                         db_dump: Callable) -> None:
    path = tmp_path / "snap.json.gz"
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        snapshot.export(s, path)
        again = snapshot.import_(s, path)  # into the database it came from
    engine.dispose()
    assert not again.changed and again.cases_existing == 13
    other = fresh_db("sqlite" if db_url.startswith("postgresql") else "postgresql")
    engine = make_engine(other)
    with make_sessionmaker(engine)() as s:
        first = snapshot.import_(s, path)
    after_first = db_dump(other)
    with make_sessionmaker(engine)() as s:
        second = snapshot.import_(s, path)
    engine.dispose()
    assert first.changed and not second.changed
    assert (second.cases_added, second.environments_added, second.runs_added) == (0, 0, 0)
    assert db_dump(other) == after_first == db_dump(db_url)


def test_a_finished_run_completes_the_running_one(session: Session, recorded: dict, tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    snapshot.export(session, path, run_ids=[recorded["running"].id])
    data = json.loads(path.read_text())
    assert [r["id"] for r in data["runs"]] == [recorded["running"].id]
    assert [c["model"] for c in data["cases"]] == ["transformer"]
    data["runs"][0].update(status="finished", finished_at="2030-01-01T00:00:00Z", counts={"cases": 1})
    first = snapshot.store(session, snapshot.parse(data))
    second = snapshot.store(session, snapshot.parse(data))
    assert (first.runs_finished, second.runs_finished, first.cases_added) == (1, 0, 0)
    session.expire_all()
    assert session.get(Run, recorded["running"].id).status == "finished"


@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
def test_same_chains_after_import(db_url: str, recorded: dict, fresh_db: Callable, tmp_path: Path,
                                  target: str, api_answers: Callable) -> None:
    path = tmp_path / "snap.json.gz"
    assert cli.main(["snapshot", "export", str(path), "--db", db_url]) == 0
    other = fresh_db(target)
    assert cli.main(["snapshot", "import", str(path), "--db", other]) == 0
    expected = api_answers(db_url)
    assert expected[0]["chains"] and expected[3]["chains"]  # the queries do find chains
    assert expected[1] == 200 and "torch==" in expected[2]
    assert api_answers(other) == expected


def _document(session: Session, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "doc.json"
    snapshot.export(session, path)
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("corrupt", "where"),
    [
        (lambda d: d["cases"][5]["steps"][0].update(status="exploded"), "cases[5].steps[0].status"),
        (lambda d: d["cases"][7].update(run="00000000-0000-0000-0000-000000000000"), "cases[7].run"),
        (lambda d: d["environments"][1].pop("python"), "environments[1].python"),
        (lambda d: d["runs"][0].update(surprise=1), "runs[0].surprise"),
        (lambda d: d.update(format_version=2), "format_version"),
    ],
)
def test_a_malformed_document_is_rejected_whole(db_url: str, recorded: dict, fresh_db: Callable, tmp_path: Path,
                                                corrupt: Callable, where: str, session: Session,
                                                db_counts: Callable) -> None:
    data = _document(session, tmp_path)
    corrupt(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    empty = fresh_db("sqlite" if db_url.startswith("sqlite") else "postgresql")
    engine = make_engine(empty)
    with make_sessionmaker(engine)() as s, pytest.raises(snapshot.SnapshotError) as info:
        snapshot.import_(s, bad)
    engine.dispose()
    assert f"{bad}: {where}" in str(info.value)
    assert set(db_counts(empty).values()) == {0}


def test_a_failure_while_storing_stores_nothing(db_url: str, recorded: dict, fresh_db: Callable, tmp_path: Path,
                                                session: Session, monkeypatch: pytest.MonkeyPatch,
                                                db_counts: Callable) -> None:
    doc = snapshot.parse(_document(session, tmp_path))
    built = 0

    def failing_step(**kw: Any) -> Step:
        nonlocal built
        built += 1
        if built == 20:  # well into the cases, after runs, environments and earlier cases were added
            raise RuntimeError("disk full")
        return Step(**kw)

    monkeypatch.setattr(snapshot, "Step", failing_step)
    empty = fresh_db("sqlite" if db_url.startswith("sqlite") else "postgresql")
    engine = make_engine(empty)
    with make_sessionmaker(engine)() as s, pytest.raises(RuntimeError, match="disk full"):
        snapshot.store(s, doc)
    engine.dispose()
    assert set(db_counts(empty).values()) == {0}


def test_cli_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    assert cli.main(["snapshot", "import", str(bad), "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "not a JSON document" in capsys.readouterr().err
