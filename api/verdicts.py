"""Verdicts on pins (known-good, known-bad, untested), and why a chains answer is what it is: read-only queries."""

from __future__ import annotations

import datetime as dt
import gc
import heapq
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from packaging.version import InvalidVersion, Version
from sqlalchemy import Select, String, bindparam, func, null, select
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
_ROWS_HELD = 256  # models whose rows a slice keeps (_Slice.rows)
_DISTANCES_HELD = 4096  # columns' distances from what files ask that a slice keeps (_Columns.distances)
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
    # Unique among what `measured` returns: a joint environment's id; a split pair's negative pairing. Stored, not
    # derived: a check looks it up for every environment several times.
    key: int = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.env_id if self.research_id is None else -(self.research_id * 2**31 + self.env_id)

    @property
    def kind(self) -> Literal["joint", "split"]:
        return "joint" if self.research_id is None else "split"


@lru_cache(maxsize=64)
def _matters(route: str) -> tuple[str, ...]:
    """KEY_PACKAGES plus the route's own converter (nobuco is not a key package of the other routes)."""
    return tuple(dict.fromkeys((*KEY_PACKAGES, *ROUTE_PACKAGES.get(route, ()))))


# An environment as explain_chains counts it: id, locked (resolved), signed (a reason it did not resolve or run).
EnvironmentRow = tuple[int, bool, bool]


def measured_routes(session: Session, models: Iterable[str], routes: Iterable[str], exporter: str | None,
                    facts: queries.FactsCache | None = None, target: str | None = None,
                    ) -> dict[str, dict[int, Measured]]:
    """Per route, every environment with a recorded case of `models` on it, joint environments and split pairs; a
    skipped case is no evidence either way.

    Per (environment, model): the newest current pass, else the newest current failure, of joint environments
    (a superseded result is no evidence, issue 15; a runtime environment's case of a split chain is evidence only
    together with its export side). Read from the route's slice of the store at its data version (_Slice): the
    Measured it returns are shared with other answers and hold every model's outcome, so read only the requested
    models' and never write them.
    """
    models = tuple(models)
    slices = _measured_routes(session, models, routes, exporter, facts, target)[0]
    return {route: held.measured(models) for route, held in slices.items()}


@dataclass(frozen=True, slots=True)
class ChainsView:
    """What a chains answer weighs, from the route's slice at one data version: the environments with an outcome of
    the query's models (`envs`, by Measured.key, read only), those in which every one of them passed, and the
    environments explain_chains counts (of the query's python)."""

    version: int
    models: tuple[str, ...]
    envs: dict[int, Measured]
    environments: list[EnvironmentRow]
    passed: frozenset[int]  # Measured.key
    _slice: _Slice

    def complete(self) -> list[int]:
        """The environments in which every model passed: the candidates of known_good_chain_page, when no target
        narrows them (the slice weighs every target)."""
        return sorted(k for k in self.passed if k > 0)  # a joint environment's key is its id; a pair's is negative

    def complete_pairs(self) -> list[tuple[int, int]]:
        """The (export, runtime) pairs in which every model passed: the candidates of split_chain_page, when no
        target narrows them."""
        return sorted((m.research_id, m.env_id) for k in self.passed if k < 0
                      for m in (self.envs[k],) if m.research_id is not None)

    def recorded(self) -> set[str]:
        """The models with an outcome on the route."""
        return {x for x in self.models if self._slice.by_model.get(x)}

    def names(self) -> frozenset[str]:
        """The packages the environments pin."""
        return self._slice.names(self.models)


def chains_view(session: Session, query: queries.ChainQuery, facts: queries.FactsCache | None = None) -> ChainsView:
    slices, environments = _measured_routes(session, query.models, (query.route,), query.exporter, facts,
                                            query.target, environments=True, python=query.python)
    held = slices[query.route]
    return ChainsView(held.version, query.models, held.measured(query.models), environments,
                      held.passed(query.models), held)


def _measured_routes(session: Session, models: tuple[str, ...], routes: Iterable[str], exporter: str | None,
                     facts: queries.FactsCache | None, target: str | None, environments: bool = False,
                     python: str | None = None) -> tuple[dict[str, _Slice], list[EnvironmentRow]]:
    facts = facts or queries.FactsCache()
    index: MeasuredIndex = facts.derived.setdefault("measured", MeasuredIndex())
    version = facts.version.read(session)
    # Places are ranks among the environments the facts know: every one of this version's is known before a slice
    # is built from them, so that the slices one answer weighs rank alike (a slice built before others were known
    # would rank its pairs by other places).
    known = index.facts(session, version, facts)
    slices = {route: index.slice(session, version, known, facts, route, exporter, target, models)
              for route in dict.fromkeys(routes)}
    counted = [(e, locked, signed) for e, p, locked, signed in index.environments(session, version)
               if python is None or p == python] if environments else []
    return slices, counted


Facts = tuple[dict[int, queries.EnvironmentFacts], dict[int, int]]
Seen = tuple[int, dt.datetime, dt.datetime]  # where a signature was seen: environment, first and last time


