"""The outcome tables kept in step with case: which cases are current, and each key's rows recomputed from them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, exists, func, insert, or_, select
from sqlalchemy.orm import Session

from store.models import Case, Environment, Outcome, OutcomeAny

# (environment id, model, route, exporter, target): one outcome row.
Key = tuple[int, str, str, str, str]


# Core aliases, made once with their columns at import: a statement built from them again costs microseconds,
# and reading them from many threads is safe. ORM aliased() cost milliseconds of column adaptation per request,
# and a shared one races that adaptation on its first concurrent use (issue 14).
_NEWER = Case.__table__.alias("newer").c


def current(case_: Any = Case) -> ColumnElement[bool]:
    """True for a case that is the current result of its identity: no newer one in the same environment.

    The identity is (environment, model, route, exporter, opset, target, artifact). An environment re-run under a new
    corpus (model hash) or runner version keeps its old rows, and uniqueness includes those two, so one identity
    can hold several results; the most recently recorded one (then the highest id) is the one that counts. A
    superseded pass must not keep a chain known good (issue 15). The probe is one range of uq_case_identity.
    A runtime environment of split chains holds one case per stored graph: the artifact is part of the identity.
    `case_` is Case or the columns of a Core alias of its table (`alias.c`).
    """
    # Memoised per `case_` (the class and the module-level aliases): an expression is immutable, so one built once
    # serves every statement and thread, where building it cost a request about a millisecond of coercion per use
    # (issue 14). Keyed by identity with the object held, so a short-lived alias cannot alias another's id.
    held = _CURRENT.get(id(case_))
    if held is not None and held[0] is case_:
        return held[1]
    expression = _current(case_)
    if len(_CURRENT) < 64:
        _CURRENT[id(case_)] = (case_, expression)
    return expression


_CURRENT: dict[int, tuple[Any, ColumnElement[bool]]] = {}


def _current(case_: Any) -> ColumnElement[bool]:
    newer = _NEWER
    return ~exists().where(
        newer.environment_id == case_.environment_id, newer.model == case_.model, newer.route == case_.route,
        newer.exporter == case_.exporter, newer.opset == case_.opset, newer.target == case_.target,
        newer.artifact_id.is_not_distinct_from(case_.artifact_id),
        or_(newer.recorded_at > case_.recorded_at,
            and_(newer.recorded_at == case_.recorded_at, newer.id > case_.id)),
    )


def summary(*where: ColumnElement[bool]) -> Select[*tuple[Any, ...]]:
    """The outcome rows of the joint cases matching `where`, computed from `case` (what refresh stores)."""
    key = (Case.route, Case.model, Case.environment_id, Case.exporter, Case.target)
    return (
        select(*key, func.count().filter(Case.status == "pass"),
               func.max(case((Case.status == "pass", Case.id))),
               func.max(case((Case.status.not_in(("pass", "skip")), Case.id))))
        # Joint results only: a runtime case of a split chain is evidence only together with its export side.
        .where(Case.artifact_id.is_(None), current(), *where)
        .group_by(*key)
        .having(func.max(case((Case.status != "skip", Case.id))).is_not(None))
    )


def folded(*where: ColumnElement[bool]) -> Select[*tuple[Any, ...]]:
    """The outcome_any rows of the outcome rows matching `where`: folded over exporters and targets."""
    key = (Outcome.route, Outcome.model, Outcome.environment_id)
    return select(*key, func.max(Outcome.pass_case_id), func.max(Outcome.fail_case_id)).where(*where).group_by(*key)


_COLUMNS = ("route", "model", "environment_id", "exporter", "target", "passed", "pass_case_id", "fail_case_id")
_ANY_COLUMNS = ("route", "model", "environment_id", "pass_case_id", "fail_case_id")


def refresh(session: Session, environment_ids: Collection[int]) -> None:
    """Recompute the outcome rows of these environments from their cases, in the caller's transaction."""
    ids = sorted(set(environment_ids))
    _lock(session, ids)
    for i in range(0, len(ids), 500):  # stay under every backend's bound-parameter limit
        chunk = ids[i: i + 500]
        session.execute(delete(Outcome).where(Outcome.environment_id.in_(chunk)))
        session.execute(insert(Outcome).from_select(_COLUMNS, summary(Case.environment_id.in_(chunk))))
        session.execute(delete(OutcomeAny).where(OutcomeAny.environment_id.in_(chunk)))
        session.execute(insert(OutcomeAny).from_select(_ANY_COLUMNS, folded(Outcome.environment_id.in_(chunk))))


def refresh_key(session: Session, key: Key) -> None:
    """Recompute one outcome row, and the outcome_any row it folds into: what recording one case changes."""
    env_id, model, route, exporter, target = key
    _lock(session, [env_id])
    session.execute(delete(Outcome).where(
        Outcome.environment_id == env_id, Outcome.model == model, Outcome.route == route,
        Outcome.exporter == exporter, Outcome.target == target,
    ))
    session.execute(insert(Outcome).from_select(_COLUMNS, summary(
        Case.environment_id == env_id, Case.model == model, Case.route == route, Case.exporter == exporter,
        Case.target == target,
    )))
    session.execute(delete(OutcomeAny).where(
        OutcomeAny.environment_id == env_id, OutcomeAny.model == model, OutcomeAny.route == route,
    ))
    session.execute(insert(OutcomeAny).from_select(_ANY_COLUMNS, folded(
        Outcome.environment_id == env_id, Outcome.model == model, Outcome.route == route,
    )))


def _lock(session: Session, env_ids: list[int]) -> None:
    """Serialise refreshes of one environment on PostgreSQL (SQLite serialises writers anyway).

    Two writers that each inserted a case of one key and then recompute it would each miss the other's
    uncommitted case, and the later commit would store a row without the earlier case. Holding the environment
    row (FOR NO KEY UPDATE: it does not block the foreign-key checks of concurrent inserts) makes the second
    wait, and under READ COMMITTED its recomputation then sees the first one's case. Ids in order: no deadlock.
    """
    if session.get_bind().dialect.name != "postgresql" or not env_ids:
        return
    for i in range(0, len(env_ids), 500):
        session.execute(select(Environment.id).where(Environment.id.in_(env_ids[i: i + 500]))
                        .order_by(Environment.id).with_for_update(key_share=True))
