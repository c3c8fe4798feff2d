"""Results → database: the only writer of runs, environments and cases; one transaction per case, idempotent on
the natural keys."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from matrix.expand import Case as PlannedCase
from matrix.expand import Plan
from runner import RUNNER_VERSION, signatures
from runner.environments import Resolved
from runner.results import StepResult, case_status
from store import outcomes
from store.db import utcnow
from store.models import Artifact, Case, Environment, Package, Run, Step


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a converter's raw output sometimes does.
    return value.replace("\x00", "\\x00") if value else value


def start_run(session: Session, plan: Plan, *, commit: bool = True) -> Run:
    """Record a new run, and mark the spec's earlier runs that never finished as interrupted.

    `commit=False` leaves the transaction open, so a queue's entries become visible with their run."""
    run = Run(
        id=str(uuid.uuid4()),
        spec_name=plan.spec.name,
        spec_hash=plan.spec.source_hash,
        runner_version=RUNNER_VERSION,
        corpus_version=plan.corpus_version,
        host=socket.gethostname(),
        cutoff=plan.spec.exclude_newer,
        counts={"environments": len(plan.items), "cases": plan.case_count},
    )
    # A killed run cannot say so itself; the next run of its spec is the first to know. A shard of the same
    # spec that is still running is marked too, and its own finish_run sets it back to finished.
    session.execute(update(Run).where(Run.spec_name == plan.spec.name, Run.status == "running")
                    .values(status="interrupted"))
    session.add(run)
    if commit:
        session.commit()
    return run


def resume_run(session: Session, run: Run) -> None:
    """A worker joins a queued run: it is running again, whatever a stop or a later run had marked it."""
    run.status = "running"
    session.commit()


def worker_counts(session: Session, run_id: str, worker: str, counts: dict[str, Any], status: str | None) -> None:
    """Merge one queue worker's counts into its run (row-locked: workers end at once), and set the run's status
    when this worker decides it: `finished` once the queue is drained, `interrupted` when the last one stops."""
    # populate_existing: the session's own copy of the run is stale by whatever other workers merged meanwhile.
    run = session.scalars(select(Run).where(Run.id == run_id).with_for_update()
                          .execution_options(populate_existing=True)).one()
    run.counts = {**run.counts, "workers": {**run.counts.get("workers", {}), worker: counts}}
    if status == "finished" and run.status != "finished":
        run.status, run.finished_at = "finished", utcnow()
    elif status == "interrupted" and run.status == "running":
        run.status = "interrupted"
    session.commit()


def finish_run(session: Session, run: Run, counts: dict[str, Any]) -> None:
    run.finished_at = utcnow()
    run.status = "finished"
    run.counts = {**run.counts, **counts}
    session.commit()


def interrupt_run(session: Session, run: Run, counts: dict[str, Any]) -> None:
    """A run stopped on request (SIGTERM, SIGINT): what finished is recorded, the rest is left to a resumed run."""
    run.status = "interrupted"
    run.counts = {**run.counts, **counts}
    session.commit()


def stored_lock(session: Session, env_hash: str) -> Environment | None:
    """The newest stored resolution of this request (reused only when a cutoff makes it final)."""
    return session.scalars(
        select(Environment).where(Environment.hash == env_hash).order_by(Environment.id.desc()).limit(1)
    ).first()


