"""Verdicts on pins (known-good, known-bad, untested), and why a chains answer is what it is: read-only queries."""

from __future__ import annotations

import datetime as dt
import heapq
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from api import queries
from api.schemas import (
    CheckOut,
    FailedCase,
    Fix,
    MeasuredCounts,
    ModelVerdict,
    Nearby,
    NearMiss,
    PinDiff,
    SignatureSeen,
    Verdict,
)
from matrix.routes import ALIASES, EXPORTERS, KEY_PACKAGES, ROUTE_PACKAGES, ROUTES, TARGETS
from store.models import Case, Environment, Package, Step
from store.models import Outcome as OutcomeRow
from store.pins import FilePin, Pins

NEAREST = 3  # environments shown for an untested verdict
NEAR_MISSES = 5  # failing environments shown beside a chains answer
_WORST: dict[Verdict, int] = {"known-good": 0, "untested": 1, "known-bad": 2}


# -- what was measured ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One environment's result for one model on the route: passed anywhere, or its newest failure.

    The case's run, exporter and signature are read only for the outcomes an answer shows (`_details`): an answer
    weighs every measured environment but cites a handful.
    """

    status: str  # "pass" | "fail"
    case_id: int
    run_id: str = ""
    exporter: str = ""
    signature: str | None = None
    step: str | None = None  # the first step that was not ok, and its message
    message: str | None = None
    loaded: bool = False


@dataclass
class Measured:
    """Per environment: python, the packages that matter, its ranking place, and each requested model's outcome."""

    env_id: int  # a split pair's production (runtime) side
    python: str
    versions: dict[str, str]
    place: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    name: str = ""  # a split pair's "export name → runtime name"
    research_id: int | None = None  # a split pair's research (export) side; None in a joint environment
    research_place: int = -1  # its ranking place: pairs that share a runtime side are ordered by their torch
    # The differences from one file's pins and their distance, kept by _scored: a check weighs every environment
    # several times (per model, for the nearest and for the fix) against the same pins.
    scored: tuple[Pins, list[PinDiff], tuple[int, int, int, int]] | None = field(default=None, repr=False)

    @property
    def key(self) -> int:
        """Unique among what `measured` returns: a joint environment's id; a split pair's negative pairing."""
        return self.env_id if self.research_id is None else -(self.research_id * 2**31 + self.env_id)

    @property
    def kind(self) -> Literal["joint", "split"]:
        return "joint" if self.research_id is None else "split"


@lru_cache(maxsize=64)
def _matters(route: str) -> tuple[str, ...]:
    """KEY_PACKAGES plus the route's own converter (nobuco is not a key package of the other routes)."""
    return tuple(dict.fromkeys((*KEY_PACKAGES, *ROUTE_PACKAGES.get(route, ()))))


def measured(session: Session, models: Iterable[str], route: str, exporter: str | None,
             facts: queries.FactsCache | None = None, target: str | None = None) -> dict[int, Measured]:
    """Every environment with a recorded case of `models` on `route`; a skipped case is no evidence either way.

    Per (environment, model): the newest current pass, else the newest current failure, of joint environments
    (a superseded result is no evidence, issue 15; a runtime environment's case of a split chain is evidence only
    together with its export side). One aggregate over the outcome table (store/outcomes.py), one row per
    environment with a pass and a failure column per model, so the cost follows environments, not cases.
    """
    models = tuple(models)
    columns = []
    for model in models:
        columns += [func.max(case((OutcomeRow.model == model, OutcomeRow.pass_case_id))),
                    func.max(case((OutcomeRow.model == model, OutcomeRow.fail_case_id)))]
    query = select(OutcomeRow.environment_id, *columns).where(OutcomeRow.route == route,
                                                             OutcomeRow.model.in_(models))
    if exporter:
        query = query.where(OutcomeRow.exporter == exporter)
    if target:
        query = query.where(OutcomeRow.target == target)
    chosen: dict[int, dict[str, Outcome]] = {}
    for env_id, *ids in session.connection().execute(query.group_by(OutcomeRow.environment_id)):
        found = {}
        for i, model in enumerate(models):
            passed, failed = ids[2 * i], ids[2 * i + 1]
            if passed is not None:  # a pass anywhere outweighs a failure
                found[model] = Outcome("pass", passed)
            elif failed is not None:
                found[model] = Outcome("fail", failed)
        if found:
            chosen[env_id] = found
    known, place = (facts or queries.FactsCache()).get(session, chosen)
    out = {e: Measured(e, f.python, dict(f.versions), place[e], chosen[e], name=f.name) for e, f in known.items()}
    extra = [n for n in ROUTE_PACKAGES.get(route, ()) if n not in KEY_PACKAGES]
    if extra and out:
        for env_id, name, version in session.execute(
            select(Package.environment_id, Package.name, Package.version).where(Package.name.in_(extra))
        ):
            if env_id in out:
                out[env_id].versions[name] = version
    for pair in _split_pairs(session, models, route, exporter, target, facts):
        out[pair.key] = pair
    return out


