"""`knowngood check` and POST /check on the shipped snapshot: each verdict, offline and server answers equal,
exit codes, /chains explaining itself, the GitHub Action's and pre-commit hook's commands run for real; and the
feed and badge, which read the same snapshot."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select, update

from api import queries, verdicts
from api.app import create_app
from knowngood import check, cli
from matrix.routes import KEY_PACKAGES, ROUTE_PACKAGES, ROUTES
from store.db import make_engine, make_sessionmaker
from store.models import Case, Environment, Package
from store.pins import Pins, read
from store.settings import Settings
from tests.pgcluster import database, free_port

ROOT = Path(__file__).parents[1]
SHIPPED = ROOT / "data" / "snapshot.json.gz"
LOCKFILES = Path(__file__).parent / "fixtures" / "lockfiles"
GOOD, BAD = LOCKFILES / "good" / "requirements.txt", LOCKFILES / "bad" / "requirements.txt"
UNTESTED = LOCKFILES / "untested"


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One XDG cache for the module's offline checks, so the snapshot is imported into it once."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="module")
def shipped_sqlite(cache_home: Path) -> str:
    """The offline database exactly as `knowngood check` makes it: the snapshot imported into the XDG cache."""
    return check.snapshot_database(SHIPPED, cache_home / "knowngood" / "check")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shipped(request: pytest.FixtureRequest) -> Iterator[str]:
    """The shipped snapshot in each kind of database (imported once per module and kind)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("shipped_sqlite")
        return
    server, template = request.getfixturevalue("postgres_server"), request.getfixturevalue("shipped_pg_template")
    with database(server, template=template) as url:
        yield url


def verdict(url: str, path: Path, models: list[str], routes: list[str] | None = None,
            exporter: str | None = None) -> Any:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        out = verdicts.check(session, read(path), models, routes, exporter)
    engine.dispose()
    return out


# -- each verdict, on both databases ----------------------------------------------------------------------------

def test_known_good_cites_the_environment_and_run(shipped: str) -> None:
    out = verdict(shipped, GOOD, ["resnet", "transformer_padding_mask"], ["onnxruntime"])
    assert out.verdict == "known-good"
    for r in out.results:
        assert (r.verdict, r.environment) == ("known-good", "py3.11-torch2.10.0-tfcpu2.19.1-onnx-ort-onnx2tf[>=1.0]")
        assert r.run_id and r.matched["passed"] == 1
        assert r.fix is not None and r.fix.changes == [] and r.fix.summary == "no change"


def test_known_bad_gives_step_signature_evidence_span_and_the_smallest_fix(shipped: str) -> None:
    out = verdict(shipped, BAD, ["resnet", "control_flow_script"], ["onnx2tf"], "torchscript")
    good, bad = out.results
    assert (out.verdict, good.verdict, bad.verdict) == ("known-bad", "known-good", "known-bad")
    assert bad.environment == "py3.11-torch2.9.1-tfcpu2.18.1-onnx-ort-onnx2tf[>=1.0]"
    assert (bad.step, bad.signature) == ("convert", "KeyError(convert: '<path>')")
    assert bad.seen is not None and bad.seen.versions["onnx2tf"] == ["1.28.2", "1.28.8"]
    # control_flow_script converts only with the torch 2.0.1 stack: every key pin moves, onnx2tf among them
    assert bad.fix is not None and bad.fix.python == "3.11"
    assert {d.package: (d.yours, d.measured) for d in bad.fix.changes}["onnx2tf"] == ("1.28.8", "1.15.9")
    assert out.fixes["onnx2tf"] == bad.fix  # the chain for both models is the one for the harder model


def test_untested_gives_the_nearest_environments_and_the_pins_that_differ(shipped: str) -> None:
    out = verdict(shipped, UNTESTED / "uv.lock", ["resnet"], ["onnx2tf"])
    (r,) = out.results
    assert r.verdict == "untested" and r.environment_id is None
    assert [n.environment for n in r.nearest][:1] == ["py3.11-torch2.9.1-tfcpu2.18.1-onnx-ort-onnx2tf[>=1.0]"]
    assert all([(d.package, d.yours) for d in n.differs] == [("torch", "2.10.0")] for n in r.nearest)
    assert r.fix is not None and r.fix.summary == "torch 2.10.0 → 2.9.1"