def save_environment(session: Session, resolved: Resolved) -> Environment:
    """Insert or find the environment row for (request, lock)."""
    env = resolved.env
    lock_hash = resolved.lock.hash if resolved.lock else None
    query = select(Environment).where(Environment.hash == env.hash)
    query = query.where(Environment.lock_hash == lock_hash if lock_hash else Environment.lock_hash.is_(None))
    row = session.scalars(query).first()
    if row is None:
        row = Environment(
            hash=env.hash,
            name=env.id,
            python=env.python,
            requirements=list(env.all_requirements),
            excludes=list(env.excludes),
            index_url=env.index_url,
            cutoff=env.cutoff,
            status=resolved.status,
            lock_hash=lock_hash,
            memory={},
            kind=env.kind,
            overrides=list(env.overrides),
            options=dict(env.options),
        )
        if resolved.lock:
            row.lock_text = resolved.lock.text
            row.packages = [Package(name=p.name, version=p.version, hashes=list(p.hashes))
                            for p in resolved.lock.pins]
        session.add(row)
    elif not resolved.reused:
        row.resolved_at = utcnow()  # uv gave the same answer again: the resolution is fresh
    row.python_full = resolved.python_full or row.python_full
    if resolved.conflict:
        row.error = resolved.conflict.reason
        row.signature = signatures.normalise("ResolutionConflict", resolved.conflict.reason)
    elif resolved.missing_python:
        row.error = resolved.missing_python
        row.signature = f"InterpreterNotFound({env.python})"
    try:
        session.commit()
    except IntegrityError:  # another shard stored the same row first
        session.rollback()
        row = session.scalars(query).one()
    return row


def install_failed(session: Session, row: Environment, error: str) -> None:
    row.status, row.error = "install-failed", error
    row.signature = f"InstallFailed({row.name})"
    session.commit()


def worker_lost(session: Session, row: Environment, error: str, signature: str) -> None:
    """An environment whose queue workers were lost before it was installed (runner/queue.py give_up)."""
    row.status, row.error, row.signature = "worker-lost", error, signature
    session.commit()


def entry_given_up(session: Session, run_id: str, name: str, lost: int, case: str | None) -> None:
    """Note on the run a queue entry given up after its workers were lost, and commit (with the entry closed)."""
    run = session.scalars(select(Run).where(Run.id == run_id).with_for_update()
                          .execution_options(populate_existing=True)).one()
    run.counts = {**run.counts, "given_up": {**run.counts.get("given_up", {}), name: {"lost": lost, "case": case}}}
    session.commit()


def installed(session: Session, row: Environment, probes: Callable[[], dict[str, Any]]) -> None:
    """Mark the environment installed; `probes` (import-memory figures) is measured once per environment."""
    row.status = "installed"
    if "probes" not in row.memory:
        row.memory = {**row.memory, "probes": probes()}
    session.commit()


def worker_figures(session: Session, row: Environment, peak_rss: int, attempts: int) -> None:
    """Keep the worker's peak memory: the next run admits this environment by it (--jobs > 1)."""
    row.memory = {**row.memory, "worker_peak_rss": peak_rss, "worker_attempts": attempts}
    session.commit()


NaturalKey = tuple[str, str, str, int, str, str, str]  # model, route, exporter, opset, model hash, target, artifact


def recorded(session: Session, env_row: Environment) -> set[NaturalKey]:
    """Natural keys of the cases already stored for this environment and runner version."""
    rows = session.execute(
        select(Case.model, Case.route, Case.exporter, Case.opset, Case.model_hash, Case.target, Artifact.key)
        .outerjoin(Artifact, Artifact.id == Case.artifact_id)
        .where(Case.environment_id == env_row.id, Case.runner_version == RUNNER_VERSION,
               Case.route != "export")
    )
    keys = {(m, r, e, o, h, t, a or "") for m, r, e, o, h, t, a in rows}
    # An export case is done once, whatever artifact it stored: its key names no artifact.
    exports = session.execute(
        select(Case.model, Case.route, Case.exporter, Case.opset, Case.model_hash, Case.target)
        .where(Case.environment_id == env_row.id, Case.runner_version == RUNNER_VERSION, Case.route == "export")
    )
    return keys | {(m, r, e, o, h, t, "") for m, r, e, o, h, t in exports}


def natural_key(case: PlannedCase) -> NaturalKey:
    return (case.model, case.route, case.exporter, case.opset, case.model_hash, case.target, case.artifact)


