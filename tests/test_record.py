"""Recording: interrupted runs are marked, --force replaces a case in one transaction, and a case two runs
measured at once is stored once."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from matrix import expand, spec
from runner import environments, record
from runner.results import StepResult, StepStatus
from store import snapshot
from store.locks import Lock, parse_lock
from store.models import Case, Run

SLOW = Path(__file__).parent / "fixtures" / "corpus" / "slow.py"
SPEC = f"""\
name = "tiny"
models = ["a"]
routes = ["onnxruntime"]
corpus = "{SLOW}"
exclude-newer = "2025-01-01"

[axes]
python = ["3.11"]
six = ["==1.16.0"]
"""
LOCK = "six==1.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"


def _plan(tmp_path: Path, name: str = "tiny") -> expand.Plan:
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.replace('"tiny"', f'"{name}"'))
    return expand.plan(spec.load(path))


def _steps(case: str, *statuses: StepStatus, ordinals: list[int] | None = None) -> list[StepResult]:
    names = ["export", "check", "reference", "runtime", "parity"]
    return [StepResult(case=case, step=names[i], ordinal=(ordinals or list(range(len(statuses))))[i], status=s)
            for i, s in enumerate(statuses)]


def test_a_later_run_of_the_same_spec_marks_a_killed_one_interrupted(session: Session, tmp_path: Path) -> None:
    killed = record.start_run(session, _plan(tmp_path))
    other_spec = record.start_run(session, _plan(tmp_path, "other"))
    later = record.start_run(session, _plan(tmp_path))
    session.expire_all()
    assert session.get_one(Run, killed.id).status == "interrupted"
    assert session.get_one(Run, other_spec.id).status == "running"
    assert session.get_one(Run, later.id).status == "running"
    record.finish_run(session, later, {})
    assert session.get_one(Run, later.id).status == "finished"
    # the marked run still travels: a snapshot with it exports and imports again
    import json

    built = snapshot.build(session)
    assert {r.status for r in built.runs} >= {"interrupted", "finished"}
    assert snapshot.parse(json.loads(snapshot.dumps(built))).runs == built.runs


def test_force_replaces_a_case_in_one_transaction(session: Session, tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    env, (case,) = plan.items[0]
    run = record.start_run(session, plan)
    env_row = record.save_environment(session, environments.Resolved(
        env, Path("/usr/bin/python3.11"), "3.11.9", Lock(LOCK, parse_lock(LOCK))))
    assert record.save_case(session, run, env_row, case, plan.corpus_version, _steps(case.key, StepStatus.fail))
    # The new steps cannot be stored (two steps with one ordinal): the old case must still be there.
    broken = _steps(case.key, StepStatus.ok, StepStatus.ok, ordinals=[0, 0])
    assert record.save_case(session, run, env_row, case, plan.corpus_version, broken, replace=True) is None
    session.expire_all()
    (kept,) = session.scalars(select(Case)).all()
    assert kept.status == "fail"
    # A storable replacement takes its place; never two rows for one case.
    assert record.save_case(session, run, env_row, case, plan.corpus_version,
                            _steps(case.key, StepStatus.ok), replace=True)
    session.expire_all()
    (replaced,) = session.scalars(select(Case)).all()
    assert replaced.status == "pass"


def test_a_case_another_run_stored_meanwhile_is_stored_once(session: Session, tmp_path: Path) -> None:
    """Two sweeps of one spec ran at once and both measured torch 2.13's litert-torch cases: each stored them, and
    the snapshot export refused the store (the same case identity twice). The second is now told it is there."""
    plan = _plan(tmp_path)
    env, (case,) = plan.items[0]
    first, second = record.start_run(session, plan), record.start_run(session, _plan(tmp_path, "tiny-too"))
    env_row = record.save_environment(session, environments.Resolved(
        env, Path("/usr/bin/python3.11"), "3.11.9", Lock(LOCK, parse_lock(LOCK))))
    assert record.save_case(session, first, env_row, case, plan.corpus_version, _steps(case.key, StepStatus.ok))
    assert record.save_case(session, second, env_row, case, plan.corpus_version,
                            _steps(case.key, StepStatus.ok)) is None
    session.expire_all()
    (kept,) = session.scalars(select(Case)).all()
    assert kept.run_id == first.id
    assert snapshot.parse(json.loads(snapshot.dumps(snapshot.build(session)))).cases  # exports and parses
