"""Verdicts on pins (known-good, known-bad, untested), and why a chains answer is what it is: read-only queries."""

from __future__ import annotations

import datetime as dt
import heapq
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from packaging.version import InvalidVersion, Version
from sqlalchemy import CompoundSelect, Integer, String, bindparam, case, cast, func, null, select, union_all
from sqlalchemy.orm import Session

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
from store.models import Case, Environment, OutcomeAny, Step
from store.models import Outcome as OutcomeRow
from store.pins import FilePin, Pins

NEAREST = 3  # environments shown for an untested verdict
NEAR_MISSES = 5  # failing environments shown beside a chains answer
_WORST: dict[Verdict, int] = {"known-good": 0, "untested": 1, "known-bad": 2}


# -- what was measured ---------------------------------------------------------------------------------------------

@dataclass(slots=True)
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


# One pin the environment does not satisfy: (package, yours, measured), made a PinDiff only where an answer shows it.
Diff = tuple[str, str | None, str | None]
Distance = tuple[int, int, int, int]


@dataclass(slots=True)
class Measured:
    """Per environment: python, the packages that matter, its ranking place, and each requested model's outcome."""

    env_id: int  # a split pair's production (runtime) side
    python: str
    versions: dict[str, str]  # shared with the facts cache unless the route adds packages: read, never written
    place: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    name: str = ""  # a split pair's "export name → runtime name"
    research_id: int | None = None  # a split pair's research (export) side; None in a joint environment
    research_place: int = -1  # its ranking place: pairs that share a runtime side are ordered by their torch

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
    return measured_routes(session, models, (route,), exporter, facts, target)[route]


# What measured_routes reads, per number of models and filter: built once, bound per request. Joint rows (the outcome
# aggregate: route, environment, then a pass and a failure column per model) and split rows (route, runtime side,
# export side, model, status, case) in one statement, a round trip fewer; each kind leaves the other's columns null.
@lru_cache(maxsize=256)
def _measured_query(n_models: int, exporter: bool, target: bool,
                    environments: Literal["", "every", "python"] = "") -> CompoundSelect[*tuple[Any, ...]]:
    # Without an exporter or target, the rows already folded over them (a third to a ninth as many to read).
    table: Any = OutcomeRow if exporter or target else OutcomeAny
    columns = []
    for i in range(n_models):
        model = bindparam(f"model_{i}", type_=String())
        columns += [func.max(case((table.model == model, table.pass_case_id))),
                    func.max(case((table.model == model, table.fail_case_id)))]
    joint = select(table.route, table.environment_id, *_nulls(Integer, String, String, Integer), *columns).where(
        table.route.in_(bindparam("routes", expanding=True)), table.model.in_(bindparam("models", expanding=True)))
    if exporter:
        joint = joint.where(OutcomeRow.exporter == bindparam("exporter"))
    if target:
        joint = joint.where(OutcomeRow.target == bindparam("target"))
    joint = joint.group_by(table.route, table.environment_id)
    # Split pairs: the runtime cases of some routes, each with an export side that stored the graph it ran.
    runtime, export = _RUNTIME, _EXPORT
    conditions = [runtime.model.in_(bindparam("models", expanding=True)),
                  runtime.route.in_(bindparam("routes", expanding=True)), runtime.artifact_id.is_not(None),
                  runtime.status != "skip", export.route == "export", export.status == "pass",
                  export.artifact_id == runtime.artifact_id, export.model == runtime.model,
                  queries.current(runtime), queries.current(export)]
    if exporter:
        conditions.append(export.exporter == bindparam("exporter"))
    if target:
        conditions.append(runtime.target == bindparam("target"))
    split = select(runtime.route, runtime.environment_id, export.environment_id, runtime.model, runtime.status,
                   runtime.id, *_nulls(*[Integer] * (2 * n_models))).where(*conditions)
    if not environments:
        return union_all(joint, split)
    # What a chains answer counts beside (explain_chains), in the same round trip: every environment (of one python),
    # with no route, and whether it is locked and signed in the first model's two columns. Each round trip is a point
    # where a busy machine hands the CPU to someone else (issue 14).
    every = select(cast(null(), String), Environment.id, *_nulls(Integer, String, String, Integer),
                   case((Environment.lock_hash.is_not(None), 1), else_=0),
                   case((Environment.signature.is_not(None), 1), else_=0), *_nulls(*[Integer] * (2 * n_models - 2)))
    if environments == "python":
        every = every.where(Environment.python == bindparam("python"))
    return union_all(joint, split, every)