def _split_pairs(session: Session, models: tuple[str, ...], route: str, exporter: str | None, target: str | None,
                 facts: queries.FactsCache | None) -> list[Measured]:
    """Split chains as measured environments: each (export, runtime) pair whose runtime side ran a graph its export
    side stored. Versions are both sides' (torch from research, the rest from production), python the production
    side's; per model the pair's newest pass, else its newest failure, as for joint environments."""
    runtime, export = aliased(Case), aliased(Case)
    conditions = [runtime.model.in_(models), runtime.route == route, runtime.artifact_id.is_not(None),
                  runtime.status != "skip", export.route == "export", export.status == "pass",
                  export.artifact_id == runtime.artifact_id, export.model == runtime.model,
                  queries.current(runtime), queries.current(export)]
    if exporter:
        conditions.append(export.exporter == exporter)
    if target:
        conditions.append(runtime.target == target)
    chosen: dict[tuple[int, int, str], tuple[str, int]] = {}
    for e, r, model, status, case_id in session.connection().execute(
        select(export.environment_id, runtime.environment_id, runtime.model, runtime.status, runtime.id)
        .where(*conditions).order_by(runtime.id)
    ):
        held = chosen.get((e, r, model))
        if held is None or held[0] != "pass" or status == "pass":  # the newest pass, else the newest failure
            chosen[e, r, model] = ("pass" if status == "pass" else "fail", case_id)
    if not chosen:
        return []
    known, place = (facts or queries.FactsCache()).get(session, {i for e, r, _ in chosen for i in (e, r)})
    # The route's own converter, as for joint environments: one read for every runtime side.
    extra = [n for n in ROUTE_PACKAGES.get(route, ()) if n not in KEY_PACKAGES]
    converters: dict[int, dict[str, str]] = defaultdict(dict)
    if extra:
        for env_id, name, version in session.execute(select(Package.environment_id, Package.name, Package.version)
                                                     .where(Package.environment_id.in_({r for _, r, _ in chosen}),
                                                            Package.name.in_(extra))):
            converters[env_id][name] = version
    pairs: dict[tuple[int, int], Measured] = {}
    for (e, r, model), (status, case_id) in chosen.items():
        if e not in known or r not in known:
            continue
        pair = pairs.get((e, r))
        if pair is None:
            pair = pairs[e, r] = Measured(r, known[r].python,
                                          {**known[r].versions, **known[e].versions, **converters[r]}, place[r],
                                          name=f"{known[e].name} → {known[r].name}", research_id=e,
                                          research_place=place[e])
        pair.outcomes[model] = Outcome(status, case_id)
    return list(pairs.values())


def complete(envs: dict[int, Measured], models: Iterable[str]) -> list[int]:
    """The environments in which every one of `models` passed: the candidates of known_good_chain_page, when no
    target narrows them (measured() weighs every target)."""
    return [e for e, m in envs.items() if m.research_id is None  # split chains are answered on their own
            and all(m.outcomes.get(x) and m.outcomes[x].status == "pass" for x in models)]