@dataclass(frozen=True, slots=True)
class _Slice:
    """One route's measured environments (for one exporter and target, or any) at one data version and one ranking
    of the environments (the facts' places): joint environments and split pairs, each Measured once with the
    outcome of every model read, listed per model by key."""

    route: str
    version: int
    place: dict[int, int]
    models: frozenset[str]  # the models read so far: a slice grows by the models answers ask for
    by_model: dict[str, dict[int, Measured]]
    envs: dict[int, Measured]  # by Measured.key
    _columns: list[_Columns] = field(default_factory=list)  # columns(), once built
    _passes: dict[str, frozenset[int]] = field(default_factory=dict)  # passed(), per model
    _names: dict[str, frozenset[str]] = field(default_factory=dict)  # names(), per model
    _rows: dict[str, npt.NDArray[np.intp]] = field(default_factory=dict)  # rows(), per model

    def current(self, version: int, place: dict[int, int]) -> bool:
        """Of this data version and ranking: what it holds may answer, and it may grow."""
        return self.version == version and self.place is place

    def measured(self, models: tuple[str, ...]) -> dict[int, Measured]:
        """The environments with an outcome of any of `models`, by key. Read only: with one model, the slice's own
        dict."""
        if len(models) == 1:
            return self.by_model.get(models[0], {})
        return {k: m for x in models for k, m in self.by_model.get(x, {}).items()}

    def rows(self, models: tuple[str, ...]) -> npt.NDArray[np.intp]:
        """The rows of columns() that hold measured(models): each model's gathered once per slice (a check asked for
        them anew each time, a tenth of its cost: issue 14), several models' as the union of theirs. In no
        particular order: rank() orders them."""
        each = []
        for model in models:
            found = self._rows.get(model)
            if found is None:  # two threads may gather it at once: the same rows, one kept
                keys = self.by_model.get(model, {}).keys()
                found = np.fromiter(map(self.columns().row.__getitem__, keys), dtype=np.intp, count=len(keys))
                if len(self._rows) < _ROWS_HELD:  # bounded all the same
                    self._rows[model] = found
            each.append(found)
        if len(each) == 1:
            return each[0]
        mask = np.zeros(len(self.envs), dtype=bool)
        for found in each:
            mask[found] = True
        return np.flatnonzero(mask)

    def passed(self, models: tuple[str, ...]) -> frozenset[int]:
        """The keys of the environments in which every one of `models` passed. Each model's are gathered once per
        slice: a chains answer weighed every environment's outcomes for them anew (issue 14)."""
        sets = []
        for model in models:
            found = self._passes.get(model)
            if found is None:  # two threads may gather it at once: the same set, one kept
                found = self._passes[model] = frozenset(
                    k for k, m in self.by_model.get(model, {}).items() if m.outcomes[model].status == "pass")
            sets.append(found)
        return frozenset.intersection(*sets) if len(sets) > 1 else sets[0] if sets else frozenset()

    def names(self, models: tuple[str, ...]) -> frozenset[str]:
        """The packages pinned by the environments with an outcome of any of `models`, gathered once per model."""
        out: frozenset[str] = frozenset()
        for model in models:
            found = self._names.get(model)
            if found is None:
                found = self._names[model] = frozenset(
                    n for m in self.by_model.get(model, {}).values() for n in m.versions)
            out |= found
        return out

    def columns(self) -> _Columns:
        """Every environment of the slice as columns: what a check compares with its pins, built once per slice."""
        if not self._columns:  # two threads may build it at once: the same columns, one kept
            self._columns.append(_Columns.of(self.route, list(self.envs.values())))
        return self._columns[0]


_T = TypeVar("_T")
_V = TypeVar("_V", str, str | None)


@dataclass(frozen=True, slots=True)
class _Columns:
    """A slice's environments as columns: python and the version of each package the route weighs (TensorFlow under
    either name), each as its distinct values; every row as its values' positions in one table of all of them (the
    distinct values of the first column, then of the next, and so on); and the order of the rows newest first. A
    check compares its pins with each distinct value once, writes the distances into that table, and sums each
    row's with one gather: walking every environment's dict of versions was most of what a check cost, and a
    numpy pass per column half of what was left (issue 14)."""

    envs: list[Measured]
    row: dict[int, int]  # Measured.key → its row
    pythons: list[str]  # the first column's distinct values
    names: tuple[str, ...]  # the package of each column after the first
    values: tuple[list[str | None], ...]  # their distinct values
    codes: npt.NDArray[np.intp]  # columns × rows: each value's position in the table of every column's values
    newest: npt.NDArray[np.intp]  # each row's position in (-place, -research_place): the newest first among equals
    # Per column and what a file asks of it (the python or the specifier of the package): the distance of each of its
    # values from that, and whether any differs (_Comparer.rank). Files pin much the same versions: a check compared
    # 180 values per check anew, a third of its ranking (issue 14).
    _distances: dict[tuple[Any, ...], tuple[npt.NDArray[np.int64], bool]] = field(default_factory=dict)

    def distances(self, key: tuple[Any, ...], values: list[_V], difference: Callable[[_V], _Entry | None],
                  ) -> tuple[npt.NDArray[np.int64], bool]:
        """The distances of one column's `values` from what a file asks (`difference` of each, as _vector), as a
        table, and whether any differs; kept for `key` (column index, what the file asks of it) while there is room
        (any pins may be asked about: the first ones are kept)."""
        found = self._distances.get(key)
        if found is None:
            vectors = [_vector(difference(value)) for value in values]
            found = (np.array(vectors, dtype=np.int64).reshape(-1, 4), any(v[0] for v in vectors))
            if len(self._distances) < _DISTANCES_HELD:
                self._distances[key] = found
        return found

    @classmethod
    def of(cls, route: str, envs: list[Measured]) -> _Columns:
        names = tuple(n for n in _matters(route) if n != "tensorflow-cpu")  # either name: to a user they are one
        pythons, rows = _distinct([m.python for m in envs])
        codes = np.empty((1 + len(names), len(envs)), dtype=np.intp)
        codes[0] = rows
        offset = len(pythons)
        values: list[list[str | None]] = []
        for i, name in enumerate(names, start=1):
            distinct, rows = _distinct([m.versions.get(name) or m.versions.get("tensorflow-cpu") for m in envs]
                                       if name == "tensorflow" else [m.versions.get(name) for m in envs])
            values.append(distinct)
            codes[i] = rows + offset
            offset += len(distinct)
        newest = np.empty(len(envs), dtype=np.intp)
        newest[np.lexsort(([-m.research_place for m in envs], [-m.place for m in envs]))] = np.arange(len(envs))
        return cls(envs, {m.key: i for i, m in enumerate(envs)}, pythons, names, tuple(values), codes, newest)