def test_every_format_of_one_project_gets_the_same_verdict(shipped_sqlite: str) -> None:
    answers = [verdict(shipped_sqlite, UNTESTED / name, ["resnet"], ["onnx2tf"]).model_dump(exclude={"file", "format"})
               for name in ("requirements.txt", "uv.lock", "pylock.toml", "pyproject.toml")]
    assert all(a == answers[0] for a in answers)


def test_specifiers_match_any_measured_version_they_allow(shipped_sqlite: str) -> None:
    out = verdict(shipped_sqlite, LOCKFILES / "pyproject-uv" / "pyproject.toml", ["resnet"], ["onnx2tf"])
    assert out.verdict == "known-good" and out.results[0].environment is not None
    assert "torch2.0.1" in out.results[0].environment


def test_a_python_no_environment_ran_moves_python(shipped_sqlite: str, tmp_path: Path) -> None:
    project = tmp_path / "pyproject.toml"
    project.write_text('[project]\nname = "x"\nversion = "0"\nrequires-python = "==3.12.*"\ndependencies = [\n'
                       '  "torch==2.0.1", "onnx==1.14.0", "onnxruntime==1.15.1", "tensorflow==2.13.0",\n'
                       '  "onnx2tf==1.15.9", "numpy==1.24.3", "protobuf==4.25.8",\n]\n')
    (r,) = verdict(shipped_sqlite, project, ["resnet"], ["onnx2tf"]).results
    assert r.verdict == "untested" and r.fix is not None
    assert r.fix.summary in ("python 3.12 → 3.11", "python 3.12 → 3.10")


# -- the command: formats, exit codes, offline cache, no network ------------------------------------------------

def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["check", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("path", "models", "route", "fail_on", "code"), [
    (GOOD, "resnet", "onnxruntime", "untested", 0),
    (BAD, "resnet,control_flow_script", "onnx2tf", "untested", 1),
    (BAD, "resnet,control_flow_script", "onnx2tf", "never", 0),
    (UNTESTED / "requirements.txt", "resnet", "onnx2tf", "untested", 2),
    (UNTESTED / "requirements.txt", "resnet", "onnx2tf", "bad", 0),
])
def test_exit_codes(shipped_sqlite: str, capsys: pytest.CaptureFixture[str], path: Path, models: str, route: str,
                    fail_on: str, code: int) -> None:
    got, out, _ = run_cli(capsys, str(path), "--models", models, "--route", route, "--fail-on", fail_on,
                          "--db", shipped_sqlite)
    assert got == code, out


@pytest.mark.parametrize(("args", "message"), [
    ([str(GOOD), "--models", "nosuchmodel"], "models: no results recorded for ['nosuchmodel']"),
    ([str(GOOD), "--models", "resnet", "--route", "teleport"], "route: expected one of onnxruntime"),
    ([str(GOOD), "--models", "resnet", "--exporter", "jit"], "exporter: expected one of torchscript, dynamo"),
    ([str(LOCKFILES / "poetry.lock"), "--models", "resnet"], "poetry.lock:1: expected a requirements"),
])
def test_usage_errors_exit_3_and_say_what_was_expected(shipped_sqlite: str, capsys: pytest.CaptureFixture[str],
                                                       args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *args, "--db", shipped_sqlite)
    assert code == 3 and message in err, err


@pytest.mark.parametrize(("args", "message"), [
    ([str(GOOD)], "the following arguments are required: --models"),
    ([str(GOOD), "--models", "resnet", "--fail-on", "sometimes"], "argument --fail-on: invalid choice"),
])
def test_option_errors_exit_3_not_argparse_2(capsys: pytest.CaptureFixture[str], args: list[str],
                                             message: str) -> None:
    # argparse's own exit code, 2, would read as "untested".
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", *args])
    assert exited.value.code == 3 and message in capsys.readouterr().err