def _details(session: Session, outcomes: Iterable[Outcome]) -> None:
    """Fill in the run, exporter, signature and first step that was not ok of the outcomes an answer shows."""
    todo: dict[int, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if not o.loaded:  # one runtime case stands behind every split pair whose export sides stored its graph
            todo[o.case_id].append(o)
    ids = sorted(todo)
    for i in range(0, len(ids), 500):
        for row in session.connection().execute(
            select(Case.id, Case.run_id, Case.exporter, Case.signature, Step.name, Step.message)
            .outerjoin(Step, (Step.case_id == Case.id) & (Step.status != "ok"))
            .where(Case.id.in_(ids[i: i + 500])).order_by(Case.id, Step.ordinal)
        ):
            for o in todo[row.id]:
                if not o.loaded:  # the first row of a case carries its first step that was not ok
                    o.run_id, o.exporter, o.signature, o.loaded = row.run_id, row.exporter, row.signature, True
                    o.step, o.message = row.name, row.message


# -- distance between pins and an environment ----------------------------------------------------------------------

def _tf(versions: dict[str, str]) -> tuple[str, str] | None:
    """TensorFlow under either name: to a user tensorflow and tensorflow-cpu are one framework."""
    for name in ALIASES["tensorflow"]:
        if name in versions:
            return name, versions[name]
    return None


def differences(pins: Pins, env: Measured, route: str) -> list[PinDiff]:
    """The pins (of the packages that matter) that `env` does not satisfy, python first, in a chain's reading order."""
    diffs: list[PinDiff] = []
    if pins.python and env.python != pins.python:
        diffs.append(PinDiff(package="python", yours=pins.python, measured=env.python))
    elif not pins.python and pins.requires_python and not FilePin("python", pins.requires_python, 0).allows(
            f"{env.python}.0"):
        diffs.append(PinDiff(package="python", yours=pins.requires_python, measured=env.python))
    for name in _matters(route):
        if name == "tensorflow-cpu":
            continue  # compared under "tensorflow", either name on either side
        if name == "tensorflow":
            pin = next((pins.pins[n] for n in ALIASES["tensorflow"] if n in pins.pins), None)
            have = (_tf(env.versions) or (name, None))[1]
        else:
            pin, have = pins.pins.get(name), env.versions.get(name)
        if pin is not None and (have is None or not pin.allows(have)):
            diffs.append(PinDiff(package=pin.name, yours=_shown(pin), measured=have))
    return diffs


def _shown(pin: FilePin) -> str:
    return pin.version or pin.specifier or "(unpinned)"


def _distance(diffs: list[PinDiff]) -> tuple[int, int, int, int]:
    """(packages changed, then |Δmajor|, |Δminor|, |Δmicro| summed): fewest changes first, then smallest moves."""
    total = [0, 0, 0]
    for d in diffs:
        a, b = _release(d.yours), _release(d.measured)
        for i in range(3):
            total[i] += abs(a[i] - b[i]) if a and b else 0
    return (len(diffs), total[0], total[1], total[2])


@lru_cache(maxsize=4096)
def _release(text: str | None) -> tuple[int, int, int] | None:
    try:
        r = Version(text or "").release
    except InvalidVersion:
        return None
    return (*r, 0, 0, 0)[:3]  # type: ignore[return-value]


def summary(diffs: list[PinDiff]) -> str:
    """'onnx2tf 1.28.8 → 1.26.9, python 3.11 → 3.12', in the order a person reads a chain."""
    if not diffs:
        return "no change"
    parts = []
    for d in diffs:
        if d.measured is None:
            parts.append(f"remove {d.package} {d.yours}")
        elif d.yours is None:
            parts.append(f"add {d.package} {d.measured}")
        else:
            parts.append(f"{d.package} {d.yours} → {d.measured}")
    return ", ".join(parts)


def _scored(pins: Pins, env: Measured, route: str) -> tuple[list[PinDiff], tuple[int, int, int, int]]:
    """differences() and their _distance, computed once per environment and file (Measured is per route)."""
    if env.scored is None or env.scored[0] is not pins:
        diffs = differences(pins, env, route)
        env.scored = (pins, diffs, _distance(diffs))
    return env.scored[1], env.scored[2]


def _closest(pins: Pins, route: str, envs: Iterable[Measured], n: int) -> list[tuple[Measured, list[PinDiff]]]:
    """The `n` environments closest to the pins; among equals the newest versions (highest place) first."""
    nearest = heapq.nsmallest(n, envs, key=lambda m: (_scored(pins, m, route)[1], -m.place, -m.research_place))
    return [(m, _scored(pins, m, route)[0]) for m in nearest]


def _fix(session: Session, pins: Pins, route: str, envs: Iterable[Measured], models: tuple[str, ...]) -> Fix | None:
    good = [m for m in envs if all(m.outcomes.get(x) and m.outcomes[x].status == "pass" for x in models)]
    if not good:
        return None
    best, diffs = _closest(pins, route, good, 1)[0]
    newest = max((best.outcomes[x] for x in models), key=lambda o: o.case_id)
    _details(session, [newest])
    return Fix(environment_id=best.env_id, environment=best.name, python=best.python, run_id=newest.run_id,
               changes=diffs, summary=summary(diffs))


# -- the verdict ---------------------------------------------------------------------------------------------------

def routes_for(pins: Pins) -> list[str]:
    """The routes whose converter (or runtime) the file pins, in the routes table's order."""
    return [r for r in ROUTES if all(p in pins.pins for p in ROUTE_PACKAGES.get(r, ()))]


def check(session: Session, pins: Pins, models: Iterable[str], routes: Iterable[str] | None = None,
          exporter: str | None = None, facts: queries.FactsCache | None = None,
          target: str | None = None) -> CheckOut:
    """Per model and route: known-good (cite it), known-bad (step, signature, evidence, span) or untested (nearest).

    Routes default to those the file pins the packages of. Raises QueryError for names nothing was recorded for.
    """
    models = tuple(dict.fromkeys(models))
    if not models:
        raise queries.QueryError("models", "expected one or more comma-separated model names")
    chosen = list(dict.fromkeys(routes)) if routes else routes_for(pins)
    if not chosen:
        raise queries.QueryError("route", f"{pins.path} pins none of the routes' packages "
                                          f"({', '.join(p for r in ROUTES for p in ROUTE_PACKAGES[r])}); "
                                          f"name one: {', '.join(ROUTES)}")
    for route in chosen:
        if route not in ROUTES:
            raise queries.QueryError("route", f"expected one of {', '.join(ROUTES)}, got {route!r}")
    if exporter is not None and exporter not in EXPORTERS:
        raise queries.QueryError("exporter", f"expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    known_targets = sorted({t for r in chosen for t in TARGETS.get(r, ())})
    if target is not None and target not in known_targets:
        raise queries.QueryError("target", f"expected one of {', '.join(known_targets) or 'nothing: no route of '}"
                                           f"{'' if known_targets else ', '.join(chosen) + ' has targets'}, got "
                                           f"{target!r}")
    unknown = queries.unknown_models(session, models)
    if unknown:
        raise queries.QueryError("models", f"no results recorded for {unknown}; known: "
                                           f"{sorted(queries.known_models(session))}")
    if not any(n in pins.pins for r in chosen for n in _matters(r)):
        raise queries.QueryError("file", f"{pins.path} pins none of {', '.join(_matters(chosen[0]))}: nothing to "
                                         "compare with what was measured")
    results: list[ModelVerdict] = []
    fixes: dict[str, Fix | None] = {}
    scored: dict[tuple[int, tuple[str, ...]], tuple[Pins, list[PinDiff], tuple[int, int, int, int]]] = {}
    for route in chosen:
        envs = measured(session, models, route, exporter, facts, target)
        for m in envs.values():  # routes that weigh the same packages share each environment's differences
            m.scored = scored.get((m.key, _matters(route)))
        for model in models:
            results.append(_model_verdict(session, pins, model, route, exporter, envs))
        fixes[route] = _fix(session, pins, route, envs.values(), models)
        scored.update({(m.key, _matters(route)): m.scored for m in envs.values() if m.scored is not None})
    shown = {n: _shown(p) for n, p in pins.pins.items() if any(n in _matters(r) for r in chosen)}
    return CheckOut(
        file=pins.path, format=pins.kind, python=pins.python, pins=shown, models=list(models), routes=chosen,
        exporter=exporter, verdict=max((r.verdict for r in results), key=_WORST.__getitem__), results=results,
        fixes=fixes,
    )


def _model_verdict(session: Session, pins: Pins, model: str, route: str, exporter: str | None,
                   envs: dict[int, Measured]) -> ModelVerdict:
    tried = [m for m in envs.values() if model in m.outcomes]
    matching = [m for m in tried if not _scored(pins, m, route)[0]]
    passed = sorted((m for m in matching if m.outcomes[model].status == "pass"),
                    key=lambda m: (-m.place, -m.research_place))
    failed = sorted((m for m in matching if m.outcomes[model].status == "fail"),
                    key=lambda m: (-m.place, -m.research_place))
    verdict = ModelVerdict(
        model=model, route=route, exporter=exporter, verdict="untested", environment_id=None, environment=None,
        run_id=None, matched={"passed": len(passed), "failed": len(failed)}, nearest=[],
        fix=_fix(session, pins, route, tried, (model,)),
    )
    # A pass anywhere the pins match outweighs a failure elsewhere: the failing twin differs in what the file
    # leaves unpinned (another exporter, or a package it does not name).
    evidence = passed[0] if passed else failed[0] if failed else None
    if evidence is None:
        nearest = _closest(pins, route, tried, NEAREST)
        _details(session, [m.outcomes[model] for m, _ in nearest])
        verdict.nearest = [
            Nearby(environment_id=m.env_id, environment=m.name, python=m.python,
                   status="pass" if m.outcomes[model].status == "pass" else "fail",
                   signature=m.outcomes[model].signature, differs=diffs)
            for m, diffs in nearest
        ]
        return verdict
    outcome = evidence.outcomes[model]
    _details(session, [outcome])
    verdict.environment_id, verdict.environment = evidence.env_id, evidence.name
    verdict.kind, verdict.research_environment_id = evidence.kind, evidence.research_id
    verdict.run_id, verdict.exporter = outcome.run_id, outcome.exporter
    if passed:
        verdict.verdict = "known-good"
        return verdict
    verdict.verdict = "known-bad"
    verdict.step, verdict.message = outcome.step, outcome.message
    verdict.signature = outcome.signature
    verdict.seen = signature_seen(session, outcome.signature, route)
    return verdict


def signature_seen(session: Session, signature: str | None, route: str) -> SignatureSeen | None:
    """Where `signature` was seen on `route` (any model): dates, environments, and the span of each key version."""
    if signature is None:
        return None
    rows = session.execute(
        select(Case.environment_id, func.min(Case.recorded_at), func.max(Case.recorded_at))
        .where(Case.signature == signature, Case.route == route).group_by(Case.environment_id)
    ).all()
    if not rows:
        return None
    env_ids = [r[0] for r in rows]
    spans: dict[str, set[str]] = defaultdict(set)
    for name, version in session.execute(
        select(Package.name, Package.version).where(Package.environment_id.in_(env_ids),
                                                    Package.name.in_(_matters(route)))
    ):
        spans["tensorflow" if name in ALIASES else name].add(version)
    first: dt.datetime = min(r[1] for r in rows)
    last: dt.datetime = max(r[2] for r in rows)
    return SignatureSeen(
        environments=len(env_ids), first_seen=first, last_seen=last,
        versions={n: [min(v, key=queries.version_key), max(v, key=queries.version_key)]
                  for n, v in sorted(spans.items(), key=lambda kv: _matters(route).index(kv[0])
                                     if kv[0] in _matters(route) else 99)},
    )


# -- why a chains answer is what it is -----------------------------------------------------------------------------

def explain_chains(session: Session, query: queries.ChainQuery, facts: queries.FactsCache | None = None,
                   envs: dict[int, Measured] | None = None) -> tuple[list[NearMiss], MeasuredCounts]:
    """The closest failing environments (most requested models passed, then newest) and how much was measured.

    An empty chains answer then says whether nothing was measured, nothing resolved, or everything failed.
    `envs`: measured() for the query, when the caller has it already.
    """
    facts = facts or queries.FactsCache()
    if envs is None:
        envs = measured(session, query.models, query.route, query.exporter, facts, query.target)
    if query.python:
        envs = {e: m for e, m in envs.items() if m.python == query.python}
    tried = {e: m for e, m in envs.items() if m.outcomes}
    misses = [m for m in tried.values() if not all(
        query_model in m.outcomes and m.outcomes[query_model].status == "pass" for query_model in query.models)]
    wanted = [m for m in misses if all(_meets(m.versions, r) for r in query.require)] or misses
    wanted.sort(key=lambda m: (-sum(o.status == "pass" for o in m.outcomes.values()), -m.place, -m.research_place))
    shown = wanted[:NEAR_MISSES]
    _details(session, [o for m in shown for o in m.outcomes.values()])
    near = [
        NearMiss(
            environment_id=m.env_id, name=m.name, python=m.python,
            versions={n: v for n, v in m.versions.items() if n in KEY_PACKAGES},
            passed=[x for x in query.models if x in m.outcomes and m.outcomes[x].status == "pass"],
            failed=[FailedCase(model=x, exporter=m.outcomes[x].exporter,
                               step=m.outcomes[x].step,
                               signature=m.outcomes[x].signature)
                    for x in query.models if x in m.outcomes and m.outcomes[x].status == "fail"],
        )
        for m in shown
    ]
    ran = {i for m in tried.values() for i in (m.env_id, m.research_id) if i is not None}
    return near, _counts(session, query, ran, facts)


def _meets(versions: dict[str, str], req: Requirement) -> bool:
    return any(n in versions and req.specifier.contains(versions[n], prereleases=True)
               for n in queries.aliases(req.name))


def _counts(session: Session, query: queries.ChainQuery, measured_ids: set[int],
            facts: queries.FactsCache) -> MeasuredCounts:
    env_query = select(Environment.id, Environment.lock_hash.is_not(None), Environment.signature.is_not(None))
    if query.python:
        env_query = env_query.where(Environment.python == query.python)
    rows = session.connection().execute(env_query).all()
    requested = facts.requested(session, [r[0] for r in rows])  # read once per environment and process
    resolved_only = unresolvable = 0
    for env_id, locked, signed in rows:
        if env_id in measured_ids or not queries._requests_route(list(requested[env_id]), query.route):
            continue
        if locked:
            resolved_only += 1
        elif signed:  # a conflict, or no interpreter: recorded with the reason
            unresolvable += 1
    return MeasuredCounts(measured=len(measured_ids), resolved_only=resolved_only, unresolvable=unresolvable)