def _nulls(*types: Any) -> list[Any]:
    return [cast(null(), t) for t in types]


_RUNTIME, _EXPORT = Case.__table__.alias("runtime").c, Case.__table__.alias("export").c


# An environment as explain_chains counts it: id, locked (resolved), signed (a reason it did not resolve or run).
EnvironmentRow = tuple[int, bool, bool]


def measured_routes(session: Session, models: Iterable[str], routes: Iterable[str], exporter: str | None,
                    facts: queries.FactsCache | None = None, target: str | None = None,
                    ) -> dict[str, dict[int, Measured]]:
    """measured() for several routes at once, joint environments and split pairs: one statement for all of them
    (a check weighs every route its file pins)."""
    return _measured_routes(session, tuple(models), routes, exporter, facts, target)[0]


def measured_chains(session: Session, query: queries.ChainQuery, facts: queries.FactsCache | None = None,
                    ) -> tuple[dict[int, Measured], list[EnvironmentRow]]:
    """measured() for a chains query, and the environments explain_chains counts (of the query's python), read in
    the same statement."""
    found, environments = _measured_routes(session, query.models, (query.route,), query.exporter, facts, query.target,
                                           environments="python" if query.python else "every", python=query.python)
    return found[query.route], environments


def _measured_routes(session: Session, models: tuple[str, ...], routes: Iterable[str], exporter: str | None,
                     facts: queries.FactsCache | None, target: str | None,
                     environments: Literal["", "every", "python"] = "", python: str | None = None,
                     ) -> tuple[dict[str, dict[int, Measured]], list[EnvironmentRow]]:
    routes = tuple(dict.fromkeys(routes))
    facts = facts or queries.FactsCache()
    params: dict[str, Any] = {f"model_{i}": m for i, m in enumerate(models)}
    params.update(routes=list(routes), models=list(models), exporter=exporter, target=target, python=python)
    rows = session.connection().execute(
        _measured_query(len(models), bool(exporter), bool(target), environments), params).all()
    known, place = facts.every(session, {row[1] for row in rows if row[2] is None and row[0] is not None})
    out: dict[str, dict[int, Measured]] = {r: {} for r in routes}
    split_rows = []
    every: list[EnvironmentRow] = []
    columns = [(name, 6 + 2 * i) for i, name in enumerate(models)]  # each model's pass column; its failure's next
    for row in rows:  # a loop over every measured environment of every route: kept lean (issue 14)
        env_id = row[1]
        if row[0] is None:  # an environment row (_measured_query's `every`)
            every.append((env_id, bool(row[6]), bool(row[7])))
            continue
        if row[2] is not None:
            split_rows.append((row[5], row[0], row[2], env_id, row[3], row[4]))
            continue
        f = known.get(env_id)
        if f is None:
            continue
        found = {}
        for name, i in columns:
            if (passed := row[i]) is not None:  # a pass anywhere outweighs a failure
                found[name] = Outcome("pass", passed)
            elif (failed := row[i + 1]) is not None:
                found[name] = Outcome("fail", failed)
        if found:  # the facts' dict is shared, not copied: `versions` is only read (see below)
            out[row[0]][env_id] = Measured(env_id, f.python, f.versions, place[env_id], found, f.name)
    for route in routes:
        envs = out[route]
        if envs and any(n not in KEY_PACKAGES for n in ROUTE_PACKAGES.get(route, ())):
            # The route's own converter joins the versions: dicts the facts cache holds per route and environment,
            # shared (read only), where a read of every environment's converter row and a copy of every
            # environment's versions per request were what the route cost beyond onnxruntime (issue 14).
            versions = facts.route_versions(session, envs, route)
            for env_id, m in envs.items():
                m.versions = versions[env_id]
    for route, pairs in _split_pairs(session, sorted(split_rows), facts).items():
        for pair in pairs:
            out[route][pair.key] = pair
    return out, every