def test_formats(shipped_sqlite: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = (str(BAD), "--models", "resnet,control_flow_script", "--route", "onnx2tf", "--db", shipped_sqlite)
    _, table, _ = run_cli(capsys, *args)
    assert "known-bad" in table and "KeyError(convert: '<path>')" in table and "onnx2tf 1.28.8 → 1.15.9" in table
    _, md, _ = run_cli(capsys, *args, "--format", "markdown")
    assert md.startswith("### ❌ `") and "| control_flow_script | onnx2tf | ❌ known-bad |" in md
    _, doc, _ = run_cli(capsys, *args, "--format", "json")
    assert json.loads(doc)["verdict"] == "known-bad"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: offline means offline (loopback is allowed for a local server)."""
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def test_offline_reads_the_snapshot_through_one_cached_database(cache_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 no_network: None) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    args = (str(GOOD), "--models", "resnet", "--route", "onnxruntime", "--format", "json")
    first = run_cli(capsys, *args)
    cached = list((cache_home / "knowngood" / "check").glob("snapshot-*.db"))
    assert first[0] == 0 and len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    started = time.monotonic()
    assert run_cli(capsys, *args) == first
    assert cached[0].stat().st_mtime_ns == stamp and time.monotonic() - started < 5  # read, not imported again
    assert not list((cache_home / "knowngood" / "check").glob("*.partial"))


# -- the server gives the same answers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(shipped_sqlite: str) -> Iterator[str]:
    """A real uvicorn on loopback over the shipped snapshot."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(Settings(database_url=shipped_sqlite)), host="127.0.0.1",
                                       port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.mark.parametrize(("path", "models", "route"), [
    (GOOD, "resnet,transformer_padding_mask", ""),
    (BAD, "resnet,control_flow_script", "onnx2tf"),
    (UNTESTED / "uv.lock", "resnet", "onnx2tf"),
    (UNTESTED / "pylock.toml", "grid_sample", ""),
    (LOCKFILES / "pyproject-uv" / "pyproject.toml", "resnet", "onnx2tf"),
])
def test_offline_and_server_answers_are_equal(server: str, cache_home: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], no_network: None, path: Path,
                                              models: str, route: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))  # offline: the shipped snapshot through the cache
    args = [str(path), "--models", models, "--format", "json", *(["--route", route] if route else [])]
    offline = run_cli(capsys, *args)
    online = run_cli(capsys, *args, "--server", server)
    assert offline == online
    assert json.loads(offline[1])["results"]


