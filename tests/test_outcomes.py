"""The outcome tables (issue 14) agree with the cases they summarise: after recording, after ingest, after the
0009 and 0010 backfills, on SQLite and PostgreSQL. The expected rows are worked out here from the case rows in
Python, not with the SQL that fills the tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from matrix import expand, spec
from runner import environments, record
from runner.results import StepResult, StepStatus
from store import migrate, outcomes, snapshot
from store.db import make_engine, make_sessionmaker
from store.locks import Lock, parse_lock
from store.models import Case, Outcome, OutcomeAny
from tests.test_record import LOCK, SPEC  # a one-model toy spec and its lock

SMOKE = Path(__file__).parent / "fixtures" / "smoke-snapshot.json.gz"  # a real smoke run, exported

Row = tuple[str, str, int, str, str, int, int | None, int | None]


def expected(session: Session) -> set[Row]:
    """The outcome rows, from first principles: per case identity the newest (recorded_at, id) is current; joint
    cases only; per (environment, model, route, exporter, target) count current passes, newest pass and failure."""
    newest: dict[tuple[Any, ...], Any] = {}
    for c in session.execute(select(Case.id, Case.environment_id, Case.model, Case.route, Case.exporter, Case.opset,
                                    Case.target, Case.artifact_id, Case.status, Case.recorded_at)):
        identity = (c.environment_id, c.model, c.route, c.exporter, c.opset, c.target, c.artifact_id)
        if identity not in newest or (c.recorded_at, c.id) > (newest[identity].recorded_at, newest[identity].id):
            newest[identity] = c
    keyed: dict[tuple[str, str, int, str, str], list[Any]] = {}
    for c in newest.values():
        if c.artifact_id is not None:
            continue
        row = keyed.setdefault((c.route, c.model, c.environment_id, c.exporter, c.target), [0, None, None])
        if c.status == "pass":
            row[0] += 1
            row[1] = max(row[1] or 0, c.id)
        elif c.status != "skip":
            row[2] = max(row[2] or 0, c.id)
    return {(*k, v[0], v[1], v[2]) for k, v in keyed.items() if v[1] is not None or v[2] is not None}


def stored(session: Session) -> set[Row]:
    """The outcome rows as stored; and, checked on the way, the outcome_any rows folded from them."""
    rows: set[Row] = {tuple(r) for r in session.execute(  # type: ignore[misc]
        select(Outcome.route, Outcome.model, Outcome.environment_id, Outcome.exporter, Outcome.target,
               Outcome.passed, Outcome.pass_case_id, Outcome.fail_case_id))}
    assert stored_any(session) == folded(rows)
    return rows


AnyRow = tuple[str, str, int, int | None, int | None]


def folded(rows: set[Row]) -> set[AnyRow]:
    """The outcome_any rows of these outcome rows: per (route, model, environment) over every exporter and target,
    the newest pass and the newest failure."""
    keyed: dict[tuple[str, str, int], list[int | None]] = {}
    for route, model, env_id, _exporter, _target, _passed, pass_id, fail_id in rows:
        row = keyed.setdefault((route, model, env_id), [None, None])
        row[0] = max(row[0] or 0, pass_id) if pass_id is not None else row[0]
        row[1] = max(row[1] or 0, fail_id) if fail_id is not None else row[1]
    return {(*k, v[0], v[1]) for k, v in keyed.items()}


def stored_any(session: Session) -> set[AnyRow]:
    return {tuple(r) for r in session.execute(  # type: ignore[misc]
        select(OutcomeAny.route, OutcomeAny.model, OutcomeAny.environment_id, OutcomeAny.pass_case_id,
               OutcomeAny.fail_case_id))}


def _steps(case: str, status: StepStatus) -> list[StepResult]:
    return [StepResult(case=case, step="export", ordinal=0, status=status)]


def test_recording_keeps_outcomes(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC)
    plan = expand.plan(spec.load(path))
    env, (case,) = plan.items[0]
    run = record.start_run(session, plan)
    env_row = record.save_environment(session, environments.Resolved(
        env, Path("/usr/bin/python3.11"), "3.11.9", Lock(LOCK, parse_lock(LOCK))))

    def save(c: expand.Case, status: StepStatus, replace: bool = False) -> Case:
        row = record.save_case(session, run, env_row, c, plan.corpus_version, _steps(c.key, status), replace=replace)
        assert row is not None
        return row

    def outcome(model: str) -> tuple[int, int | None, int | None]:
        (row,) = session.execute(select(Outcome.passed, Outcome.pass_case_id, Outcome.fail_case_id).where(
            Outcome.environment_id == env_row.id, Outcome.model == model, Outcome.route == case.route)).all()
        return row.passed, row.pass_case_id, row.fail_case_id

    first = save(case, StepStatus.ok)
    assert outcome("a") == (1, first.id, None)
    other_opset = save(dataclasses.replace(case, opset=case.opset + 1), StepStatus.fail)
    assert outcome("a") == (1, first.id, other_opset.id)
    # A newer corpus (model hash) of the same identity supersedes the pass: it no longer counts.
    newer = save(dataclasses.replace(case, model_hash="newer"), StepStatus.fail)
    assert outcome("a") == (0, None, max(newer.id, other_opset.id))
    # --force replaces the newer failure with a pass, in the same transaction. (Forget the replaced rows first:
    # SQLite may hand their ids to the new ones.)
    session.expunge_all()
    forced = save(dataclasses.replace(case, model_hash="newer"), StepStatus.ok, replace=True)
    assert outcome("a") == (1, forced.id, other_opset.id)
    # A model whose only current case was skipped has no row: no evidence either way.
    save(dataclasses.replace(case, model="b"), StepStatus.skip)
    assert not session.scalars(select(Outcome).where(Outcome.model == "b")).all()
    assert stored(session) == expected(session)


def test_ingest_keeps_outcomes_and_refresh_agrees(db_url: str) -> None:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        snapshot.import_(session, SMOKE)
        rows = stored(session)
        assert rows and rows == expected(session)
        assert any(r[5] for r in rows) and any(r[7] for r in rows), "passes and failures both summarised"
        # Importing again adds nothing and changes nothing.
        assert not snapshot.import_(session, SMOKE).cases_added
        assert stored(session) == rows
        # refresh() recomputes from the cases as they are now: turn the oldest summarised pass into a failure.
        (pass_id,) = session.execute(select(Outcome.pass_case_id).where(Outcome.pass_case_id.is_not(None))
                                     .order_by(Outcome.pass_case_id).limit(1)).one()
        session.execute(update(Case).where(Case.id == pass_id).values(status="fail"))
        outcomes.refresh(session, [session.get_one(Case, pass_id).environment_id])
        session.commit()
        assert stored(session) == expected(session) != rows
    engine.dispose()


@pytest.mark.parametrize("revision", ["0008", "0009"])
def test_backfills_match_what_recording_keeps(db_url: str, revision: str) -> None:
    """Down to `revision` and up again: 0009 fills outcome from the cases, 0010 outcome_any from outcome."""
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        snapshot.import_(session, SMOKE)
        # Superseded results too: a second copy of a few cases, recorded later, fails where they passed.
        passed = session.scalars(select(Case).where(Case.status == "pass", Case.artifact_id.is_(None))
                                 .order_by(Case.id).limit(5)).all()
        for c in passed:
            session.add(Case(**{k: getattr(c, k) for k in ("run_id", "environment_id", "model", "route", "exporter",
                                                             "opset", "target", "opset_emitted", "corpus_version",
                                                             "runner_version")},
                             model_hash="later", status="fail", signature="Later(x)",
                             recorded_at=c.recorded_at + dt.timedelta(days=1)))
        session.flush()
        outcomes.refresh(session, {c.environment_id for c in passed})
        session.commit()
        kept = stored(session)
        assert kept == expected(session)
    engine.dispose()
    migrate.downgrade(db_url, revision)
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        assert stored(session) == kept  # outcome_any too: stored() checks it
    engine.dispose()