def _split_pairs(session: Session, rows: list[tuple[int, str, int, int, str, str]],
                 facts: queries.FactsCache) -> dict[str, list[Measured]]:
    """Split chains as measured environments, per route: each (export, runtime) pair whose runtime side ran a graph
    its export side stored. Versions are both sides' (torch from research, the rest from production), python the
    production side's; per model the pair's newest pass, else its newest failure, as for joint environments.
    `rows`: (runtime case, route, export side, runtime side, model, status), in case order."""
    chosen: dict[tuple[str, int, int, str], tuple[str, int]] = {}
    for case_id, route, e, r, model, status in rows:
        held = chosen.get((route, e, r, model))
        if held is None or held[0] != "pass" or status == "pass":  # the newest pass, else the newest failure
            chosen[route, e, r, model] = ("pass" if status == "pass" else "fail", case_id)
    if not chosen:
        return {}
    known, place = facts.get(session, {i for _, e, r, _ in chosen for i in (e, r)})
    # The route's own converter, as for joint environments: from the facts cache, per runtime side.
    runtimes: dict[str, set[int]] = defaultdict(set)
    for route, _, r, _ in chosen:
        runtimes[route].add(r)
    weighed = {route: facts.route_versions(session, ids, route) for route, ids in runtimes.items()}
    pairs: dict[tuple[str, int, int], Measured] = {}
    for (route, e, r, model), (status, case_id) in chosen.items():
        if e not in known or r not in known:
            continue
        pair = pairs.get((route, e, r))
        if pair is None:
            own = {n: v for n, v in weighed[route][r].items() if n not in KEY_PACKAGES}
            pair = pairs[route, e, r] = Measured(r, known[r].python, {**known[r].versions, **known[e].versions, **own},
                                                 place[r], name=f"{known[e].name} → {known[r].name}", research_id=e,
                                                 research_place=place[e])
        pair.outcomes[model] = Outcome(status, case_id)
    out: dict[str, list[Measured]] = defaultdict(list)
    for (route, _, _), pair in pairs.items():
        out[route].append(pair)
    return out


def complete(envs: dict[int, Measured], models: Iterable[str]) -> list[int]:
    """The environments in which every one of `models` passed: the candidates of known_good_chain_page, when no
    target narrows them (measured() weighs every target)."""
    return [e for e, m in envs.items() if m.research_id is None  # split chains are answered on their own
            and all(m.outcomes.get(x) and m.outcomes[x].status == "pass" for x in models)]


def complete_pairs(envs: dict[int, Measured], models: Iterable[str]) -> list[tuple[int, int]]:
    """The (export, runtime) pairs in which every one of `models` passed: the candidates of split_chain_page, when
    no target narrows them (split_chain_page weighs every target)."""
    return [(m.research_id, m.env_id) for m in envs.values() if m.research_id is not None
            and all(m.outcomes.get(x) and m.outcomes[x].status == "pass" for x in models)]


# Built once, bound per request: building statements per request cost an answer a millisecond of coercion (issue 14).
_DETAILS = (
    select(Case.id, Case.run_id, Case.exporter, Case.signature, Step.name, Step.message)
    .outerjoin(Step, (Step.case_id == Case.id) & (Step.status != "ok"))
    .where(Case.id.in_(bindparam("ids", expanding=True))).order_by(Case.id, Step.ordinal)
)