def _distinct(column: list[_T]) -> tuple[list[_T], npt.NDArray[np.intp]]:
    """A column as its distinct values and each row's index among them."""
    index: dict[_T, int] = {}
    rows = [index.setdefault(value, len(index)) for value in column]
    return list(index), np.array(rows, dtype=np.intp)


class MeasuredIndex:
    """Per database and process (held in the FactsCache's `derived`): each route's slice of the outcome table and
    its split pairs at a data version, shared by every answer at that version; and the environments explain_chains
    counts, likewise. A slice grows by the models answers ask for: each model's outcomes are read the first time an
    answer needs them at that version.

    Every /chains answer and every check weighed each measured environment of its routes anew, a row and an object
    per environment read and built per request: most of what they cost at a million steps (issue 14). A slice is
    read again when the data version (the `data_change` counter) moves, so an answer never mixes versions; the
    first answer after new results reads what it asks about. A route's own slice reads with each model the details
    of the cases its outcomes stand for and the evidence of its passes (_read_slice); a narrowed slice's answers
    read the details of what they cite (`_details`), into the outcomes of the version they belong to. Each route's
    signature spans are read the first time an answer cites one (signature_rows).
    """

    # Slices held at once, the most recently used: every route's, and a few narrowed by an exporter or a target. A
    # slice of 784 environments × 20 models read is some 15,000 objects.
    SIZE = 24

    def __init__(self) -> None:
        # Each slice is replaced whole, never mutated: a reader holds one version's.
        self._slices: OrderedDict[tuple[str, str | None, str | None], _Slice] = OrderedDict()
        self._environments: tuple[int, list[tuple[int, str, bool, bool]]] = (-1, [])
        self._facts: tuple[int, Facts] = (-1, ({}, {}))
        # Where each (signature, route) was seen (signatures_seen; None: nowhere), and the rows that says so per route.
        self.spans: queries.PerVersion[dict[tuple[str, str], SignatureSeen | None]] = queries.PerVersion(dict)
        self._signature_rows: queries.PerVersion[dict[str, dict[str, list[Seen]]]] = queries.PerVersion(dict)
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str | None, str | None], threading.Lock] = {}

    def slice(self, session: Session, version: int, known: Facts, facts: queries.FactsCache, route: str,
              exporter: str | None, target: str | None, models: tuple[str, ...]) -> _Slice:
        key = (route, exporter, target)
        held = self._slices.get(key)
        if held is None or not held.current(version, known[1]) or not held.models.issuperset(models):
            # One reader per slice: the requests that need it meanwhile wait for it rather than each reading it too
            # (eight at once after a write, under the bench's load).
            with self._building.setdefault(key, threading.Lock()):
                held = self._slices.get(key)
                if held is not None and not held.current(version, known[1]):
                    held = None  # another version's: read again, from the models this answer needs
                if held is None or not held.models.issuperset(models):
                    held = _read_slice(session, version, known, facts, route, exporter, target, models, held)
                    # A slice lives until the data version moves: out of the collector's sight, as the app's modules
                    # are (api/app.py), so that a full collection does not walk every slice held. Collected first,
                    # so that what requests left behind is not frozen with it. A slice is freed by reference
                    # counting when replaced. Stored before the lock is let go, so that those waiting find it.
                    gc.collect()
                    gc.freeze()
                    with self._lock:
                        self._slices[key] = held
        with self._lock:  # most recently used last; the oldest beyond SIZE go
            self._slices[key] = held
            self._slices.move_to_end(key)
            while len(self._slices) > self.SIZE:
                self._slices.popitem(last=False)
        return held

    def holds(self, version: int, routes: Collection[str], exporter: str | None, target: str | None,
              models: Iterable[str]) -> bool:
        """Whether answers on `routes` about `models` at `version` need no read of any size: every slice they weigh
        holds the models at that version, and each route's signatures were read (the details of a narrowed slice's
        outcomes may still be read, a few rows)."""
        wanted = set(models)
        for route in routes:
            held = self._slices.get((route, exporter, target))
            if held is None or held.version != version or not held.models.issuperset(wanted):
                return False
        read = self._signature_rows.peek(version)
        return (self._environments[0] == self._facts[0] == version and read is not None
                and set(routes) <= read.keys())

    def signature_rows(self, session: Session, version: int, routes: set[str],
                       ) -> dict[str, dict[str, list[Seen]]]:
        """Per route of `routes`, where each signature was seen on it (_SIGNATURE_ROWS), as read at `version`: every
        signature of a route in one read, the first time an answer cites one. Read per signature, a common one cost
        a check eight milliseconds at a million steps, once for every signature cited (issue 14)."""
        by_route = self._signature_rows.at(version)
        for route in sorted(routes - by_route.keys()):
            rows: dict[str, list[Seen]] = defaultdict(list)
            for signature, env_id, first, last in session.connection().execute(_SIGNATURE_ROWS, {"route": route}):
                if signature is not None:
                    rows[signature].append((env_id, first, last))
            by_route[route] = dict(rows)  # one dict item at a time: safe across threads
        return by_route

    def environments(self, session: Session, version: int) -> list[tuple[int, str, bool, bool]]:
        """Every environment: id, python, locked (resolved), signed (a reason it did not resolve or run)."""
        held_version, rows = self._environments
        if held_version != version:
            rows = [(e, p, locked is not None, signed is not None) for e, p, locked, signed in session.connection()
                    .execute(select(Environment.id, Environment.python, Environment.lock_hash, Environment.signature))]
            self._environments = (version, rows)  # replaced whole: a reader sees one version's list
        return rows

    def facts(self, session: Session, version: int, facts: queries.FactsCache) -> Facts:
        """Every environment's facts and place, once every one of `version`'s is known (FactsCache.every): looked
        up once per version, where each answer went over every environment to find none missing (issue 14). The
        slices of one version are then all built on the one ranking."""
        held_version, known = self._facts
        if held_version != version:
            known = facts.every(session, [e for e, _, _, _ in self.environments(session, version)])
            self._facts = (version, known)  # replaced whole
        return known


