"""Run-to-run changes: new failures, new passes and new signatures since another run (named read queries).

A run records only the cases it did not find already recorded, so what a run *saw* is its spec's state:
for every cell (environment request × model × route × exporter × opset), the newest case recorded by a run
of the same spec that started no later than it. Two runs are compared through their states.

A sharded run is one run per shard. `since` names the moment the sharded run began (CI's plan job): every run
of the spec started since then is the run under report, and the state before it is what it is compared with.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.queries import package_versions, rank_key
from matrix.routes import FRAMEWORKS
from store.db import as_utc
from store.errors import KnowngoodError
from store.models import Case, Environment, Run

# What a reader needs to place a combination; numpy and protobuf follow from these.
SHOWN = FRAMEWORKS

# environment request hash, model, route, exporter, opset, target, artifact: a case's identity (api/queries.current),
# so a SavedModel and a .tflite, or two graphs one runtime environment ran, are cells of their own
Cell = tuple[str, str, str, str, int, str, int | None]


class ReportError(KnowngoodError, ValueError):
    """A run that cannot be found or compared."""

    exit_code = 2


@dataclass(frozen=True)
class Outcome:
    """The newest recorded case of one cell, with what is needed to show it."""

    status: str
    signature: str | None
    run_id: str
    environment_id: int
    environment: str
    lock_hash: str | None
    corpus_version: str
    runner_version: str


@dataclass(frozen=True)
class Change:
    cell: Cell
    now: Outcome
    before: Outcome | None
    changed: str = ""
    first_failing: str = ""


@dataclass(frozen=True)
class NewSignature:
    signature: str
    cells: int
    example: str


@dataclass
class Report:
    run: Run
    against: Run | None
    shards: list[Run]
    now: dict[Cell, Outcome]
    before: dict[Cell, Outcome]
    new_failures: list[Change] = field(default_factory=list)
    new_passes: list[Change] = field(default_factory=list)
    new_signatures: list[NewSignature] = field(default_factory=list)


def find_run(session: Session, run_id: str | None) -> Run:
    """A run by id or unique id prefix; the newest run when `run_id` is None."""
    if run_id is None:
        run = session.scalars(select(Run).order_by(Run.started_at.desc(), Run.id.desc()).limit(1)).first()
        if run is None:
            raise ReportError("the database holds no run yet")
        return run
    runs = list(session.scalars(select(Run).where(Run.id.startswith(run_id, autoescape=True)).limit(2)))
    if len(runs) != 1:
        raise ReportError(f"run {run_id!r}: " + ("no such run" if not runs else "prefix matches several runs"))
    return runs[0]


def previous_run(session: Session, run: Run) -> Run | None:
    """The run of the same spec that started last before `run`."""
    return session.scalars(
        select(Run).where(Run.spec_name == run.spec_name, Run.id != run.id,
                          (Run.started_at < run.started_at) | ((Run.started_at == run.started_at) & (Run.id < run.id)))
        .order_by(Run.started_at.desc(), Run.id.desc()).limit(1)
    ).first()


def runs_since(session: Session, since: dt.datetime, spec_name: str | None) -> list[Run]:
    """The runs (of `spec_name`, else of the newest run's spec) that started at or after `since`."""
    query = select(Run).where(Run.started_at >= since).order_by(Run.started_at, Run.id)
    runs = list(session.scalars(query))
    if not runs:
        raise ReportError(f"no run started since {since.isoformat()}")
    spec_name = spec_name or runs[-1].spec_name
    return [r for r in runs if r.spec_name == spec_name]


def state(session: Session, run: Run, *, before: dt.datetime | None = None) -> dict[Cell, Outcome]:
    """Each cell's newest case among the runs of `run`'s spec that started no later than `run`
    (with `before`: that started before that moment)."""
    started = Run.started_at < before if before is not None else Run.started_at <= run.started_at
    rows = session.execute(
        select(Environment.hash, Case.model, Case.route, Case.exporter, Case.opset, Case.target, Case.artifact_id,
               Case.status, Case.signature,
               Case.run_id, Case.environment_id, Environment.name, Environment.lock_hash, Case.corpus_version,
               Case.runner_version)
        .join(Run, Run.id == Case.run_id)
        .join(Environment, Environment.id == Case.environment_id)
        .where(Run.spec_name == run.spec_name, started)
        .order_by(Run.started_at, Case.recorded_at, Case.id)
    )
    out: dict[Cell, Outcome] = {}
    for env_hash, model, route, exporter, opset, target, artifact, *rest in rows:
        out[(env_hash, model, route, exporter, opset, target, artifact)] = Outcome(*rest)
    return out


def versions(session: Session, environment_ids: set[int]) -> dict[int, dict[str, str]]:
    """The shown packages of each environment's lock (its requirements where nothing was resolved)."""
    return package_versions(session, environment_ids, SHOWN)


def first_failing(session: Session, cell: Cell, outcome: Outcome) -> int | None:
    """The environment with the lowest versions that shows this failure (same signature) for the cell's case."""
    _, model, route, exporter, opset, target, _artifact = cell
    same = Case.signature == outcome.signature if outcome.signature else Case.status == outcome.status
    env_ids = set(session.scalars(
        select(Case.environment_id).where(Case.model == model, Case.route == route, Case.exporter == exporter,
                                          Case.opset == opset, Case.target == target, same).distinct()
    ))
    if not env_ids:
        return None
    vers = versions(session, env_ids)
    return min(env_ids, key=lambda e: (rank_key(vers[e]), e))


def compare(
    session: Session, run: str | None = None, against: str | None = "previous", since: dt.datetime | None = None,
) -> Report:
    """Compare a run (default: the newest) with another run or the previous run of its spec; with `since`,
    compare all runs of the spec started since then (the shards of one run) with the state before."""
    if since is not None:
        since = as_utc(since)
        shards = runs_since(session, since, find_run(session, run).spec_name if run else None)
        now_run = shards[-1]
        before_run = session.scalars(
            select(Run).where(Run.spec_name == now_run.spec_name, Run.started_at < since)
            .order_by(Run.started_at.desc(), Run.id.desc()).limit(1)
        ).first()
        before_state = state(session, now_run, before=since)
    else:
        now_run = find_run(session, run)
        shards = [now_run]
        before_run = previous_run(session, now_run) if against in (None, "previous") else find_run(session, against)
        before_state = state(session, before_run) if before_run else {}
    report = Report(run=now_run, against=before_run, shards=shards, now=state(session, now_run), before=before_state)
    env_ids = {o.environment_id for o in (*report.now.values(), *report.before.values())}
    vers = versions(session, env_ids)
    for cell, now in sorted(report.now.items()):
        before = report.before.get(cell)
        if now.status != "pass" and (before is None or before.status == "pass"):
            first = first_failing(session, cell, now)
            if first is not None and first not in vers:
                vers.update(versions(session, {first}))
            report.new_failures.append(Change(cell, now, before, _changed(before, now, vers),
                                              _combination(vers.get(first, {})) if first else ""))
        elif now.status == "pass" and before is not None and before.status != "pass":
            report.new_passes.append(Change(cell, now, before, _changed(before, now, vers)))
    seen_before = {o.signature for o in report.before.values() if o.signature}
    by_signature: dict[str, list[Cell]] = defaultdict(list)
    for cell, now in report.now.items():
        if now.signature and now.signature not in seen_before:
            by_signature[now.signature].append(cell)
    report.new_signatures = [
        NewSignature(sig, len(cells), _cell_text(sorted(cells)[0], report.now[sorted(cells)[0]]))
        for sig, cells in sorted(by_signature.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    return report


def _combination(vers: dict[str, str]) -> str:
    return ", ".join(f"{name} {vers[name]}" for name in SHOWN if name in vers)


def _changed(before: Outcome | None, now: Outcome, vers: dict[int, dict[str, str]]) -> str:
    """What differs between the two cases' environments and code: versions first, then corpus and runner."""
    if before is None:
        return "new cell"
    old, new = vers.get(before.environment_id, {}), vers.get(now.environment_id, {})
    parts = [f"{n} {old.get(n, '–')}→{new.get(n, '–')}" for n in SHOWN if old.get(n) != new.get(n)]
    if before.corpus_version != now.corpus_version:
        parts.append("corpus changed")
    if before.runner_version != now.runner_version:
        parts.append(f"runner {before.runner_version}→{now.runner_version}")
    return ", ".join(parts) or "nothing recorded changed"


def _cell_text(cell: Cell, outcome: Outcome) -> str:
    _, model, route, exporter, opset, target, _artifact = cell
    route = f"{route} {target}" if target else route
    return f"{model} · {route} · {exporter} · opset {opset} in {outcome.environment}"