def test_route_takes_json_and_multipart_alike(shipped_sqlite: str) -> None:
    text = BAD.read_text()
    with TestClient(create_app(Settings(database_url=shipped_sqlite))) as client:
        as_json = client.post("/api/v1/check", json={"filename": "requirements.txt", "text": text,
                                                     "models": "resnet,control_flow_script", "routes": ["onnx2tf"]})
        as_form = client.post("/api/v1/check", files={"file": ("requirements.txt", text.encode())},
                              data={"models": "resnet,control_flow_script", "route": "onnx2tf"})
        assert as_json.status_code == as_form.status_code == 200
        assert as_json.json() == as_form.json() and as_json.json()["verdict"] == "known-bad"
        bad = client.post("/api/v1/check", json={"filename": "uv.lock", "text": "version = 1\n[[package]\n",
                                                 "models": "resnet"})
        assert bad.status_code == 422 and "uv.lock:2: expected valid TOML" in bad.text
        assert client.post("/api/v1/check", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_a_check_the_index_holds_is_answered_without_a_statement(shipped: str) -> None:
    """POST /check asked again (the index warm, the data version read less than `recheck` ago) reads nothing from
    the store: it is answered on the event loop, with the same answer as the first, which read its routes. Asked
    after the version moved, it reads them again, on SQLite and PostgreSQL alike."""
    body = {"filename": "requirements.txt", "text": BAD.read_text(), "models": "resnet,control_flow_script"}
    with TestClient(create_app(Settings(database_url=shipped, response_cache_recheck=60))) as client:
        statements: list[str] = []
        event.listen(client.app.state.engine, "before_cursor_execute",  # type: ignore[attr-defined]
                     lambda _c, _cur, statement, *_: statements.append(statement))
        first = client.post("/api/v1/check", json=body)
        assert first.status_code == 200 and first.json()["verdict"] == "known-bad" and statements
        statements.clear()
        again = client.post("/api/v1/check", json=body)
        assert again.json() == first.json() and statements == []
        client.app.state.response_cache.clear()  # type: ignore[attr-defined]  # as an ingest does: read again
        assert client.post("/api/v1/check", json=body).json() == first.json()
        assert any("data_change" in statement for statement in statements)


def test_answers_that_keep_coming_read_the_data_version_ahead_and_none_waits_for_it(shipped_sqlite: str) -> None:
    """Past half of the `recheck` window, an answer from what the process holds has the version read again in the
    background; the next window then begins before the first ends, so an answer past the first window (and within
    the next) finds a version held and reads nothing it waits for."""
    recheck = 2.0
    body = {"filename": "requirements.txt", "text": GOOD.read_text(), "models": "resnet", "routes": ["onnxruntime"]}
    with TestClient(create_app(Settings(database_url=shipped_sqlite, response_cache_recheck=recheck))) as client:
        reads: list[float] = []
        event.listen(client.app.state.engine, "before_cursor_execute",  # type: ignore[attr-defined]
                     lambda _c, _cur, statement, *_: reads.append(time.monotonic())
                     if "FROM data_change" in statement else None)
        first = client.post("/api/v1/check", json=body)
        assert first.json()["verdict"] == "known-good" and len(reads) == 1
        time.sleep(recheck * 0.55)
        assert client.post("/api/v1/check", json=body).json() == first.json()
        deadline = time.monotonic() + 10
        while len(reads) < 2 and time.monotonic() < deadline:  # the read ahead, in the background
            time.sleep(0.01)
        assert len(reads) == 2 and reads[1] - reads[0] < recheck
        time.sleep(max(0.0, reads[0] + recheck * 1.1 - time.monotonic()))  # past the first window, not the next
        assert client.app.state.env_facts.version.held() is not None  # type: ignore[attr-defined]
        statements: list[str] = []
        event.listen(client.app.state.engine, "before_cursor_execute",  # type: ignore[attr-defined]
                     lambda _c, _cur, statement, *_: statements.append(statement))
        assert client.post("/api/v1/check", json=body).json() == first.json()
        # Nothing but, past half of the new window, the next read ahead in the background (it may or may not be)
        assert all("FROM data_change" in statement for statement in statements) and len(statements) <= 1


# -- /chains explains an empty answer ---------------------------------------------------------------------------

def test_chains_say_what_was_measured_and_the_closest_failures(shipped: str) -> None:
    with TestClient(create_app(Settings(database_url=shipped))) as client:
        body = client.get("/api/v1/chains", params={"models": "transformer_padding_mask", "route": "onnx2tf"}).json()
    assert body["chains"] == [] and body["total"] == 0
    counts = body["environments"]
    assert counts["measured"] > 0 and counts["resolved_only"] > 0 and counts["unresolvable"] > 0
    miss = body["near_misses"][0]
    assert miss["passed"] == [] and miss["failed"][0]["step"] and miss["failed"][0]["signature"]


def test_a_split_export_that_failed_is_the_near_miss_where_nothing_else_meets_the_pins(shipped: str) -> None:
    """torch 2.0 cannot export the transformer (aten::unflatten): in split mode no runtime case follows, so no pair
    exists. Asked for torch 2.0, the closest miss is that export, not a miss at another torch."""
    with TestClient(create_app(Settings(database_url=shipped))) as client:
        body = client.get("/api/v1/chains", params={"models": "transformer", "route": "onnxruntime",
                                                    "require": "torch==2.0.*"}).json()
        resnet = client.get("/api/v1/chains", params={"models": "resnet", "route": "onnxruntime",
                                                      "require": "torch==2.0.*"}).json()
    assert body["total"] == 0 and body["near_misses"]
    for miss in body["near_misses"]:
        assert miss["versions"]["torch"].startswith("2.0.")
        (failed,) = miss["failed"]  # its newest failed export: opset 17 (unflatten) or 20 (too new for torch 2.0)
        assert failed["model"] == "transformer" and failed["step"] == "export"
        assert failed["signature"] in ("UnsupportedOperator(aten::unflatten)",
                                       "ValueError(export: Unsupported ONNX opset version: <n>)")
    # misses that ran the route and meet the pins stay the answer: no export environment stands in for them
    assert all("→" in m["name"] or "export" not in m["name"] for m in resnet["near_misses"])


def test_chains_counts_read_with_the_outcomes_are_the_environments_counted_one_by_one(shipped: str) -> None:
    """chains_view reads the environments beside the outcome rows, and the facts cache weighs each environment's
    requirements once per route: the counts agree with weighing every environment row on its own, for every route,
    with and without a python, through one cache shared by all the questions."""
    engine = make_engine(shipped)
    shared = queries.FactsCache()
    with make_sessionmaker(engine)() as session:
        envs = session.execute(select(Environment.id, Environment.python, Environment.requirements,
                                      Environment.lock_hash, Environment.signature)).all()
        for route in ROUTES:
            for python in (None, "3.11"):
                query = queries.ChainQuery.parse("resnet", route, python=python)
                view = verdicts.chains_view(session, query, shared)
                measured, every = view.envs, view.environments
                ran = {i for m in measured.values() if python in (None, m.python)  # the production side's python
                       for i in (m.env_id, m.research_id) if i is not None}
                asked = [e for e in envs if (python is None or e.python == python) and e.id not in ran
                         and queries.requests_route(tuple(e.requirements), route)]
                expected = (len(ran), sum(e.lock_hash is not None for e in asked),
                            sum(e.lock_hash is None and e.signature is not None for e in asked))
                _, counts = verdicts.explain_chains(session, query, shared)
                assert (counts.measured, counts.resolved_only, counts.unresolvable) == expected, (route, python)
                assert sorted(e for e, _, _ in every) == sorted(e.id for e in envs if python in (None, e.python))
    engine.dispose()


def test_a_routes_versions_are_the_key_pins_and_its_own_packages_read_once(shipped: str) -> None:
    """measured_routes() takes each environment's versions on a route from the facts cache: the key packages plus the
    route's own converter (onnx2tf, onnx-tf, nobuco, litert-torch), exactly as the environment's package rows say,
    for joint environments and split pairs alike; asked again, through the same cache, it reads no package row."""
    engine = make_engine(shipped)
    shared = queries.FactsCache()
    packages: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: packages.append(statement) if "FROM package" in statement else None)
    with make_sessionmaker(engine)() as session:
        pinned: dict[int, dict[str, str]] = defaultdict(dict)
        for env_id, name, version in session.execute(select(Package.environment_id, Package.name, Package.version)):
            pinned[env_id][name] = version
        first = verdicts.measured_routes(session, ["resnet"], ROUTES, None, shared)
        own_routes = [r for r in ROUTES if any(n not in KEY_PACKAGES for n in ROUTE_PACKAGES[r])]
        assert own_routes and all(first[r] for r in own_routes)
        for route in ROUTES:
            for m in first[route].values():
                sides = [m.env_id] if m.research_id is None else [m.env_id, m.research_id]  # research over production
                expected = {n: v for e in sides for n, v in pinned[e].items() if n in KEY_PACKAGES}
                expected |= {n: v for n, v in pinned[m.env_id].items()
                             if n in ROUTE_PACKAGES[route] and n not in KEY_PACKAGES}
                assert m.versions == expected, (route, m.name)
        read = len(packages)
        again = verdicts.measured_routes(session, ["resnet"], ROUTES, None, shared)
        assert len(packages) == read  # every environment's versions were held: no package row read again
        assert {r: {k: m.versions for k, m in envs.items()} for r, envs in again.items()} == \
            {r: {k: m.versions for k, m in envs.items()} for r, envs in first.items()}
    engine.dispose()


