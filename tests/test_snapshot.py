"""Snapshots: a round trip keeps every row, a second import changes nothing, and a bad document stores nothing.

Export writes format version 2 (locks as indices into shared blocks, packages only where the lock does not say
them); version 1 files, as older exports and remote runners write them, must store exactly the same rows.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.app import create_app
from knowngood import cli
from runner.results import StepStatus
from store import snapshot
from store.db import make_engine, make_sessionmaker
from store.locks import parse_lock
from store.models import Environment, Run, Step
from store.settings import Settings

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
    assert (data["format"], data["format_version"]) == ("knowngood-snapshot", snapshot.FORMAT_VERSION)
    assert "id" not in data["cases"][0] and "environment_id" not in data["cases"][0]  # natural keys only
    assert not any("lock_text" in e for e in data["environments"])
    # The smoke environment's packages are its lock's; the made-up ones' (no hashes) are not, so they are written.
    assert sorted("packages" in e for e in data["environments"] if "lock" in e) == [False, True, True]
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


def _locked(d: dict[str, Any]) -> dict[str, Any]:
    """The first environment with a lock (the conflict has none, and environments are ordered by random hashes)."""
    return next(e for e in d["environments"] if "lock" in e)


def _as_v1(d: dict[str, Any]) -> None:
    d.update(format_version=1)
    del d["lock_blocks"]


@pytest.mark.parametrize(
    ("corrupt", "where"),
    [
        (lambda d: d["cases"][5]["steps"][0].update(status="exploded"), "cases[5].steps[0].status"),
        (lambda d: d["cases"][7].update(run="00000000-0000-0000-0000-000000000000"), "cases[7].run"),
        (lambda d: d["environments"][1].pop("python"), "environments[1].python"),
        (lambda d: d["runs"][0].update(surprise=1), "runs[0].surprise"),
        (lambda d: d.update(format_version=9), "format_version: this knowngood reads versions 1, 2 and 3, got 9"),
        (lambda d: _locked(d)["lock"].__setitem__(4, 999),
         "environments[{i}].lock[4]: block 999 is not in lock_blocks ({blocks} blocks)"),
        (lambda d: _locked(d)["lock"].__setitem__(0, -1),
         "environments[{i}].lock[0]: block -1 is not in lock_blocks ({blocks} blocks)"),
        (lambda d: _locked(d).update(lock_text="torch==2.4.1\n"),
         "environments[{i}]: give lock or lock_text, not both"),
        (_as_v1, "environments[{i}].lock: needs format_version 2"),
    ],
)
def test_a_malformed_document_is_rejected_whole(db_url: str, recorded: dict, fresh_db: Callable, tmp_path: Path,
                                                corrupt: Callable, where: str, session: Session,
                                                db_counts: Callable) -> None:
    data = _document(session, tmp_path)
    where = where.format(i=data["environments"].index(_locked(data)), blocks=len(data["lock_blocks"]))
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
    assert len(doc.cases) > 4
    batches = 0
    insert_cases = snapshot._insert_cases

    def failing_batch(s: Session, cases: list[Any]) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:  # well into the cases, after runs, environments and two batches of cases were added
            raise RuntimeError("disk full")
        insert_cases(s, cases)

    monkeypatch.setattr(snapshot, "_BATCH", 2)
    monkeypatch.setattr(snapshot, "_insert_cases", failing_batch)
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


# --- format version 2 --------------------------------------------------------------------------------------

UV_LOCK = """\
# This file was autogenerated by uv via the following command:
#    uv pip compile --generate-hashes -
Markupsafe==3.0.2 \\
    --hash=sha256:0bff5e0ae4ef2e1ae4fdf2dfd5b76c75e5c2fa4132d05fc1b0dabcd20c7e28c4 \\
    --hash=sha256:1c99d261bd2d5f6b59325c92c73df481e05e57f19837bdca8413b9eac4bd8028
    # via jinja2
jinja2==3.1.4 \\
    --hash=sha256:4a3aee7acbbe7303aede8e9648d13b8bf88a429282aa6122a993f0ac800cb369
torch[opt-einsum]==2.4.1 ; python_version >= "3.9" \\
    --hash=sha256:362f82e23a4cd46341daabb76fba08f04cd646df9bfaf5da50af97cb60ca4971