def _details(session: Session, outcomes: Iterable[Outcome]) -> None:
    """Fill in the run, exporter, signature and first step that was not ok of the outcomes an answer shows."""
    todo: dict[int, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if not o.loaded:  # one case may stand behind several outcomes (one per route of a check)
            todo[o.case_id].append(o)
    ids = sorted(todo)
    for i in range(0, len(ids), 500):
        for row in session.connection().execute(_DETAILS, {"ids": ids[i: i + 500]}):
            for o in todo[row.id]:
                if not o.loaded:  # the first row of a case carries its first step that was not ok
                    o.run_id, o.exporter, o.signature, o.loaded = row.run_id, row.exporter, row.signature, True
                    o.step, o.message = row.name, row.message


# -- distance between pins and an environment ----------------------------------------------------------------------

class _Comparer:
    """One file's pins against environments on the routes that weigh one set of packages (_matters): each (package,
    measured version) is compared once, and each environment's differences are kept by its key for every route.

    A check weighs every measured environment on every route, and they share a handful of versions per package.
    """

    def __init__(self, pins: Pins, route: str) -> None:
        self.pins = pins
        self.scores: dict[int, tuple[tuple[Diff, ...], Distance]] = {}  # Measured.key → differences, distance
        self._places: dict[int, tuple[int, int]] = {}  # Measured.key → (-place, -research_place)
        pinned: list[tuple[str, FilePin]] = []
        for name in _matters(route):
            if name == "tensorflow-cpu":
                continue  # compared under "tensorflow", either name on either side
            if name == "tensorflow":
                pin = next((pins.pins[n] for n in ALIASES["tensorflow"] if n in pins.pins), None)
            else:
                pin = pins.pins.get(name)
            if pin is not None:
                pinned.append((name, pin))
        self.pinned = pinned
        # (package, measured version) → its difference and how far it moves (_moved), or None where the pin allows it
        self._seen: dict[tuple[str, str | None], tuple[Diff, tuple[int, int, int]] | None] = {}
        self.position: dict[int, int] = {}  # Measured.key → place in the order closest first (order())

    def order(self, envs: Iterable[Measured]) -> None:
        """Score `envs` (and those ordered before) and order them all, closest first, newest among equals: the
        positions _ranked sorts by. Keys are unique, and so are the sort keys: a place is one environment's, a
        pair's two places its own."""
        scores, places = self.scores, self._places
        for m in envs:
            key = m.key
            if key not in scores:
                scores[key] = self.score(m)
                places[key] = (-m.place, -m.research_place)
        keyed = sorted((*scores[key][1], *place, key) for key, place in places.items())
        self.position = {k[-1]: i for i, k in enumerate(keyed)}

    def differences(self, env: Measured) -> tuple[Diff, ...]:
        """The pins that `env` does not satisfy, python first, in a chain's reading order."""
        return self.score(env)[0]

    def score(self, env: Measured) -> tuple[tuple[Diff, ...], Distance]:
        """differences() and their distance: (packages changed, then |Δmajor|, |Δminor|, |Δmicro| summed), fewest
        changes first, then smallest moves. Summed as they are found: a check scores every measured environment, and
        each (package, version) is compared and its move measured once (issue 14)."""
        seen, versions = self._seen, env.versions
        diffs: list[Diff] = []
        n = major = minor = micro = 0
        for name, pin in (("python", None), *self.pinned):
            if name == "python":
                have: str | None = env.python
            elif name == "tensorflow":  # TensorFlow under either name: to a user they are one framework
                have = next((versions[n] for n in ALIASES["tensorflow"] if n in versions), None)
            else:
                have = versions.get(name)
            found = seen.get((name, have), _UNSEEN)
            if found is _UNSEEN:
                diff = self._python(env.python) if pin is None else (
                    (pin.name, _shown(pin), have) if have is None or not pin.allows(have) else None)
                found = seen[name, have] = None if diff is None else (diff, _moved(diff[1], diff[2]))
            if found is not None:
                diffs.append(found[0])
                a, b, c = found[1]
                n, major, minor, micro = n + 1, major + a, minor + b, micro + c
        return tuple(diffs), (n, major, minor, micro)

    def _python(self, python: str) -> Diff | None:
        pins = self.pins
        if pins.python and python != pins.python:
            return ("python", pins.python, python)
        if not pins.python and pins.requires_python and not FilePin(
                "python", pins.requires_python, 0).allows(f"{python}.0"):
            return ("python", pins.requires_python, python)
        return None


# Not yet compared: distinct from None, which a (package, version) the pins allow is cached as.
_UNSEEN: Any = object()


def differences(pins: Pins, env: Measured, route: str) -> list[PinDiff]:
    """The pins (of the packages that matter) that `env` does not satisfy, python first, in a chain's reading order."""
    return _pin_diffs(_Comparer(pins, route).differences(env))


def _pin_diffs(diffs: Iterable[Diff]) -> list[PinDiff]:
    return [PinDiff(package=p, yours=yours, measured=have) for p, yours, have in diffs]


def _shown(pin: FilePin) -> str:
    return pin.version or pin.specifier or "(unpinned)"


@lru_cache(maxsize=4096)
def _moved(yours: str | None, have: str | None) -> tuple[int, int, int]:
    a, b = _release(yours), _release(have)
    return (abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2])) if a and b else (0, 0, 0)


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


Ranked = list[tuple[Measured, tuple[Diff, ...]]]


