"""Many processes, one PostgreSQL: four shards started at once cover the plan exactly; migrations serialise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from matrix import expand, spec
from store import migrate
from store.db import make_engine, make_sessionmaker
from store.models import Case, Environment, Run
from tests.pgcluster import database

FAULTS = Path(__file__).parent / "fixtures" / "corpus" / "faults.py"
SHARDS = 4
DEADLINE = 600  # seconds for all four together; the environments are tiny, so hitting it means a deadlock


@pytest.fixture
def empty_pg(postgres_server: str) -> Iterator[str]:
    """An empty, unmigrated PostgreSQL database."""
    with database(postgres_server, prefix="kg_empty_") as url:
        yield url


def _all_at_once(argvs: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Start every process before waiting for any; fail (and kill them) if they do not all end in time."""
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    deadline = time.monotonic() + DEADLINE
    results = []
    try:
        for proc, argv in zip(procs, argvs, strict=True):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWNGOOD_")}
    env["KNOWNGOOD_ENV_ROOT"] = str(tmp_path / "envs")
    env["KNOWNGOOD_WORK_ROOT"] = str(tmp_path / "work")
    return env


def test_four_concurrent_upgrades_of_an_empty_database(empty_pg: str, tmp_path: Path) -> None:
    knowngood = [sys.executable, "-m", "knowngood", "db", "upgrade", "--db", empty_pg]
    results = _all_at_once([knowngood] * 4, _env(tmp_path))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    migrate.check(empty_pg)


def test_four_shards_at_once_cover_the_plan_exactly(empty_pg: str, tmp_path: Path) -> None:
    # Four tiny environments (no frameworks) and a toy model that raises while being built: cheap to run.
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(
        'name = "tiny-shards"\nmodels = ["broken"]\nroutes = ["onnxruntime"]\n'
        f"corpus = {json.dumps(str(FAULTS))}\n\n"
        '[axes]\npython = ["3.11"]\nsix = ["==1.16.0", "==1.17.0"]\npackaging = ["==24.1", "==24.2"]\n'
    )
    plan = expand.plan(spec.load(spec_file))
    planned = {env.hash: i for i, env in enumerate(plan.environments)}
    assert len(planned) == 4

    # The shards also race to migrate the empty database: the advisory lock lets one through at a time.
    def shard_argvs() -> list[list[str]]:
        return [[sys.executable, "-m", "knowngood", "run", str(spec_file), "--shard", f"{i}/{SHARDS}",
                 "--db", empty_pg] for i in range(1, SHARDS + 1)]

    results = _all_at_once(shard_argvs(), _env(tmp_path))
    assert [r.returncode for r in results] == [0] * SHARDS, [r.stderr[-2000:] for r in results]
    summaries = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
    assert [s["cases"] for s in summaries] == [{"fail": 1}] * SHARDS

    engine = make_engine(empty_pg)
    with make_sessionmaker(engine)() as s:
        runs = {r.id: r for r in s.scalars(select(Run))}
        envs = list(s.scalars(select(Environment)))
        cases = list(s.scalars(select(Case)))
        # No duplicate and no missing environment; each one ran in the shard `i mod N` gives it.
        assert sorted(e.hash for e in envs) == sorted(planned)
        assert len(cases) == 4 and {c.environment_id for c in cases} == {e.id for e in envs}
        shard_of_run = {s["run"]: i for i, s in enumerate(summaries)}
        by_env = {e.id: e.hash for e in envs}
        for case in cases:
            assert shard_of_run[case.run_id] == planned[by_env[case.environment_id]] % SHARDS
            assert case.status == "fail" and case.signature.startswith("RuntimeError(")
        assert set(runs) == set(shard_of_run) and {r.status for r in runs.values()} == {"finished"}

    # Again, all at once: everything is recorded already, so nothing is added.
    again = _all_at_once(shard_argvs(), _env(tmp_path))
    assert [r.returncode for r in again] == [0] * SHARDS
    assert [json.loads(r.stdout.strip().splitlines()[-1])["skipped_recorded"] for r in again] == [1] * SHARDS
    with make_sessionmaker(engine)() as s:
        assert len(list(s.scalars(select(Case)))) == 4
        assert len(list(s.scalars(select(Environment)))) == 4
    engine.dispose()