"""


@pytest.mark.parametrize(
    ("text", "blocks"),
    [
        (UV_LOCK, 5),  # two comment lines, then one block per pin; "# via" stays with its pin
        (UV_LOCK.rstrip("\n"), 5),  # no trailing newline
        (UV_LOCK.replace("\n", "\r\n"), 5),
        ("# only a comment", 1),
        ("  --hash=sha256:00 \\\nnumpy==1.26.4\n\nwheel==0.44 # \x0c\r\n", 3),  # leading continuation, blank line
        ("", 0),
    ],
    ids=["uv", "no-newline", "crlf", "comment", "odd", "empty"],
)
def test_lock_blocks_rebuild_the_text_byte_for_byte(text: str, blocks: int) -> None:
    split = snapshot.split_lock(text)
    assert "".join(split) == text and len(split) == blocks
    assert all(b and not b[0].isspace() for b in split[1:])


def _v1(doc: snapshot.Snapshot) -> dict[str, Any]:
    """A document as version 1 wrote it: every environment with its lock_text and packages."""
    data = doc.model_dump(mode="json", exclude={"lock_blocks"})
    data["format_version"] = 1
    for env in data["environments"]:
        del env["lock"]
    return data


@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
def test_v1_file_and_its_v2_export_store_the_same_rows(db_url: str, recorded: dict, fresh_db: Callable,
                                                      tmp_path: Path, target: str, db_dump: Callable) -> None:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        v1 = _v1(snapshot.build(s))
    engine.dispose()
    v1_path, v2_path = tmp_path / "v1.json", tmp_path / "v2.json.gz"
    v1_path.write_text(json.dumps(v1))
    from_v1 = fresh_db(target)
    assert cli.main(["snapshot", "import", str(v1_path), "--db", from_v1]) == 0
    assert cli.main(["snapshot", "export", str(v2_path), "--db", from_v1]) == 0
    from_v2 = fresh_db(target)
    assert cli.main(["snapshot", "import", str(v2_path), "--db", from_v2]) == 0

    v2 = json.loads(gzip.decompress(v2_path.read_bytes()))
    assert v2["format_version"] == snapshot.FORMAT_VERSION and len(v2["lock_blocks"]) == len(set(v2["lock_blocks"]))
    assert v2_path.stat().st_size < len(gzip.compress(v1_path.read_bytes(), mtime=0))
    expected = db_dump(db_url)
    assert sum(len(e["packages"]) for e in expected["environments"]) > 100  # packages with hashes are compared
    assert db_dump(from_v1) == expected
    assert db_dump(from_v2) == expected


def _v2_environment(**kw: Any) -> dict[str, Any]:
    return {"hash": "e" * 64, "lock_hash": "f" * 64, "name": "py3.11-torch2.4.1", "python": "3.11",
            "requirements": ["torch==2.4.1"], "index_url": "https://pypi.org/simple", "status": "resolved",
            "resolved_at": "2026-11-01T00:00:00Z", **kw}


def test_v2_without_packages_gets_the_runners_packages(session: Session) -> None:
    blocks = snapshot.split_lock(UV_LOCK)
    doc = {"format": "knowngood-snapshot", "format_version": 2, "lock_blocks": blocks[::-1],
           "environments": [_v2_environment(lock=list(range(len(blocks)))[::-1])]}
    stored = snapshot.store(session, snapshot.parse(doc))
    assert stored.environments_added == 1
    env = session.scalars(select(Environment)).one()
    assert env.lock_text == UV_LOCK
    expected = [(p.name, p.version, list(p.hashes)) for p in parse_lock(UV_LOCK)]  # what runner.record stores
    assert [(p.name, p.version, p.hashes) for p in env.packages] == expected
    assert [name for name, _, _ in expected] == ["jinja2", "markupsafe", "torch"]


def test_v2_may_give_lock_text_and_packages_directly(session: Session) -> None:
    doc = {"format": "knowngood-snapshot", "format_version": 2, "environments": [
        _v2_environment(lock_text=UV_LOCK, packages=[{"name": "torch", "version": "2.4.1"}]),
        _v2_environment(hash="d" * 64, lock_text=UV_LOCK),
        _v2_environment(hash="c" * 64, lock_hash=None, status="conflict", lock=None),
    ]}
    parsed = snapshot.parse(doc)
    assert [[p.name for p in e.packages or ()] for e in parsed.environments] == [
        ["torch"], ["jinja2", "markupsafe", "torch"], []]
    # Packages that differ from the lock's are written out again, so nothing is lost.
    written = snapshot.encode(parsed)["environments"]
    assert [e.get("packages") for e in written] == [[{"name": "torch", "version": "2.4.1", "hashes": []}], None, None]
    assert [e.get("lock") for e in written] == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], None]
    again = snapshot.parse(snapshot.encode(parsed))  # written as the current version, read back the same
    assert again.format_version == snapshot.FORMAT_VERSION and again.environments == parsed.environments


def test_v1_without_packages_still_means_none() -> None:
    doc = {"format": "knowngood-snapshot", "format_version": 1,
           "environments": [_v2_environment(lock_text=UV_LOCK)]}
    assert snapshot.parse(doc).environments[0].packages == []


def test_post_runs_takes_v2_and_names_the_versions(db_url: str, recorded: dict, fresh_db: Callable,
                                                   session: Session, tmp_path: Path, db_dump: Callable) -> None:
    data = _document(session, tmp_path)
    other = fresh_db("sqlite")
    with TestClient(create_app(Settings(database_url=other, ingest_token="t"))) as client:
        auth = {"Authorization": "Bearer t"}
        wrong = client.post("/api/v1/runs", json={**data, "format_version": 9}, headers=auth)
        assert wrong.status_code == 422
        assert "this knowngood reads versions 1, 2 and 3, got 9" in wrong.json()["detail"][0]["msg"]
        resp = client.post("/api/v1/runs", json=data, headers=auth)
        assert resp.status_code == 201, resp.text
    assert db_dump(other) == db_dump(db_url)