def artifact_row(session: Session, key: str, details: dict[str, Any], model: str) -> Artifact:
    """The artifact row of a graph key, inserted on first sight (two shards may store the same graph)."""
    row = session.scalars(select(Artifact).where(Artifact.key == key)).first()
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = Artifact(key=key, model=model, opset_emitted=details.get("opset_emitted"),
                           ir_version=details.get("ir_version"))
            session.add(row)
    except IntegrityError:
        row = session.scalars(select(Artifact).where(Artifact.key == key)).one()
    return row


def save_case(
    session: Session, run: Run, env_row: Environment, case: PlannedCase, corpus_version: str,
    steps: list[StepResult], *, replace: bool = False,
) -> Case | None:
    """Store one case and its steps; returns None if it was already stored (idempotent) or could not be.

    `replace` (--force) deletes the stored case in the same transaction: a kill or a failed insert keeps it."""
    # Split chains: a runtime case names the artifact it started from; an export case, the one it stored.
    artifact = case.artifact or next(
        (str(r.details["key"]) for r in steps if r.step == "save" and r.status == "ok" and r.details.get("key")), "")
    artifact_id = None
    if artifact:
        details = next((r.details for r in steps if r.step in ("save", "load")), {})
        artifact_id = artifact_row(session, artifact, details, case.model).id
    same_artifact = Case.artifact_id == artifact_id if case.artifact else Case.route == case.route
    same_case = (
        Case.environment_id == env_row.id, Case.model == case.model, Case.route == case.route,
        Case.exporter == case.exporter, Case.opset == case.opset, Case.model_hash == case.model_hash,
        Case.target == case.target, Case.runner_version == RUNNER_VERSION, same_artifact,
    )
    if replace:
        session.execute(delete(Case).where(*same_case))
    elif session.scalar(select(Case.id).where(*same_case).limit(1)) is not None:
        # Another run stored it while this one worked (two sweeps of one spec at once): one result per case
        # identity, or the snapshot refuses the store ("the same case identity appears twice").
        session.rollback()
        return None
    row = Case(
        run_id=run.id,
        environment_id=env_row.id,
        model=case.model,
        route=case.route,
        exporter=case.exporter,
        opset=case.opset,
        target=case.target,
        model_hash=case.model_hash,
        corpus_version=corpus_version,
        runner_version=RUNNER_VERSION,
        status=case_status(steps),
        artifact_id=artifact_id,
    )
    for result in sorted(steps, key=lambda s: s.ordinal):
        signature = None
        if result.status not in ("ok", "skip"):
            signature = signatures.normalise(
                result.error_type, result.message, step=result.step, details=result.details
            )
            row.signature = row.signature or signature
        if result.step in ("export", "load"):
            row.opset_emitted = result.details.get("opset_emitted")
        if result.step == "parity":
            row.max_abs_diff = result.max_abs_diff
        row.steps.append(Step(
            ordinal=result.ordinal,
            name=result.step,
            status=str(result.status),
            seconds=result.seconds,
            peak_rss=result.peak_rss,
            error_type=result.error_type,
            message=_text(result.message),
            signature=signature,
            max_abs_diff=result.max_abs_diff,
            details=result.details,
        ))
    session.add(row)
    try:
        if artifact_id is None:  # joint results are summarised for the readers (issue 14); split ones are not
            session.flush()
            outcomes.refresh_key(session, (env_row.id, row.model, row.route, row.exporter, row.target))
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    return row


def resignature(session: Session) -> int:
    """Re-normalise every stored failure with today's rules (signatures improve; messages are kept verbatim)."""
    changed = 0
    for case in session.scalars(select(Case).where(Case.signature.is_not(None))):
        first = None
        for step in case.steps:
            if step.status in ("ok", "skip"):
                continue
            new = signatures.normalise(step.error_type, step.message, step=step.name, details=step.details)
            if new != step.signature:
                step.signature, changed = new, changed + 1
            first = first or new
        if first and first != case.signature:
            case.signature = first
    for env in session.scalars(select(Environment).where(Environment.status == "conflict")):
        new = signatures.normalise("ResolutionConflict", env.error)
        if new != env.signature:
            env.signature, changed = new, changed + 1
    session.commit()
    return changed