def test_one_cache_answers_from_what_is_stored_now(shipped_sqlite: str, tmp_path: Path) -> None:
    """A facts cache held across answers (the app's) reads a route's outcomes once per data version: asked again
    it reads no outcome row, and once anything is written (a failure re-signed, as `db resignature` does) its next
    answer is the store's new one, down to the details of the case it cites."""
    copy = tmp_path / "store.db"
    shutil.copy(shipped_sqlite.removeprefix("sqlite:///"), copy)
    engine = make_engine(f"sqlite:///{copy}")
    reads: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: reads.append(statement) if "FROM outcome" in statement else None)
    shared = queries.FactsCache()

    def bad() -> Any:
        with make_sessionmaker(engine)() as session:
            return verdicts.check(session, read(BAD), ["control_flow_script"], ["onnx2tf"], "torchscript",
                                  shared).results[0]

    first = bad()
    assert first.verdict == "known-bad" and first.signature == "KeyError(convert: '<path>')"
    read_once = len(reads)
    assert read_once and bad() == first and len(reads) == read_once  # same version: no outcome row read again
    with engine.begin() as conn:
        conn.execute(update(Case).where(Case.signature == first.signature).values(signature="KeyError(renamed)"))
    again = bad()
    assert len(reads) > read_once
    assert again.signature == "KeyError(renamed)" and again.seen is not None and again.seen.environments >= 1
    assert again.model_copy(update={"signature": first.signature, "seen": first.seen}) == first
    engine.dispose()


def _evidence_reads(engine: Engine) -> list[str]:
    """The statements `engine` runs from now on that read a chains page's evidence (cases joined with environments)."""
    reads: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: reads.append(statement)
                 if "JOIN environment" in statement and "max_abs_diff" in statement else None)
    return reads