_RUNTIME, _EXPORT = Case.__table__.alias("runtime").c, Case.__table__.alias("export").c


def _slice_queries(exporter: bool, target: bool) -> tuple[Select[*tuple[Any, ...]], Select[*tuple[Any, ...]]]:
    """A slice's two statements: the joint outcomes (environment, model, newest pass, newest failure) and the split
    runtime cases (runtime side, export side, model, status, case), each with an export side that stored the graph
    it ran."""
    # Without an exporter or target, the rows already folded over them (a third to a ninth as many to read).
    table: Any = OutcomeRow if exporter or target else OutcomeAny
    joint = select(table.environment_id, table.model, func.max(table.pass_case_id), func.max(table.fail_case_id)) \
        .where(table.route == bindparam("route"), table.model.in_(bindparam("models", expanding=True)))
    if exporter:
        joint = joint.where(OutcomeRow.exporter == bindparam("exporter"))
    if target:
        joint = joint.where(OutcomeRow.target == bindparam("target"))
    joint = joint.group_by(table.environment_id, table.model)
    runtime, export = _RUNTIME, _EXPORT
    conditions = [runtime.route == bindparam("route"), runtime.model.in_(bindparam("models", expanding=True)),
                  runtime.artifact_id.is_not(None), runtime.status != "skip",
                  export.route == "export", export.status == "pass", export.artifact_id == runtime.artifact_id,
                  export.model == runtime.model, queries.current(runtime), queries.current(export)]
    if exporter:
        conditions.append(export.exporter == bindparam("exporter"))
    if target:
        conditions.append(runtime.target == bindparam("target"))
    split = select(runtime.environment_id, export.environment_id, runtime.model, runtime.status, runtime.id) \
        .where(*conditions).order_by(runtime.id)
    return joint, split


_SLICE_QUERIES = {(e, t): _slice_queries(e, t) for e in (False, True) for t in (False, True)}


