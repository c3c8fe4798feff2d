"""Issue 15 (hardening), API and store: each item as the request that used to go wrong, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import gzip
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from api.app import create_app
from api.cache import cache_key
from store import migrate, outcomes
from store.db import as_utc, make_engine, make_sessionmaker
from store.models import Case, Environment, Run, Step
from store.settings import Settings

ROOT = Path(__file__).parents[1]
SMOKE = Path(__file__).parent / "fixtures" / "smoke-snapshot.json.gz"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def document() -> dict[str, Any]:
    return json.loads(gzip.decompress(SMOKE.read_bytes()))


def _app(db_url: str, **settings: Any) -> FastAPI:
    return create_app(Settings(database_url=db_url, ingest_token=TOKEN, **settings))


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    # recheck 0: every request asks the database whether the data changed, so tests see their own writes.
    with TestClient(_app(db_url, response_cache_recheck=0)) as c:
        yield c


def _environment_id(client: TestClient, run_id: str) -> int:
    return int(client.get(f"/api/v1/runs/{run_id}").json()["environments"][0]["id"])


# --- 1. only the current result of a case identity counts ----------------------------------------------------


def _superseded(session: Session, make_run: Callable, make_environment: Callable, first: str, then: str) -> int:
    """resnet/onnxruntime/torchscript/17 recorded `first` under an old model hash, then `then` under the current."""
    env = make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0"})
    old, new = make_run(), make_run()
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    for run, status, model_hash, when in ((old, first, "old-hash", at), (new, then, "m1", at + dt.timedelta(days=1))):
        signature = None if status == "pass" else "ParityExceeded(input=1)"
        session.add(Case(run_id=run.id, environment_id=env.id, model="resnet", route="onnxruntime",
                         exporter="torchscript", opset=17, opset_emitted=17, model_hash=model_hash,
                         corpus_version=model_hash, runner_version="test", status=status, signature=signature,
                         max_abs_diff=1e-6, recorded_at=when,
                         steps=[Step(ordinal=0, name="parity", status="ok" if status == "pass" else status,
                                     signature=signature, details={})]))
    session.flush()
    outcomes.refresh(session, [env.id])  # as the recorder and ingest keep it
    session.commit()
    return env.id


def test_a_superseded_pass_does_not_keep_a_chain_known_good(client: TestClient, session: Session,
                                                            make_run: Callable, make_environment: Callable) -> None:
    env_id = _superseded(session, make_run, make_environment, first="pass", then="fail")
    q = {"models": "resnet", "route": "onnxruntime"}
    assert client.get("/api/v1/chains", params=q).json()["chains"] == []
    assert client.get("/api/v1/lockfile", params=q).status_code == 404
    cell, = client.get("/api/v1/matrix", params={"route": "onnxruntime", "y": "onnx"}).json()["cells"]
    assert (cell["status"], cell["passed"], cell["failed"]) == ("fail", 0, 1)
    failures = client.get("/api/v1/failures", params={"route": "onnxruntime"}).json()["failures"]
    assert [(f["signature"], f["count"]) for f in failures] == [("ParityExceeded(input=1)", 1)]
    lock = client.get(f"/api/v1/environments/{env_id}/lockfile").text
    assert "models passed: none" in lock
    assert len(client.get(f"/api/v1/environments/{env_id}").json()["cases"]) == 2  # the history is still shown


def test_a_newer_pass_supersedes_an_old_failure(client: TestClient, session: Session, make_run: Callable,
                                                make_environment: Callable) -> None:
    env_id = _superseded(session, make_run, make_environment, first="fail", then="pass")
    q = {"models": "resnet", "route": "onnxruntime"}
    chains = client.get("/api/v1/chains", params=q).json()["chains"]
    assert [c["environment_id"] for c in chains] == [env_id] and chains[0]["cases_passed"] == 1
    assert "models passed: resnet" in client.get("/api/v1/lockfile", params=q).text
    assert client.get("/api/v1/failures", params={"route": "onnxruntime"}).json()["failures"] == []


# --- 2. repeated query parameters ------------------------------------------------------------------------------


def test_a_repeated_single_valued_parameter_is_422(client: TestClient, document: dict) -> None:
    assert client.post("/api/v1/runs", json=document, headers=AUTH).status_code == 201
    base = "/api/v1/lockfile?models=resnet&route=onnxruntime"
    resp = client.get(f"{base}&format=constraints&format=requirements")
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["query", "format"]
    assert "given 2 times" in resp.json()["detail"][0]["msg"]
    assert client.get("/api/v1/chains?models=resnet&route=onnxruntime&route=onnx2tf").status_code == 422


def test_repeated_models_all_count_and_are_cached_apart(client: TestClient, document: dict) -> None:
    assert client.post("/api/v1/runs", json=document, headers=AUTH).status_code == 201
    models = sorted({c["model"] for c in document["cases"] if c["route"] == "onnx2tf"})[:2]
    a, b = models
    ab = client.get(f"/api/v1/matrix?route=onnx2tf&models={a}&models={b}").json()
    ba = client.get(f"/api/v1/matrix?route=onnx2tf&models={b}&models={a}").json()
    assert ab["models"] == [a, b] and ba["models"] == [b, a]  # not the cached answer of the other order
    assert ab == client.get(f"/api/v1/matrix?route=onnx2tf&models={a},{b}").json()
    assert client.get(f"/api/v1/matrix?route=onnx2tf&models={a}").json()["models"] == [a]


def test_the_cache_key_keeps_meaning() -> None:
    assert cache_key("/m", b"a=1&b=2") == cache_key("/m", b"b=2&a=1")  # the order of names does not matter
    assert cache_key("/m", b"models=a&models=b") != cache_key("/m", b"models=b&models=a")
    assert cache_key("/m", b"models=a,b") != cache_key("/m", b"models=a")


# --- 3. concurrent ingests of one document store each environment once (PostgreSQL) ---------------------------


def _unresolved(document: dict, run_id: str, *, cases: bool) -> dict:
    """The smoke document under another run id, plus an environment uv could not resolve (lock_hash null).

    Without its cases, the unresolved environment is the only row two such documents share: nothing else
    conflicts, so no rollback hides a duplicate of it.
    """
    doc = copy.deepcopy(document)
    old = doc["runs"][0]["id"]
    doc["runs"][0]["id"] = run_id
    for case in doc["cases"]:
        case["run"] = run_id if case["run"] == old else case["run"]
    env = copy.deepcopy(doc["environments"][0])
    env.update(hash="e" * 64, lock_hash=None, lock=None, packages=[], status="conflict",
               signature="ResolutionConflict(protobuf)", error="no solution")
    doc["environments"] = [*doc["environments"], env] if cases else [env]
    doc["cases"] = doc["cases"] if cases else []
    return doc


def _post_at_once(url: str, docs: list[dict]) -> list[int]:
    start, answers = threading.Barrier(len(docs)), []
    # One app (engine, pool) per thread, like separate server workers; built first, as FastAPI builds apps serially.
    clients = [TestClient(_app(url)) for _ in docs]

    def post(c: TestClient, doc: dict) -> None:
        start.wait()
        answers.append(c.post("/api/v1/runs", json=doc, headers=AUTH).status_code)

    # Started serially too, as server workers start: pydantic builds some schemas lazily on first use, and six
    # startups racing that build trip a warning in it (an error under filterwarnings), not in our code.
    with contextlib.ExitStack() as started:
        for c in clients:
            started.enter_context(c)
        threads = [threading.Thread(target=post, args=(c, d)) for c, d in zip(clients, docs, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return answers


def test_concurrent_ingests_store_each_environment_once(fresh_db: Callable[[str], str], document: dict) -> None:
    url = fresh_db("postgresql")
    only = [_unresolved(document, str(uuid.uuid4()), cases=False) for _ in range(6)]
    assert _post_at_once(url, only) == [201] * len(only)
    full = [_unresolved(document, str(uuid.uuid4()), cases=True) for _ in range(6)]
    assert sorted(_post_at_once(url, full)) == [201] * len(full)  # each adds its run
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        keys = s.execute(select(Environment.hash, Environment.lock_hash)).all()
        runs = s.scalar(select(func.count()).select_from(Run))
        cases = s.scalar(select(func.count()).select_from(Case))
    engine.dispose()
    assert sorted(keys, key=str) == sorted(set(keys), key=str) and len(keys) == 2
    assert (runs, cases) == (len(only) + len(full), len(document["cases"]))


def test_migration_0003_merges_duplicate_unresolved_environments(db_url: str, document: dict) -> None:
    migrate.downgrade(db_url, "0002")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for env_id in (101, 102, 103):
            conn.execute(text(
                "INSERT INTO environment (id, hash, name, python, requirements, excludes, index_url, status, "
                "resolved_at, memory) VALUES (:id, :hash, 'py3.11-x', '3.11', '[]', '[]', 'https://pypi.org/simple', "
                "'conflict', '2026-11-01 00:00:00', '{}')"), {"id": env_id, "hash": "d" * 64})
        conn.execute(text("INSERT INTO run (id, spec_name, spec_hash, runner_version, corpus_version, host, "
                          "started_at, status, counts) VALUES ('r', 's', 'h', 'v', 'c', 'h', '2026-11-01 00:00:00', "
                          "'finished', '{}')"))
        for case_id, env_id, model in ((1, 102, "resnet"), (2, 103, "resnet"), (3, 103, "vit")):
            conn.execute(text(
                'INSERT INTO "case" (id, run_id, environment_id, model, route, exporter, opset, model_hash, '
                "corpus_version, runner_version, status, recorded_at) VALUES (:id, 'r', :env, :model, "
                "'onnxruntime', 'torchscript', 17, 'm', 'c', 'v', 'fail', '2026-11-01 00:00:00')"),
                {"id": case_id, "env": env_id, "model": model})
    engine.dispose()
    migrate.upgrade(db_url)
    migrate.check(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM environment")).scalars().all() == [101]
        assert sorted(conn.execute(text('SELECT id, environment_id FROM "case"')).all()) == [(1, 101), (3, 101)]
    engine.dispose()


# --- 4. times: converted to UTC once, out-of-range ones refused -----------------------------------------------


def test_an_offset_is_converted_not_dropped(client: TestClient, document: dict) -> None:
    for case in document["cases"]:
        case["recorded_at"] = "2026-11-24T09:00:00+09:00"
    assert client.post("/api/v1/runs", json=document, headers=AUTH).status_code == 201
    env = client.get(f"/api/v1/environments/{_environment_id(client, document['runs'][0]['id'])}").json()
    assert {c["recorded_at"] for c in env["cases"]} == {"2026-11-24T00:00:00Z"}


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+09:00", "9999-12-31T23:00:00-05:00",
                                  "1969-12-31T23:59:59Z"])
def test_an_out_of_range_time_is_422_and_the_api_keeps_answering(client: TestClient, document: dict, db_url: str,
                                                                 db_counts: Callable, when: str) -> None:
    document["cases"][2]["recorded_at"] = when
    resp = client.post("/api/v1/runs", json=document, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "cases", 2, "recorded_at"]
    assert "expected a time between 1970-01-01 and 9999-01-01" in resp.json()["detail"][0]["msg"]
    assert set(db_counts(db_url).values()) == {0}
    document["cases"][2]["recorded_at"] = "2026-11-24T18:22:38Z"
    assert client.post("/api/v1/runs", json=document, headers=AUTH).status_code == 201
    assert client.get("/api/v1/failures").status_code == 200
    assert client.get(f"/api/v1/environments/{_environment_id(client, document['runs'][0]['id'])}").status_code == 200


def test_naive_to_utc_is_written_once() -> None:
    """as_utc in store/db.py is the one normalisation; every package calls it instead of spelling it out (the
    worker, which runs inside case environments and never reads the database, excepted)."""
    packages = ("api", "store", "runner", "matrix", "knowngood")
    spelled = [f"{p.relative_to(ROOT)}:{n}" for d in packages for p in sorted((ROOT / d).rglob("*.py"))
               for n, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"tzinfo is None|replace\(tzinfo=", line)]
    assert spelled == ["store/db.py:25"]
    assert as_utc(dt.datetime(2026, 1, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=9)))) == \
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# --- 5. POST /runs: the token before the body, and a size cap -------------------------------------------------


def _raw_post(app: FastAPI, headers: dict[str, str], chunks: int, chunk: bytes = b"x" * 65536) -> tuple[int, int]:
    """POST /api/v1/runs straight through ASGI; returns (status, body chunks the app pulled)."""
    pulled, sent = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/v1/runs", "raw_path": b"/api/v1/runs",
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("testserver", 80),
             "client": ("127.0.0.1", 1), "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return sent[0]["status"], pulled


def test_without_the_token_the_body_is_not_read(db_url: str) -> None:
    size = str(800 * 65536)
    assert _raw_post(_app(db_url), {"Content-Length": size}, chunks=800) == (401, 0)
    assert _raw_post(_app(db_url), {"Content-Length": size, "Authorization": "Bearer wrong"}, chunks=800) == (401, 0)


def test_an_oversize_body_is_413(db_url: str) -> None:
    app = _app(db_url, ingest_max_bytes=1_000_000)
    # Declared too large: refused before a byte is read.
    assert _raw_post(app, {**AUTH, "Content-Length": "1000001"}, chunks=100) == (413, 0)
    # Chunked (no length) or a length that lies: refused once the count passes the limit, not at the end.
    assert _raw_post(app, AUTH, chunks=100) == (413, 16)
    assert _raw_post(app, {**AUTH, "Content-Length": "10"}, chunks=100) == (413, 16)


def test_a_body_under_the_cap_is_stored(db_url: str, document: dict) -> None:
    body = json.dumps(document).encode()
    with TestClient(_app(db_url, ingest_max_bytes=len(body))) as c:
        assert c.post("/api/v1/runs", content=body, headers={**AUTH, "Content-Type": "application/json"}
                      ).status_code == 201
    with TestClient(_app(db_url, ingest_max_bytes=len(body) - 1)) as c:
        assert c.post("/api/v1/runs", content=body, headers={**AUTH, "Content-Type": "application/json"}
                      ).status_code == 413


# --- 6. format=pylock asks only configured indexes ------------------------------------------------------------


class _Index(BaseHTTPRequestHandler):
    """A PEP 691 simple index on loopback listing one wheel per project; it records every path asked for."""

    asked: list[str]

    def do_GET(self) -> None:
        self.asked.append(self.path)
        name = self.path.rstrip("/").rsplit("/", 1)[-1]
        files = [{"filename": f"{name.replace('-', '_')}-{v}-py3-none-any.whl", "url": f"/files/{name}-{v}.whl",
                  "hashes": {"sha256": "ab" * 32}} for v in ("2.5.1", "1.17.0", "1.20.0", "1.26.4", "4.25.5")]
        body = json.dumps({"files": files}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def index() -> Iterator[tuple[str, list[str]]]:
    asked: list[str] = []
    handler = type("Index", (_Index,), {"asked": asked})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", asked
    server.shutdown()
    server.server_close()


def test_pylock_fetches_only_from_configured_indexes(db_url: str, session: Session, make_environment: Callable,
                                                     index: tuple[str, list[str]]) -> None:
    url, asked = index
    env = make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0"})
    session.execute(update(Environment).where(Environment.id == env.id).values(index_url=url))
    session.commit()
    path = f"/api/v1/environments/{env.id}/lockfile?format=pylock"
    with TestClient(_app(db_url)) as c:
        resp = c.get(path)
    assert resp.status_code == 409 and "not one this server fetches from" in resp.json()["detail"]
    assert asked == []
    with TestClient(_app(db_url, pylock_indexes=[url])) as c:
        resp = c.get(path)
    assert resp.status_code == 200, resp.text
    assert 'url = "http://127.0.0.1:' in resp.text and len(asked) == 5


@pytest.mark.parametrize("index_url", ["file:///etc/passwd", "https://pypi.org/simple\n--index-url https://x"])
def test_an_index_url_that_is_not_http_is_refused_at_ingest(client: TestClient, document: dict, index_url: str) -> None:
    document["environments"][0]["index_url"] = index_url
    resp = client.post("/api/v1/runs", json=document, headers=AUTH)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "environments", 0, "index_url"]


# --- 8. values outside a column's range -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corrupt", "where"),
    [
        (lambda d: d["cases"][0].update(opset=2**31), ["body", "cases", 0, "opset"]),
        (lambda d: d["cases"][0].update(opset=2**63), ["body", "cases", 0, "opset"]),
        (lambda d: d["cases"][0].update(opset_emitted=-(2**31) - 1), ["body", "cases", 0, "opset_emitted"]),
        (lambda d: d["cases"][0]["steps"][0].update(peak_rss=2**70), ["body", "cases", 0, "steps", 0, "peak_rss"]),
        (lambda d: d["cases"][0]["steps"][0].update(ordinal=2**31), ["body", "cases", 0, "steps", 0, "ordinal"]),
        (lambda d: d["cases"][0]["steps"][0].update(message="a\x00b"), "cases[0].steps[0].message: must not contain "
                                                                       "a NUL character"),
        (lambda d: d["environments"][0]["requirements"].append("torch\x00"),
         "environments[0].requirements[5]: must not contain a NUL"),
        (lambda d: d["cases"][0]["steps"][0].update(details={"x": float("nan")}), "cases[0].steps[0].details.x: "
                                                                                  "expected a finite number"),
        (lambda d: d["runs"][0].update(counts={"n": float("inf")}), "runs[0].counts.n: expected a finite number"),
        (lambda d: d["cases"][0].update(max_abs_diff=float("nan")), ["body", "cases", 0, "max_abs_diff"]),
    ],
    ids=["opset-2^31", "opset-2^63", "opset_emitted-low", "peak_rss-2^70", "ordinal-2^31", "nul-message",
         "nul-requirement", "nan-details", "inf-counts", "nan-diff"],
)
def test_a_value_no_column_holds_is_422_and_stores_nothing(client: TestClient, db_url: str, document: dict,
                                                           corrupt: Callable, where: Any, db_counts: Callable) -> None:
    corrupt(document)
    # json.dumps writes NaN and Infinity as JavaScript does, and the server's parser reads them.
    resp = client.post("/api/v1/runs", content=json.dumps(document), headers={**AUTH,
                                                                              "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    if isinstance(where, list):
        assert detail["loc"] == where
    else:
        assert where in detail["msg"]
    assert set(db_counts(db_url).values()) == {0}


def test_infinity_in_a_float_column_is_kept_on_both(client: TestClient, db_url: str, document: dict) -> None:
    """The runner records an infinite difference where one side is not finite; both databases keep it."""
    document["cases"][0]["max_abs_diff"] = float("inf")
    resp = client.post("/api/v1/runs", content=json.dumps(document), headers={**AUTH,
                                                                              "Content-Type": "application/json"})
    assert resp.status_code == 201, resp.text
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(Case.max_abs_diff).where(Case.model == document["cases"][0]["model"],
                                                        Case.route == document["cases"][0]["route"])) == float("inf")
    engine.dispose()


# --- 9. links do not follow the Host header --------------------------------------------------------------------


def test_lockfile_links_ignore_the_host_header(db_url: str, document: dict) -> None:
    with TestClient(_app(db_url)) as c:
        assert c.post("/api/v1/runs", json=document, headers=AUTH).status_code == 201
        env_id = _environment_id(c, document["runs"][0]["id"])
        links = c.get(f"/api/v1/environments/{env_id}", headers={"Host": "evil.example"}).json()["lockfiles"]
        assert links["pyproject"] == f"/api/v1/environments/{env_id}/lockfile?format=pyproject"
        assert c.get(links["constraints"]).status_code == 200
    with TestClient(_app(db_url, public_url="https://knowngood.example.org/")) as c:
        links = c.get(f"/api/v1/environments/{env_id}", headers={"Host": "evil.example"}).json()["lockfiles"]
        assert links["requirements"] == (f"https://knowngood.example.org/api/v1/environments/{env_id}/lockfile"
                                         "?format=requirements")


# --- 13. the response cache sees in-place updates; the dashboard offers only accepted exporters ---------------


def test_the_cache_sees_an_in_place_update(db_url: str, document: dict) -> None:
    with TestClient(_app(db_url, response_cache_recheck=0)) as c:
        assert c.post("/api/v1/runs", json=document, headers=AUTH).status_code == 201
        before = c.get("/api/v1/failures").json()["failures"]
        assert before, "the smoke run has failures"
        old = before[0]["signature"]
        # What `db resignature` does, from another process's connection: rows change, none is added.
        engine = make_engine(db_url)
        with make_sessionmaker(engine)() as s:
            s.execute(update(Case).where(Case.signature == old).values(signature="Renamed(x)"))
            s.execute(update(Step).where(Step.signature == old).values(signature="Renamed(x)"))
            s.commit()
        engine.dispose()
        after = c.get("/api/v1/failures").json()["failures"]
    assert "Renamed(x)" in {f["signature"] for f in after} and old not in {f["signature"] for f in after}


def test_the_dashboard_offers_only_exporters_the_api_accepts(client: TestClient, session: Session,
                                                             make_run: Callable, make_environment: Callable,
                                                             make_case: Callable) -> None:
    run, env = make_run(), make_environment({"torch": "2.5.1", "tensorflow": "2.17.0"})
    make_case(run, env, "resnet", "onnxruntime")
    make_case(run, env, "resnet", "litert-torch", exporter="none")
    page = client.get("/").text
    facets = json.loads(re.search(r'<script id="facets" type="application/json">(.*?)</script>', page
                                  ).group(1))  # type: ignore[union-attr]
    assert facets["exporters"] == ["torchscript"]
    for exporter in facets["exporters"]:
        assert client.get("/api/v1/matrix", params={"exporter": exporter}).status_code == 200