def test_a_chains_page_reads_its_evidence_once_per_data_version(shipped_sqlite: str, tmp_path: Path) -> None:
    """The evidence of a chains page (its passing cases and environments) is read once per data version by the
    answers that share a facts cache (the app's), with the route's slice; after a write the next page cites the
    store's new figures."""
    copy = tmp_path / "store.db"
    shutil.copy(shipped_sqlite.removeprefix("sqlite:///"), copy)
    engine = make_engine(f"sqlite:///{copy}")
    reads = _evidence_reads(engine)
    shared = queries.FactsCache()
    query = queries.ChainQuery.parse("resnet", "onnxruntime", limit=5)

    def page() -> tuple[list[Any], int]:
        with make_sessionmaker(engine)() as session:
            view = verdicts.chains_view(session, query, shared)
            return queries.known_good_chain_page(session, query, shared, view.complete(), view.version)

    first, total = page()
    assert len(first) == 5 and total > 5 and len(reads) == 1
    assert page() == (first, total) and len(reads) == 1  # same version: the page's evidence is not read again
    newest = first[0]
    with engine.begin() as conn:
        conn.execute(update(Case).where(Case.environment_id == newest.environment_id, Case.model == "resnet",
                                        Case.route == "onnxruntime", Case.status == "pass").values(max_abs_diff=0.25))
    again, _ = page()
    assert len(reads) == 2 and again[0].environment_id == newest.environment_id
    assert again[0].models[0].max_abs_diff == 0.25 != newest.models[0].max_abs_diff
    engine.dispose()


@pytest.mark.parametrize(("route", "narrowed"), [
    ("onnxruntime", {"exporter": "torchscript"}), ("onnxruntime", {"exporter": "dynamo"}),
    ("onnx2tf", {"exporter": "torchscript"}), ("nobuco", {"target": "tflite"}), ("litert-torch", {"target": "tflite"}),
    ("onnx2tf", {"target": "keras", "exporter": "torchscript"}),
])
def test_a_narrowed_chains_page_cites_the_evidence_its_route_holds(shipped_sqlite: str, route: str,
                                                                    narrowed: dict[str, str]) -> None:
    """A page narrowed by an exporter or a target cites the evidence its route's own slice read, filtered by them:
    no read of its own, and the page the store gives."""
    engine = make_engine(shipped_sqlite)
    reads = _evidence_reads(engine)
    shared = queries.FactsCache()
    with make_sessionmaker(engine)() as session:
        verdicts.chains_view(session, queries.ChainQuery.parse("resnet", route), shared)  # the route's own slice
        query = queries.ChainQuery.parse("resnet", route, limit=5, **narrowed)
        view = verdicts.chains_view(session, query, shared)
        candidates = None if query.target else view.complete()  # as GET /chains asks
        read_before = len(reads)
        held = queries.known_good_chain_page(session, query, shared, candidates, view.version)
        assert len(reads) == read_before
        assert held == queries.known_good_chain_page(session, query, None, candidates) and len(reads) > read_before
        assert held[1] > 0
        assert all(m.exporter == narrowed.get("exporter", m.exporter) and m.target == narrowed.get("target", m.target)
                   for chain in held[0] for m in chain.models)
    engine.dispose()


def test_answers_within_recheck_share_one_read_of_the_data_version(shipped_sqlite: str) -> None:
    """With `recheck` seconds (the app's response_cache_recheck), answers read the data version once per window:
    an answer from what the process holds makes no round trip. forget() (this process wrote) reads it again."""
    engine = make_engine(shipped_sqlite)
    reads: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: reads.append(statement) if "FROM data_change" in statement else None)

    def ask(facts: queries.FactsCache) -> str:
        with make_sessionmaker(engine)() as session:
            return verdicts.check(session, read(GOOD), ["resnet"], ["onnxruntime"], None, facts).verdict

    held = queries.FactsCache(recheck=60)
    assert ask(held) == ask(held) == "known-good" and len(reads) == 1
    held.version.forget()
    assert ask(held) == "known-good" and len(reads) == 2
    every = queries.FactsCache()  # recheck 0: every answer reads it
    ask(every)
    ask(every)
    assert len(reads) == 4
    engine.dispose()