def _read_slice(session: Session, version: int, facts_now: Facts, facts: queries.FactsCache, route: str,
                exporter: str | None, target: str | None, models: tuple[str, ...], base: _Slice | None) -> _Slice:
    """`base` (of the same version and ranking, or None) with the outcomes of `models` it lacks read in. A new slice:
    the Measured that gain an outcome are copies, so that answers holding `base` see it unchanged."""
    wanted = sorted(set(models) - (base.models if base is not None else frozenset()))
    joint_query, split_query = _SLICE_QUERIES[bool(exporter), bool(target)]
    params = {"route": route, "exporter": exporter, "target": target, "models": wanted}
    conn = session.connection()
    rows = conn.execute(joint_query, params).all()
    split_rows = conn.execute(split_query, params).all()
    known, place = facts_now  # an environment stored since this version's list was read waits for the next version
    # The route's own converter joins the versions (onnx2tf, onnx-tf, nobuco, litert-torch): dicts the facts cache
    # holds per route and environment, shared and read only.
    weighed = facts.route_versions(session, {e for e in {row[0] for row in rows} | {row[0] for row in split_rows}
                                             if e in known}, route)
    envs = dict(base.envs) if base is not None else {}
    copied: dict[int, Measured] = {}  # by key: the base's Measured this read adds outcomes to, copied once

    def held(key: int) -> Measured | None:
        m = copied.get(key)
        if m is None and (old := envs.get(key)) is not None:
            m = copied[key] = envs[key] = Measured(old.env_id, old.python, old.versions, old.place,
                                                   dict(old.outcomes), old.name, old.research_id, old.research_place)
        return m

    by_model: dict[str, dict[int, Measured]] = defaultdict(dict)
    for env_id, model, passed, failed in rows:
        f = known.get(env_id)
        if f is None or (passed is None and failed is None):
            continue
        m = held(env_id)
        if m is None:
            m = envs[env_id] = copied[env_id] = Measured(env_id, f.python, weighed.get(env_id, f.versions),
                                                         place[env_id], name=f.name)
        # A pass anywhere outweighs a failure.
        m.outcomes[model] = Outcome("pass", passed) if passed is not None else Outcome("fail", failed)
        by_model[model][env_id] = m
    # Split pairs: per (export, runtime, model) the newest pass, else the newest failure, as for joint environments.
    # Versions are both sides' (torch from research, the rest from production), python the production side's.
    for r, e, model, status, case_id in split_rows:  # in case order: a later case is newer
        if e not in known or r not in known:
            continue
        key = -(e * 2**31 + r)  # Measured.key of the pair
        pair = held(key)
        if pair is None:
            own = {n: v for n, v in weighed[r].items() if n not in KEY_PACKAGES}
            pair = envs[key] = copied[key] = Measured(
                r, known[r].python, {**known[r].versions, **known[e].versions, **own}, place[r],
                name=f"{known[e].name} → {known[r].name}", research_id=e, research_place=place[e])
        outcome = pair.outcomes.get(model)
        if outcome is None or outcome.status != "pass" or status == "pass":
            pair.outcomes[model] = Outcome("pass" if status == "pass" else "fail", case_id)
        by_model[model][key] = pair
    # The case each new outcome of a route's own slice stands for (run, exporter, signature, the first step that was
    # not ok), read with it: read per answer, for the few it cites, it was the round trip of most checks and of the
    # slowest (issue 14). A slice narrowed by an exporter or a target grows a model at a time for the few answers
    # that ask for it, and its answers read what they cite.
    if exporter is None and target is None:
        _details(session, [m.outcomes[x] for x in wanted for m in by_model[x].values()])
        # Likewise the evidence a chains page cites of the environments in which a model passed.
        queries.read_evidence(session, facts, version, route, {
            x: [k for k, m in by_model[x].items() if k > 0 and m.outcomes[x].status == "pass"] for x in wanted})
    if base is not None:  # the models read before, pointing at the copies where there are any
        for model, listed in base.by_model.items():
            by_model[model] = {k: copied.get(k, m) for k, m in listed.items()}
    return _Slice(route, version, place, frozenset(wanted) | (base.models if base is not None else frozenset()),
                  dict(by_model), envs)


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
    for i in range(0, len(ids), 2000):
        for row in session.connection().execute(_DETAILS, {"ids": ids[i: i + 2000]}):
            for o in todo[row.id]:
                if not o.loaded:  # the first row of a case carries its first step that was not ok
                    o.run_id, o.exporter, o.signature = row.run_id, row.exporter, row.signature
                    o.step, o.message = row.name, row.message
                    o.loaded = True  # last: outcomes are shared by the answers of one data version (MeasuredIndex)


# -- distance between pins and an environment ----------------------------------------------------------------------