def _ranked(comparer: _Comparer, envs: Collection[Measured]) -> Ranked:
    """The environments closest to the pins first (fewest changes, then smallest moves); among equals the newest
    versions (highest place) first. Every nearest and every fix is then the first few entries that qualify.

    The order is the comparer's (_Comparer.order), made once for all the routes it weighs; a route's environments
    are then sorted by their position in it, by int: comparing the distance tuples of every environment again for
    every route cost a check milliseconds (issue 14)."""
    position, scores = comparer.position, comparer.scores
    if any(m.key not in position for m in envs):  # not ordered with the other routes' beforehand
        comparer.order(envs)
        position = comparer.position
    return [(m, scores[m.key][0]) for m in sorted(envs, key=lambda m: position[m.key])]


@dataclass(slots=True)
class _FixPick:
    """The chain closest to the pins among those passing some models, and its newest case (for the run it cites)."""

    env: Measured
    diffs: tuple[Diff, ...]
    newest: Outcome

    def out(self) -> Fix:
        changes = _pin_diffs(self.diffs)
        return Fix(environment_id=self.env.env_id, environment=self.env.name, python=self.env.python,
                   run_id=self.newest.run_id, changes=changes, summary=summary(changes))


def _fix(ranked: Ranked, models: tuple[str, ...]) -> _FixPick | None:
    """The closest environment in which every one of `models` passed."""
    for m, diffs in ranked:
        if all((o := m.outcomes.get(x)) is not None and o.status == "pass" for x in models):
            return _FixPick(m, diffs, max((m.outcomes[x] for x in models), key=lambda o: o.case_id))
    return None


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
    facts = facts or queries.FactsCache()
    # Every route's environments in one read; a model with an outcome there is recorded, so only the others are
    # probed before the verdicts. Each verdict then picks its evidence, and the cases they cite are read once for
    # the whole answer (run, exporter, first step that was not ok), not once per verdict.
    by_route = measured_routes(session, models, chosen, exporter, facts, target)
    recorded = {x for envs in by_route.values() for m in envs.values() for x in m.outcomes}
    unknown = queries.unknown_models(session, [x for x in models if x not in recorded])
    if unknown:
        raise queries.QueryError("models", f"no results recorded for {unknown}; known: "
                                           f"{sorted(queries.known_models(session))}")
    if not any(n in pins.pins for r in chosen for n in _matters(r)):
        raise queries.QueryError("file", f"{pins.path} pins none of {', '.join(_matters(chosen[0]))}: nothing to "
                                         "compare with what was measured")
    picks: list[_VerdictPick] = []
    fixes: dict[str, _FixPick | None] = {}
    comparers: dict[tuple[str, ...], _Comparer] = {}  # routes that weigh the same packages share one
    for route in chosen:
        if _matters(route) not in comparers:
            comparers[_matters(route)] = _Comparer(pins, route)
    for matters, comparer in comparers.items():  # one order per comparer, for every route it weighs
        comparer.order([m for r in chosen if _matters(r) == matters for m in by_route[r].values()])
    for route in chosen:
        comparer = comparers[_matters(route)]
        ranked = _ranked(comparer, by_route[route].values())
        for model in models:
            picks.append(_pick(ranked, model, route, exporter))
        fixes[route] = _fix(ranked, models)
    _details(session, [o for p in picks for o in p.cited()] + [f.newest for f in fixes.values() if f is not None])
    seen = signatures_seen(session, {(p.evidence.outcomes[p.model].signature, p.route) for p in picks
                                     if p.evidence is not None and not p.passed}, facts)
    results = [p.out(seen) for p in picks]
    shown = {n: _shown(p) for n, p in pins.pins.items() if any(n in _matters(r) for r in chosen)}
    return CheckOut(
        file=pins.path, format=pins.kind, python=pins.python, pins=shown, models=list(models), routes=chosen,
        exporter=exporter, verdict=max((r.verdict for r in results), key=_WORST.__getitem__), results=results,
        fixes={route: f.out() if f is not None else None for route, f in fixes.items()},
    )