def test_a_version_read_across_this_process_write_is_not_kept(shipped_sqlite: str) -> None:
    """A data version read that began before this process stored something (forget(), as an ingest's cache.clear()
    calls it) answers its own request but is not held: the next answer reads the version again."""
    engine = make_engine(shipped_sqlite)
    version = queries.DataVersion(recheck=60)
    reads: list[str] = []

    def during_read(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM data_change" in statement:
            reads.append(statement)
            if len(reads) == 1:
                version.forget()  # a write of this process lands while the first read is under way

    event.listen(engine, "before_cursor_execute", during_read)
    with make_sessionmaker(engine)() as session:
        first = version.read(session)
        assert version.held() is None  # not kept: it may predate the write
        assert version.read(session) == first and len(reads) == 2
        assert version.held() == first and version.read(session) == first and len(reads) == 2  # kept now
    engine.dispose()


def test_answers_asked_at_once_read_each_slice_once(shipped: str) -> None:
    """Eight answers asked at once through one facts cache (the app's, under load) read a route's outcomes once,
    not once each, and all get the same environments."""
    engine = make_engine(shipped)
    reads: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: reads.append(statement) if "FROM outcome_any" in statement else None)
    shared = queries.FactsCache()
    start = threading.Barrier(8)
    found: list[dict[str, set[int]]] = []

    def ask() -> None:
        with make_sessionmaker(engine)() as session:
            start.wait()
            by_route = verdicts.measured_routes(session, ["resnet"], ["onnxruntime", "onnx2tf"], None, shared)
            found.append({route: set(envs) for route, envs in by_route.items()})

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and all(f == found[0] for f in found) and found[0]["onnxruntime"]
    assert len(reads) == 2  # one read of each route's slice
    engine.dispose()


