"""The runner end to end on tiny real uv environments: resume after SIGKILL, --jobs, --shard, --force."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from matrix import expand, spec
from store import migrate
from store.db import make_engine, make_sessionmaker
from store.models import Case, Environment, Run

ROOT = Path(__file__).parents[1]
SLOW = ROOT / "tests" / "fixtures" / "corpus" / "slow.py"
SPEC = f"""\
name = "tiny"
models = ["a", "b", "c"]
routes = ["onnxruntime"]
corpus = "{SLOW}"
exclude-newer = "2025-01-01"

[axes]
python = ["3.11"]
six = ["==1.16.0", "==1.17.0"]
packaging = ["==24.1", "==24.2"]
"""


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC)
    db = f"sqlite:///{tmp_path / 'kg.db'}"
    env = {**os.environ, "KNOWNGOOD_ENV_ROOT": str(tmp_path / "envs"), "KNOWNGOOD_WORK_ROOT": str(tmp_path / "work")}
    return path, db, env


def _cli(*args: str, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "knowngood", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _recorded(db: str) -> Counter[tuple[str, str]]:
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        rows = s.execute(select(Environment.name, Case.model).join(Case, Case.environment_id == Environment.id))
        out = Counter((name, model) for name, model in rows)
    engine.dispose()
    return out


def _planned(path: Path) -> Counter[tuple[str, str]]:
    plan = expand.plan(spec.load(path))
    return Counter((env.id, c.model) for env, cases in plan.items for c in cases)


def test_sigkill_mid_run_then_resume_gives_exactly_the_plan(tiny: tuple[Path, str, dict[str, str]]) -> None:
    path, db, env = tiny
    migrate.upgrade(db)
    proc = _cli("run", str(path), "--db", db, env=env)
    deadline = time.monotonic() + 120
    while sum(_recorded(db).values()) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    partial = _recorded(db)
    assert 4 <= sum(partial.values()) < 12, partial  # killed in the middle
    resumed = _cli("run", str(path), "--db", db, env=env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["skipped_recorded"] == sum(partial.values())
    assert _recorded(db) == _planned(path)  # nothing missing, nothing twice
    assert set(_recorded(db).values()) == {1}
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:  # the killed run could not say so; the resumed one did
        assert sorted(s.scalars(select(Run.status).order_by(Run.started_at))) == ["finished", "interrupted"]
    engine.dispose()


def test_jobs_and_shards_cover_the_plan_and_rerun_skips(tiny: tuple[Path, str, dict[str, str]]) -> None:
    path, db, env = tiny
    for shard in ("1/2", "2/2"):
        out, err = _cli("run", str(path), "--db", db, "--shard", shard, "--jobs", "2", env=env).communicate(timeout=300)
        assert json.loads(out.strip().splitlines()[-1])["environments"] == {"resolved": 2}, err[-2000:]
    assert _recorded(db) == _planned(path)
    out, _ = _cli("run", str(path), "--db", db, env=env).communicate(timeout=300)
    again = json.loads(out.strip().splitlines()[-1])
    assert again["skipped_recorded"] == 12 and again["installs"] == 0 and again["cases"] == {}
    out, _ = _cli("run", str(path), "--db", db, "--force", env=env).communicate(timeout=300)
    assert json.loads(out.strip().splitlines()[-1])["cases"] == {"fail": 12}
    assert _recorded(db) == _planned(path)  # --force replaces, never duplicates
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        runs = s.scalars(select(Run)).all()
        assert {r.cutoff for r in runs} == {"2025-01-01"}
        envs = s.scalars(select(Environment)).all()
        assert all(e.memory["probes"]["torch"]["status"] == "fail" for e in envs)  # no torch in these
    engine.dispose()