@dataclass(slots=True)
class _VerdictPick:
    """What one model's verdict on one route cites, chosen before any case is read: its evidence (a matching
    environment, passes first), else the nearest measured environments; and the closest passing chain."""

    model: str
    route: str
    exporter: str | None
    matched: dict[str, int]
    fix: _FixPick | None
    evidence: Measured | None
    passed: bool
    nearest: list[tuple[Measured, tuple[Diff, ...]]]

    def cited(self) -> list[Outcome]:
        """The outcomes whose case details the answer shows."""
        cited = [m.outcomes[self.model] for m, _ in self.nearest]
        if self.evidence is not None:
            cited.append(self.evidence.outcomes[self.model])
        if self.fix is not None:
            cited.append(self.fix.newest)
        return cited

    def out(self, seen: dict[tuple[str, str], SignatureSeen]) -> ModelVerdict:
        model, route = self.model, self.route
        verdict = ModelVerdict(
            model=model, route=route, exporter=self.exporter, verdict="untested", environment_id=None,
            environment=None, run_id=None, matched=self.matched, nearest=[],
            fix=self.fix.out() if self.fix is not None else None,
        )
        evidence = self.evidence
        if evidence is None:
            verdict.nearest = [
                Nearby(environment_id=m.env_id, environment=m.name, python=m.python,
                       status="pass" if m.outcomes[model].status == "pass" else "fail",
                       signature=m.outcomes[model].signature, differs=_pin_diffs(diffs))
                for m, diffs in self.nearest
            ]
            return verdict
        outcome = evidence.outcomes[model]
        verdict.environment_id, verdict.environment = evidence.env_id, evidence.name
        verdict.kind, verdict.research_environment_id = evidence.kind, evidence.research_id
        verdict.run_id, verdict.exporter = outcome.run_id, outcome.exporter
        if self.passed:
            verdict.verdict = "known-good"
            return verdict
        verdict.verdict = "known-bad"
        verdict.step, verdict.message = outcome.step, outcome.message
        verdict.signature = outcome.signature
        verdict.seen = seen.get((outcome.signature, route)) if outcome.signature is not None else None
        return verdict


def _pick(ranked: Ranked, model: str, route: str, exporter: str | None) -> _VerdictPick:
    tried = [(m, diffs) for m, diffs in ranked if model in m.outcomes]  # closest first
    matching = [m for m, diffs in tried if not diffs]
    passed = sorted((m for m in matching if m.outcomes[model].status == "pass"),
                    key=lambda m: (-m.place, -m.research_place))
    failed = sorted((m for m in matching if m.outcomes[model].status == "fail"),
                    key=lambda m: (-m.place, -m.research_place))
    # A pass anywhere the pins match outweighs a failure elsewhere: the failing twin differs in what the file
    # leaves unpinned (another exporter, or a package it does not name).
    evidence = passed[0] if passed else failed[0] if failed else None
    return _VerdictPick(
        model=model, route=route, exporter=exporter, matched={"passed": len(passed), "failed": len(failed)},
        fix=_fix(tried, (model,)), evidence=evidence, passed=bool(passed),
        nearest=tried[:NEAREST] if evidence is None else [],
    )


def signature_seen(session: Session, signature: str | None, route: str,
                   facts: queries.FactsCache | None = None) -> SignatureSeen | None:
    """Where `signature` was seen on `route` (any model): dates, environments, and the span of each key version."""
    if signature is None:
        return None
    return signatures_seen(session, {(signature, route)}, facts).get((signature, route))


def signatures_seen(session: Session, wanted: set[tuple[str | None, str]],
                    facts: queries.FactsCache | None = None) -> dict[tuple[str, str], SignatureSeen]:
    """signature_seen for several (signature, route) pairs: one index-only read (ix_case_signature_route), and the
    versions from the facts cache, plus a route's own converter where it is not a key package."""
    pairs: set[tuple[str, str]] = {(s, r) for s, r in wanted if s is not None}
    if not pairs:
        return {}
    facts = facts or queries.FactsCache()
    spans: dict[tuple[str, str], list[tuple[int, dt.datetime, dt.datetime]]] = defaultdict(list)
    for signature, route, env_id, first, last in session.connection().execute(
        select(Case.signature, Case.route, Case.environment_id, func.min(Case.recorded_at),
               func.max(Case.recorded_at))
        .where(Case.signature.in_(sorted({s for s, _ in pairs})), Case.route.in_(sorted({r for _, r in pairs})))
        .group_by(Case.signature, Case.route, Case.environment_id)
    ):
        if signature is not None and (signature, route) in pairs:
            spans[signature, route].append((env_id, first, last))
    out = {}
    for (signature, route), rows in spans.items():
        matters = _matters(route)
        # Key versions and the route's own converter, from the facts cache (read once per environment and route).
        weighed = facts.route_versions(session, {e for e, _, _ in rows}, route)
        versions: dict[str, set[str]] = defaultdict(set)
        for env_id, _, _ in rows:
            for name, version in weighed.get(env_id, {}).items():
                if name in matters:
                    versions["tensorflow" if name in ALIASES else name].add(version)
        out[signature, route] = SignatureSeen(
            environments=len(rows), first_seen=min(r[1] for r in rows), last_seen=max(r[2] for r in rows),
            versions={n: [min(v, key=queries.version_key), max(v, key=queries.version_key)]
                      for n, v in sorted(versions.items(), key=lambda kv: matters.index(kv[0])
                                         if kv[0] in matters else 99)},
        )
    return out