@pytest.mark.parametrize("lockfile", [BAD, GOOD, UNTESTED / "requirements.txt", UNTESTED / "pyproject.toml"])
def test_a_route_is_ranked_closest_first_then_newest(shipped_sqlite: str, lockfile: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The columnar ranking (numpy, one comparison per distinct version) orders a route's environments as scoring
    each one does: fewest changes, then smallest moves, then the newest (highest place); and counts the changes."""
    packed = _ranked_as_scored(shipped_sqlite, read(lockfile), monkeypatch)
    assert packed and all(packed)  # each distance packed into one number per row


def test_a_move_too_large_to_pack_is_ranked_the_same_way(shipped_sqlite: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A move of 2**56 major versions leaves no room to pack a row's distance into 63 bits: sorted field by field."""
    text = re.sub(r"(?m)^torch==\S+", "torch==100000000000000000", GOOD.read_text())
    (tmp_path / "requirements.txt").write_text(text)
    packed = _ranked_as_scored(shipped_sqlite, read(tmp_path / "requirements.txt"), monkeypatch)
    assert packed and not any(packed)  # every route weighs torch


def _ranked_as_scored(url: str, pins: Pins, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Asserts that every route pins weigh ranks as score() orders; whether each ranking was packed (not sorted
    field by field, by np.lexsort)."""
    sorts: list[object] = []
    lexsort = np.lexsort
    monkeypatch.setattr(np, "lexsort", lambda keys: sorts.append(keys) or lexsort(keys))
    engine = make_engine(url)
    packed = []
    with make_sessionmaker(engine)() as session:
        models = ("resnet", "transformer_padding_mask")
        slices = verdicts._measured_routes(session, models, list(ROUTES), None, queries.FactsCache(), None)[0]
        ranked_routes = 0
        for route, held in slices.items():
            envs = held.measured(models)
            comparer = verdicts._Comparer(pins, route)
            if not comparer.pinned:
                continue
            columns, before = held.columns(), len(sorts)  # the columns sort their rows once, when built
            ranked = comparer.rank(columns, held.rows(models))
            assert held.rows(models[:1]) is held.rows(models[:1])  # gathered once per model
            assert sorted(held.rows(models[::-1]).tolist()) == sorted(held.columns().row[k] for k in envs)
            expected = sorted(envs.values(), key=lambda m: (*comparer.score(m)[1], -m.place, -m.research_place))
            # A reader that stops early sees the first ones; a later one that walks on sees them and then the rest.
            assert [m.key for m, _ in itertools.islice(ranked, 3)] == [m.key for m in expected[:3]]
            assert [m.key for m, _ in ranked] == [m.key for m in expected]
            assert [changes for _, changes in ranked] == [len(comparer.differences(m)) for m, _ in ranked]
            ranked_routes += len(ranked) > 2 * verdicts._FIRST  # long enough to be ordered in two parts
            packed.append(len(sorts) == before)
        assert ranked_routes >= 3
    engine.dispose()
    return packed


def test_cli_chains_ends_with_the_explanation(shipped_sqlite: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli.main(["chains", "--models", "resnet,grid_sample_nearest", "--route", "onnx2tf",
                     "--db", shipped_sqlite]) == 1
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["environments"]["measured"] > 0
    assert last["near_misses"][0]["passed"] == ["resnet"]
    assert last["near_misses"][0]["failed"][0]["model"] == "grid_sample_nearest"


# -- CI and pre-commit: their commands, run for real ------------------------------------------------------------

def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_the_action_is_valid_and_its_command_checks_a_file(tmp_path: Path, cache_home: Path) -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    subprocess.run([_bin("check-jsonschema"), "--builtin-schema", "vendor.github-actions", str(ROOT / "action.yml")],
                   check=True, capture_output=True)
    step = next(s for s in action["runs"]["steps"] if "run" in s)
    script = tmp_path / "step.sh"
    script.write_text(step["run"])
    subprocess.run([_bin("shellcheck"), "--shell=bash", str(script)], check=True)
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_ACTION_PATH": str(ROOT), "GITHUB_STEP_SUMMARY": str(summary),
           "XDG_CACHE_HOME": str(cache_home), "KG_PATH": str(BAD), "KG_MODELS": "resnet,control_flow_script",
           "KG_ROUTE": "onnx2tf", "KG_EXPORTER": "", "KG_PYTHON": "", "KG_FAIL_ON": "untested", "KG_SERVER": ""}
    env.pop("VIRTUAL_ENV", None)
    assert shutil.which("uv", path=env["PATH"]), "the action runs uv (setup-uv installs it on a runner)"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # known-bad fails the step
    assert "❌ known-bad" in summary.read_text() and summary.read_text() in done.stdout


def test_the_pre_commit_hook_entry_checks_the_files_it_matches(cache_home: Path) -> None:
    import re

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    files = [GOOD, UNTESTED / "uv.lock", UNTESTED / "pylock.toml", UNTESTED / "pyproject.toml",
             LOCKFILES / "good" / "constraints.txt"]
    assert all(re.search(hook["files"], str(f.relative_to(ROOT))) for f in files)
    assert not re.search(hook["files"], "src/app.py")
    entry = hook["entry"].split()
    argv = [_bin(entry[0]), *entry[1:], "--models", "resnet", "--route", "onnx2tf"]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    good = subprocess.run([*argv, str(GOOD)], env=env, capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    mixed = subprocess.run([*argv, str(GOOD), str(UNTESTED / "uv.lock")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert mixed.returncode == 2 and "untested" in mixed.stdout  # pass_filenames: every file, the worst verdict


# -- feed and badge ---------------------------------------------------------------------------------------------

def test_feed_counts_what_knowngood_report_counts(shipped_sqlite: str) -> None:
    from xml.etree import ElementTree as ET

    from api import feed
    from knowngood import report

    engine = make_engine(shipped_sqlite)
    with make_sessionmaker(engine)() as session:
        changes = feed.run_changes(session, limit=200)
        for c in changes:
            rep = report.compare(session, run=c.run_id)
            assert (len(c.new_failures), len(c.new_passes)) == (len(rep.new_failures), len(rep.new_passes)), c.run_id
    engine.dispose()
    assert any(c.new_failures for c in changes)
    with TestClient(create_app(Settings(database_url=shipped_sqlite))) as client:
        resp = client.get("/api/v1/feed.atom", params={"limit": 5})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/atom+xml")
    entries = ET.fromstring(resp.content).findall("{http://www.w3.org/2005/Atom}entry")
    assert len(entries) == 5 and "new failures" in entries[0].findtext("{http://www.w3.org/2005/Atom}title", "")


def test_badge_is_a_shields_endpoint(shipped_sqlite: str) -> None:
    with TestClient(create_app(Settings(database_url=shipped_sqlite))) as client:
        good = client.get("/api/v1/badge", params={"models": "resnet", "route": "onnx2tf"}).json()
        none = client.get("/api/v1/badge", params={"models": "transformer_padding_mask", "route": "onnx2tf"}).json()
    assert good["schemaVersion"] == 1 and good["color"] == "brightgreen" and good["message"].startswith("torch ")
    assert (none["color"], none["message"]) == ("red", "no known-good chain")