class _Comparer:
    """One file's pins against the environments of the routes that weigh one set of packages (_matters): each
    (package, measured version) is compared once, in a memo per package.

    A check weighs every measured environment on every route, and they share a handful of versions per package.
    """

    def __init__(self, pins: Pins, route: str) -> None:
        self.pins = pins
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
        # Per package, measured version → its difference and how far it moves (_entry), or None where the pin allows it
        self._memo_python: dict[str, _Entry | None] = {}
        self._lookups = {name: (pin, dict[str | None, _Entry | None]()) for name, pin in pinned}
        self._differences: dict[int, tuple[Diff, ...]] = {}  # Measured.key → differences()

    def rank(self, columns: _Columns, chosen: npt.NDArray[np.intp]) -> Ranked:
        """The environments of the `chosen` rows of `columns` closest to the pins first: fewest changes, then
        smallest moves (score()), the newest (highest place) among equals. Each with the number of pins it does not
        satisfy: 0 where it matches.

        Each distinct value of a column is compared with the pins once (and kept by the columns for the next file
        that asks the same of that column), and each row's distances are summed in one gather: scoring every
        environment's dict and sorting tuples was most of what a check cost (issue 14)."""
        parts = [columns.distances((0, self.pins.python, self.pins.requires_python), columns.pythons,
                                   self._python_difference)]
        for column, (name, values) in enumerate(zip(columns.names, columns.values, strict=True), start=1):
            lookup = self._lookups.get(name)
            if lookup is None:  # not pinned
                parts.append(columns.distances((column, None), values, _no_difference))
            else:
                parts.append(columns.distances((column, lookup[0].specifier), values,
                                               partial(self._difference, *lookup)))
        # The columns where some value differs from the pins: the others add nothing.
        weighed = [column for column, (_, differs) in enumerate(parts) if differs]
        table = np.concatenate([distances for distances, _ in parts]).T
        # Per row, the distances of its values summed: 4 × rows.
        total = np.take(table, columns.codes[weighed][:, chosen], axis=1).sum(axis=1)
        # Fewest changes, then the smallest moves, then the newest: one number per row where they fit in 63 bits
        # (each field as wide as its largest value; the newest is a row's unique position, so no two rows tie).
        newest = columns.newest[chosen]
        widths = [int(v).bit_length() for v in total.max(axis=1)] if len(chosen) else [0, 0, 0, 0]
        widths.append(max(len(columns.envs) - 1, 0).bit_length())
        if sum(widths) > 63:  # moves too large to pack (dates as versions): sort by each field, last key first;
            order = np.lexsort((newest, total[3], total[2], total[1], total[0]))  # a row's key is then its place
            key = np.empty(len(order), dtype=np.int64)
            key[order] = np.arange(len(order))
            return Ranked(columns.envs, chosen, total[0], key)
        key = total[0].copy()
        for values, width in zip((total[1], total[2], total[3], newest), widths[1:], strict=True):
            key <<= width
            key |= values
        return Ranked(columns.envs, chosen, total[0], key)

    def _python_difference(self, python: str) -> _Entry | None:
        found = self._memo_python.get(python, _UNSEEN)
        if found is _UNSEEN:
            found = self._memo_python[python] = _entry(self._python(python))
        return found  # type: ignore[no-any-return]

    @staticmethod
    def _difference(pin: FilePin, memo: dict[str | None, _Entry | None], have: str | None) -> _Entry | None:
        found = memo.get(have, _UNSEEN)
        if found is _UNSEEN:
            found = memo[have] = _entry(None if have is not None and pin.allows(have)
                                        else (pin.name, _shown(pin), have))
        return found  # type: ignore[no-any-return]

    def differences(self, env: Measured) -> tuple[Diff, ...]:
        """The pins that `env` does not satisfy, python first, in a chain's reading order. Kept per environment (its
        key): each model's verdict and the fix ask it of the same few, on every route that weighs these packages."""
        found = self._differences.get(env.key)
        if found is None:
            found = self._differences[env.key] = self.score(env)[0]
        return found

    def score(self, env: Measured) -> tuple[tuple[Diff, ...], Distance]:
        """differences() and their distance: (packages changed, then |Δmajor|, |Δminor|, |Δmicro| summed), fewest
        changes first, then smallest moves. rank() orders every environment by the same distance in columns; this
        scores the few an answer shows, and the memo per package is shared with rank()."""
        versions = env.versions
        found = self._python_difference(env.python)
        entries = [] if found is None else [found]
        for name, (pin, memo) in self._lookups.items():
            have = versions.get(name)
            if have is None and name == "tensorflow":  # TensorFlow under either name: to a user they are one
                have = versions.get("tensorflow-cpu")
            found = self._difference(pin, memo, have)
            if found is not None:
                entries.append(found)
        if not entries:
            return (), (0, 0, 0, 0)
        major = minor = micro = 0
        for _, a, b, c in entries:
            major, minor, micro = major + a, minor + b, micro + c
        return tuple([e[0] for e in entries]), (len(entries), major, minor, micro)

    def _python(self, python: str) -> Diff | None:
        pins = self.pins
        if pins.python and python != pins.python:
            return ("python", pins.python, python)
        if not pins.python and pins.requires_python and not FilePin(
                "python", pins.requires_python, 0).allows(f"{python}.0"):
            return ("python", pins.requires_python, python)
        return None


def _no_difference(_have: str | None) -> None:
    """The difference from a package the file does not pin: none."""
    return None


# Not yet compared: distinct from None, which a (package, version) the pins allow is cached as.
_UNSEEN: Any = object()
# A difference and how far it moves: |Δmajor|, |Δminor|, |Δmicro|.
_Entry = tuple[Diff, int, int, int]


def _entry(diff: Diff | None) -> _Entry | None:
    return None if diff is None else (diff, *_moved(diff[1], diff[2]))


# A distance (score()) as a vector: packages changed, |Δmajor|, |Δminor|, |Δmicro|. A move is capped at 2**58, so
# that the sums of a few dozen packages fit int64.
_CAP = 2**58


def _vector(entry: _Entry | None) -> tuple[int, int, int, int]:
    if entry is None:
        return 0, 0, 0, 0
    _, major, minor, micro = entry
    return 1, min(major, _CAP), min(minor, _CAP), min(micro, _CAP)


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