# -- why a chains answer is what it is -----------------------------------------------------------------------------

def explain_chains(session: Session, query: queries.ChainQuery, facts: queries.FactsCache | None = None,
                   envs: dict[int, Measured] | None = None, environments: list[EnvironmentRow] | None = None,
                   ) -> tuple[list[NearMiss], MeasuredCounts]:
    """The closest failing environments (most requested models passed, then newest) and how much was measured.

    An empty chains answer then says whether nothing was measured, nothing resolved, or everything failed.
    `envs`, `environments`: what measured_chains() read for the query, when the caller has it already.
    """
    facts = facts or queries.FactsCache()
    if envs is None or environments is None:
        envs, environments = measured_chains(session, query, facts)
    if query.python:
        envs = {e: m for e, m in envs.items() if m.python == query.python}
    tried = {e: m for e, m in envs.items() if m.outcomes}
    misses = [m for m in tried.values() if not all(
        query_model in m.outcomes and m.outcomes[query_model].status == "pass" for query_model in query.models)]
    wanted = [m for m in misses if query.requirements.met(m.versions)]
    if not wanted and "export" in ROUTES.get(query.route, ()):
        # Nothing that ran the route meets the query's pins: where a split export failed, no graph reached the
        # route and no pair exists, yet that failure is the closest the data came (torch 2.0 cannot export the
        # transformer). Read only here, so an answer with misses of its own pays nothing for it.
        exports = _export_failures(session, query, facts)
        wanted = [m for m in exports if query.requirements.met(m.versions)] or misses + exports
    shown = heapq.nsmallest(NEAR_MISSES, wanted, key=lambda m: (
        -sum(o.status == "pass" for o in m.outcomes.values()), -m.place, -m.research_place))
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
    return near, _counts(session, query, ran, facts, environments)


def _export_failures(session: Session, query: queries.ChainQuery, facts: queries.FactsCache) -> list[Measured]:
    """Export environments (of the query's python) whose newest current export of a requested model failed, one
    per environment, as misses whose failed step is the export."""
    rows = session.connection().execute(_EXPORT_FAILURES, {
        "models": list(query.models), "exporter": query.exporter}).all()
    known, place = facts.get(session, {env_id for env_id, _, _ in rows})
    out: dict[int, Measured] = {}
    for env_id, model, case_id in rows:
        f = known.get(env_id)
        if f is None or (query.python and f.python != query.python):
            continue
        miss = out.setdefault(env_id, Measured(env_id, f.python, f.versions, place[env_id], name=f.name))
        miss.outcomes[model] = Outcome("fail", case_id)
    return list(out.values())


_EXPORT_FAILURES = queries.failed_exports().where(
    Case.model.in_(bindparam("models", expanding=True)),
    (bindparam("exporter", type_=String) == null()) | (Case.exporter == bindparam("exporter", type_=String)),
)


def _counts(session: Session, query: queries.ChainQuery, measured_ids: set[int], facts: queries.FactsCache,
            rows: list[EnvironmentRow]) -> MeasuredCounts:
    # What each environment asked for is read once per environment and process, and weighed once per route.
    wanted = facts.requests_route(session, [r[0] for r in rows], query.route)
    resolved_only = unresolvable = 0
    for env_id, locked, signed in rows:
        if env_id in measured_ids or not wanted[env_id]:
            continue
        if locked:
            resolved_only += 1
        elif signed:  # a conflict, or no interpreter: recorded with the reason
            unresolvable += 1
    return MeasuredCounts(measured=len(measured_ids), resolved_only=resolved_only, unresolvable=unresolvable)
