"""Fixtures: a throwaway PostgreSQL cluster (initdb/pg_ctl) and SQLite, both migrated, plus factories."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from store import migrate, outcomes
from store.db import make_engine, make_sessionmaker, utcnow
from store.models import Artifact, Case, Environment, Package, Run, Step
from tests.pgcluster import PostgresNotFound, database, server_binary, throwaway_cluster


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster of our own on a loopback port, for the whole session."""
    try:
        server_binary("initdb")
    except PostgresNotFound as exc:
        pytest.fail(str(exc))
    with throwaway_cluster() as url:
        yield url


@pytest.fixture(scope="session")
def pg_template(postgres_server: str) -> str:
    """A database migrated once; each test copies it (CREATE DATABASE … TEMPLATE)."""
    admin = make_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE kg_template"))
    admin.dispose()
    migrate.upgrade(f"{postgres_server}/kg_template")
    return "kg_template"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


SHIPPED = Path(__file__).parents[1] / "data" / "snapshot.json.gz"


@pytest.fixture(scope="session")
def shipped_sqlite_template(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped snapshot imported once per session, as a user imports it (`knowngood snapshot import`); each
    test that reads it gets a copy (shipped_db). An import takes seconds, and half a dozen modules read it."""
    from knowngood import cli

    path = tmp_path_factory.mktemp("shipped") / "shipped.db"
    shutil.copy(sqlite_template, path)
    assert cli.main(["snapshot", "import", str(SHIPPED), "--db", f"sqlite:///{path}"]) == 0
    return path


@pytest.fixture(scope="session")
def shipped_pg_template(postgres_server: str, pg_template: str) -> str:
    """shipped_sqlite_template on PostgreSQL: a database copied (CREATE DATABASE … TEMPLATE) by shipped_db."""
    from knowngood import cli

    admin = make_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE kg_shipped TEMPLATE "{pg_template}"'))
    admin.dispose()
    assert cli.main(["snapshot", "import", str(SHIPPED), "--db", f"{postgres_server}/kg_shipped"]) == 0
    return "kg_shipped"


@pytest.fixture
def shipped_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Factory: a database of the given kind ("sqlite" or "postgresql") holding the shipped snapshot, a test's own."""
    with _copies(request, tmp_path, "shipped", "shipped_sqlite_template", "shipped_pg_template") as make:
        yield make


@contextlib.contextmanager
def _copies(request: pytest.FixtureRequest, tmp_path: Path, prefix: str, sqlite_fixture: str,
            pg_fixture: str) -> Iterator[Callable[[str], str]]:
    """Factory: a copy of the template database of the given kind, made by the fixture named; dropped after."""
    with contextlib.ExitStack() as made:

        def make(kind: str) -> str:
            if kind == "sqlite":
                path = tmp_path / f"{prefix}-{uuid.uuid4().hex[:8]}.db"
                shutil.copy(request.getfixturevalue(sqlite_fixture), path)
                return f"sqlite:///{path}"
            server = request.getfixturevalue("postgres_server")
            return made.enter_context(database(server, template=request.getfixturevalue(pg_fixture)))

        yield make


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each kind."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "kg.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    with database(request.getfixturevalue("postgres_server"), template=request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture
def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Factory: another migrated, empty database of the given kind ("sqlite" or "postgresql")."""
    with _copies(request, tmp_path, "fresh", "sqlite_template", "pg_template") as make:
        yield make


@pytest.fixture
def db_dump() -> Callable[[str], dict[str, Any]]:
    """The database as a snapshot document minus its export time: equal dumps mean equal contents."""
    from store import snapshot

    def dump(url: str) -> dict[str, Any]:
        engine = make_engine(url)
        with make_sessionmaker(engine)() as s:
            doc = snapshot.build(s).model_dump(mode="json", exclude={"exported_at"})
        engine.dispose()
        return doc
    return dump


@pytest.fixture
def db_counts() -> Callable[[str], dict[str, int]]:
    """Rows per table."""
    def count(url: str) -> dict[str, int]:
        engine = make_engine(url)
        with make_sessionmaker(engine)() as s:
            out = {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                   for t in (Run, Environment, Package, Case, Step)}
        engine.dispose()
        return out
    return count


CHAIN_QUERIES = [
    {"models": "resnet", "route": "onnxruntime"},
    {"models": "resnet,grid_sample", "route": "onnxruntime"},
    {"models": "resnet,transformer_padding_mask", "route": "onnx2tf"},  # measured as `transformer` before issue 10
    {"models": "resnet", "route": "onnxruntime", "require": ["torch>=2.1"]},
]


@pytest.fixture
def api_answers() -> Callable[[str], list[Any]]:
    """/chains and /lockfile for a few queries, minus what is local to one database (row ids) or driver (tz)."""
    import datetime as dt

    from fastapi.testclient import TestClient

    from api.app import create_app
    from store.settings import Settings

    def answers(url: str) -> list[Any]:
        out: list[Any] = []
        with TestClient(create_app(Settings(database_url=url))) as client:
            for params in CHAIN_QUERIES:
                resp = client.get("/api/v1/chains", params=params)
                assert resp.status_code == 200, resp.text
                body = resp.json()
                for chain in [*body["chains"], *body.get("near_misses", [])]:
                    del chain["environment_id"]
                    if "recorded_at" in chain:  # a chain's evidence; near misses carry none
                        at = dt.datetime.fromisoformat(chain["recorded_at"])
                        chain["recorded_at"] = (at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at).isoformat()
                lock = client.get("/api/v1/lockfile", params=params)
                out += [body, lock.status_code, lock.text]
        return out
    return answers


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


MakeEnv = Callable[..., Environment]


@pytest.fixture
def make_run(session: Session) -> Callable[..., Run]:
    def make(**kw: object) -> Run:
        run = Run(id=str(uuid.uuid4()), spec_name=kw.pop("spec_name", "test"), spec_hash="0" * 64,
                  runner_version="test", corpus_version="c1", host="test", counts={}, **kw)
        session.add(run)
        session.commit()
        return run
    return make


@pytest.fixture
def make_environment(session: Session) -> MakeEnv:
    """An installed environment whose lock pins `versions` (plus numpy/protobuf)."""
    def make(versions: dict[str, str], python: str = "3.11") -> Environment:
        pins = {"numpy": "1.26.4", "protobuf": "4.25.5", **versions}
        lock_lines = [f"{n}=={v} \\\n    --hash=sha256:{uuid.uuid4().hex * 2}" for n, v in sorted(pins.items())]
        name = f"py{python}-" + "-".join(f"{n}{v}" for n, v in versions.items())
        env = Environment(
            hash=uuid.uuid4().hex * 2, name=name, python=python, python_full=f"{python}.7",
            requirements=[f"{n}=={v}" for n, v in versions.items()], excludes=[], index_url="https://pypi.org/simple",
            cutoff="2026-11-01", status="installed", lock_hash=uuid.uuid4().hex * 2,
            lock_text="\n".join(lock_lines) + "\n", memory={},
            packages=[Package(name=n, version=v, hashes=[]) for n, v in sorted(pins.items())],
        )
        session.add(env)
        session.commit()
        return env
    return make


@pytest.fixture
def make_case(session: Session) -> Callable[..., Case]:
    # Keep the outcome table in step, as record.save_case and ingest do: tests edit the rows this factory made
    # (an artifact, a model hash) before committing, so every commit recomputes it for every environment.
    @event.listens_for(session, "before_commit")
    def _outcomes(s: Session) -> None:
        outcomes.refresh(s, set(s.scalars(select(Case.environment_id).distinct())))

    def make(run: Run, env: Environment, model: str, route: str, status: str = "pass",
             max_abs_diff: float | None = 1e-6, exporter: str = "torchscript", opset: int = 17,
             signature: str | None = None, target: str = "", artifact_id: int | None = None) -> Case:
        case = Case(run_id=run.id, environment_id=env.id, model=model, route=route, exporter=exporter, opset=opset,
                    opset_emitted=opset, model_hash="m1", corpus_version="c1", runner_version="test",
                    status=status, signature=signature, max_abs_diff=max_abs_diff, recorded_at=utcnow(),
                    target=target, artifact_id=artifact_id)
        case.steps = [Step(ordinal=0, name="export", status="ok" if status == "pass" else status, seconds=0.1,
                           peak_rss=1, details={}, signature=signature)]
        session.add(case)
        session.commit()
        return case
    return make


@pytest.fixture
def targets_and_split(session: Session, make_run: Callable[..., Run], make_environment: MakeEnv,
                      make_case: Callable[..., Case]) -> dict[str, Any]:
    """resnet on onnx2tf, once per target in a joint environment (torch 2.5.1), and as split chains: torch 2.6.0
    and 2.7.0 export the same graph, one runtime environment (no torch) converts and runs it per target.

    tflite fails with one signature in both the joint and the runtime environment; the rest pass.
    """
    run = make_run()
    tf = {"onnx": "1.17.0", "tensorflow": "2.17.0", "onnx2tf": "1.26.3"}
    joint = make_environment({"torch": "2.5.1", **tf})
    e26, e27 = make_environment({"torch": "2.6.0", "onnx": "1.17.0"}), make_environment({"torch": "2.7.0",
                                                                                          "onnx": "1.17.0"})
    runtime = make_environment(tf)
    for env, kind in ((e26, "export"), (e27, "export"), (runtime, "runtime")):
        env.kind = kind
    graph = Artifact(key="b" * 64, model="resnet", opset_emitted=17, ir_version=8)
    session.add(graph)
    session.commit()
    signature = "ParityExceeded(input=0)"
    for env in (e26, e27):
        make_case(run, env, "resnet", "export", artifact_id=graph.id)
    for target in ("saved_model", "tflite", "keras"):
        failing: dict[str, Any] = {"status": "fail", "signature": signature} if target == "tflite" else {}
        make_case(run, joint, "resnet", "onnx2tf", target=target, **failing)
        if target != "keras":  # the in-memory model is measured in the joint environment only, here
            make_case(run, runtime, "resnet", "onnx2tf", target=target, artifact_id=graph.id, **failing)
    return {"run": run, "joint": joint, "export26": e26, "export27": e27, "runtime": runtime, "artifact": graph,
            "signature": signature}