class Ranked:
    """Environments closest to a file's pins first, each with the number of pins it does not satisfy (0: a match).

    Ordered only as far as a reader walks: the closest `_FIRST` by a partial sort, and the rest only when a reader
    goes past them. Most readers stop after a few (_pick, _fix), and sorting every row by five keys and listing it
    was half of a ranking's cost (issue 14).
    """

    __slots__ = ("_changes", "_first", "_key", "_rest", "_rows", "envs")

    def __init__(self, envs: list[Measured], rows: npt.NDArray[np.intp], changes: npt.NDArray[np.int64],
                 key: npt.NDArray[np.int64]) -> None:
        """`rows` of `envs` with their `changes`, ordered by `key` (one distinct number per row, smallest first)."""
        self.envs, self._rows, self._changes, self._key = envs, rows, changes, key
        # The pairs in order as far as some reader walked: the first ones, then the rest (each model's verdict and
        # the fix walk the same ranking).
        self._first: list[tuple[Measured, int]] | None = None
        self._rest: list[tuple[Measured, int]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[tuple[Measured, int]]:
        key = self._key
        if self._first is None:
            if len(key) > 2 * _FIRST:
                first = np.argpartition(key, _FIRST - 1)[:_FIRST]
                self._first = self._pairs(first[np.argsort(key[first])])
            else:
                self._first, self._rest = self._pairs(np.argsort(key)), []
        yield from self._first
        if self._rest is None:
            self._rest = self._pairs(np.argsort(key)[_FIRST:])  # keys are distinct: the first are the ones above
        yield from self._rest

    def _pairs(self, order: npt.NDArray[np.intp]) -> list[tuple[Measured, int]]:
        envs = self.envs
        return [(envs[row], changes)
                for row, changes in zip(self._rows[order].tolist(), self._changes[order].tolist(), strict=True)]


_FIRST = 16  # rows of a ranking put in order before a reader asks for more (Ranked)


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


def _fix(comparer: _Comparer, ranked: Ranked, models: tuple[str, ...]) -> _FixPick | None:
    """The closest environment in which every one of `models` passed."""
    for m, _ in ranked:
        if all((o := m.outcomes.get(x)) is not None and o.status == "pass" for x in models):
            return _FixPick(m, comparer.differences(m), max((m.outcomes[x] for x in models), key=lambda o: o.case_id))
    return None


# -- the verdict ---------------------------------------------------------------------------------------------------

def held_in_memory(facts: queries.FactsCache, pins: Pins, models: Iterable[str], routes: Iterable[str] | None,
                   exporter: str | None, target: str | None) -> bool:
    """Whether check() would answer from what `facts` hold at the data version last read (MeasuredIndex.holds), with
    no statement of any size: an answer then costs milliseconds of CPU and no wait (api/routes/check.py)."""
    version = facts.version.held()
    index = facts.derived.get("measured")
    return version is not None and isinstance(index, MeasuredIndex) and index.holds(
        version, list(dict.fromkeys(routes)) if routes else routes_for(pins), exporter, target,
        dict.fromkeys(models))


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
    slices = _measured_routes(session, models, chosen, exporter, facts, target)[0]
    recorded = {x for x in models if any(held.by_model.get(x) for held in slices.values())}
    unknown = queries.unknown_models(session, [x for x in models if x not in recorded])
    if unknown:
        raise queries.QueryError("models", f"no results recorded for {unknown}; known: "
                                           f"{sorted(queries.known_models(session))}")
    if not any(n in pins.pins for r in chosen for n in _matters(r)):
        raise queries.QueryError("file", f"{pins.path} pins none of {', '.join(_matters(chosen[0]))}: nothing to "
                                         "compare with what was measured")
    picks: list[_VerdictPick] = []
    fixes: dict[str, _FixPick | None] = {}
    comparers: dict[tuple[str, ...], _Comparer] = {}  # routes that weigh the same packages share one (and its memo)
    for route in chosen:
        comparer = comparers.get(_matters(route)) or comparers.setdefault(_matters(route), _Comparer(pins, route))
        ranked = comparer.rank(slices[route].columns(), slices[route].rows(models))
        for model in models:
            picks.append(_pick(comparer, ranked, model, route, exporter))
        fixes[route] = _fix(comparer, ranked, models)
    _details(session, [o for p in picks for o in p.cited()] + [f.newest for f in fixes.values() if f is not None])
    seen = signatures_seen(session, {(p.evidence.outcomes[p.model].signature, p.route) for p in picks
                                     if p.evidence is not None and not p.passed}, facts,
                           next(iter(slices.values())).version)
    results = [p.out(seen) for p in picks]
    weighed = {n for r in chosen for n in _matters(r)}
    shown = {n: _shown(p) for n, p in pins.pins.items() if n in weighed}
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


def _pick(comparer: _Comparer, ranked: Ranked, model: str, route: str, exporter: str | None) -> _VerdictPick:
    """One walk over the environments that tried the model, closest first, until the answer is whole: those that
    match the pins lead (distance 0), then come the nearest and the closest pass (the fix)."""
    passed: list[Measured] = []
    failed: list[Measured] = []
    nearest: list[Measured] = []
    fix = None
    for m, distance in ranked:
        o = m.outcomes.get(model)
        if o is None:
            continue
        if len(nearest) < NEAREST:
            nearest.append(m)
        if fix is None and o.status == "pass":
            fix = _FixPick(m, comparer.differences(m), o)
        if not distance:
            (passed if o.status == "pass" else failed).append(m)
        elif fix is not None and len(nearest) == NEAREST:
            break  # past the matching ones, with the nearest and the fix found
    passed.sort(key=lambda m: (-m.place, -m.research_place))
    failed.sort(key=lambda m: (-m.place, -m.research_place))
    # A pass anywhere the pins match outweighs a failure elsewhere: the failing twin differs in what the file
    # leaves unpinned (another exporter, or a package it does not name).
    evidence = passed[0] if passed else failed[0] if failed else None
    return _VerdictPick(
        model=model, route=route, exporter=exporter, matched={"passed": len(passed), "failed": len(failed)},
        fix=fix, evidence=evidence, passed=bool(passed),
        nearest=[(m, comparer.differences(m)) for m in nearest] if evidence is None else [],
    )


def signature_seen(session: Session, signature: str | None, route: str,
                   facts: queries.FactsCache | None = None) -> SignatureSeen | None:
    """Where `signature` was seen on `route` (any model): dates, environments, and the span of each key version."""
    if signature is None:
        return None
    return signatures_seen(session, {(signature, route)}, facts).get((signature, route))


def signatures_seen(session: Session, wanted: set[tuple[str | None, str]],
                    facts: queries.FactsCache | None = None, version: int | None = None,
                    ) -> dict[tuple[str, str], SignatureSeen]:
    """signature_seen for several (signature, route) pairs: one index-only read (ix_case_signature_route), and the
    versions from the facts cache, plus a route's own converter where it is not a key package. `version`: the
    data version the caller's answer reads at, when it has read it already."""
    pairs: set[tuple[str, str]] = {(s, r) for s, r in wanted if s is not None}
    if not pairs:
        return {}
    facts = facts or queries.FactsCache()
    # Held per data version beside the slices: a failure common enough to be cited often spans many environments,
    # and its read was the slowest statement of a check (issue 14).
    index: MeasuredIndex = facts.derived.setdefault("measured", MeasuredIndex())
    version = facts.version.read(session) if version is None else version
    held = index.spans.at(version)
    todo = pairs - held.keys()
    if todo:
        rows = index.signature_rows(session, version, {r for _, r in todo})
        for signature, route in todo:
            held[signature, route] = _span(session, facts, route, rows[route].get(signature))
    return {pair: seen for pair in pairs if (seen := held[pair]) is not None}


# Per signature seen on a route: (environment, first seen, last seen) per environment (Seen).
_SIGNATURE_ROWS = (
    select(Case.signature, Case.environment_id, func.min(Case.recorded_at), func.max(Case.recorded_at))
    .where(Case.route == bindparam("route"), Case.signature.is_not(None))
    .group_by(Case.signature, Case.environment_id)
)


def _span(session: Session, facts: queries.FactsCache, route: str, rows: list[Seen] | None) -> SignatureSeen | None:
    """Where one signature was seen on `route`: (environment, first, last) per environment, folded."""
    if not rows:
        return None
    matters = _matters(route)
    # Key versions and the route's own converter, from the facts cache (read once per environment and route).
    weighed = facts.route_versions(session, {e for e, _, _ in rows}, route)
    versions: dict[str, set[str]] = defaultdict(set)
    for env_id, _, _ in rows:
        for name, version in weighed.get(env_id, {}).items():
            if name in matters:
                versions["tensorflow" if name in ALIASES else name].add(version)
    return SignatureSeen(
        environments=len(rows), first_seen=min(r[1] for r in rows), last_seen=max(r[2] for r in rows),
        versions={n: [min(v, key=queries.version_key), max(v, key=queries.version_key)]
                  for n, v in sorted(versions.items(), key=lambda kv: matters.index(kv[0])
                                     if kv[0] in matters else 99)},
    )


# -- why a chains answer is what it is -----------------------------------------------------------------------------

def explain_chains(session: Session, query: queries.ChainQuery, facts: queries.FactsCache | None = None,
                   view: ChainsView | None = None) -> tuple[list[NearMiss], MeasuredCounts]:
    """The closest failing environments (most requested models passed, then newest) and how much was measured.

    An empty chains answer then says whether nothing was measured, nothing resolved, or everything failed.
    `view`: what chains_view() read for the query, when the caller has it already.
    """
    facts = facts or queries.FactsCache()
    view = view or chains_view(session, query, facts)
    envs, environments = view.envs, view.environments
    if query.python:
        envs = {e: m for e, m in envs.items() if m.python == query.python}
    tried = {e: m for e, m in envs.items() if m.outcomes}
    misses = [m for k, m in tried.items() if k not in view.passed]
    wanted = [m for m in misses if query.requirements.met(m.versions)] if query.require else misses
    if not wanted and "export" in ROUTES.get(query.route, ()):
        # Nothing that ran the route meets the query's pins: where a split export failed, no graph reached the
        # route and no pair exists, yet that failure is the closest the data came (torch 2.0 cannot export the
        # transformer). Read only here, so an answer with misses of its own pays nothing for it.
        exports = _export_failures(session, query, facts)
        wanted = [m for m in exports if query.requirements.met(m.versions)] or misses + exports
    shown = heapq.nsmallest(NEAR_MISSES, wanted, key=lambda m: (
        -sum(x in m.outcomes and m.outcomes[x].status == "pass" for x in query.models), -m.place, -m.research_place))
    _details(session, [m.outcomes[x] for m in shown for x in query.models if x in m.outcomes])
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
