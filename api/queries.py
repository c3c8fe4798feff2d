"""Read-side SQL as named functions: (session, params) → rows. Routes and the CLI call these."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Generic, TypeVar, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy import ColumnElement, Row, Select, and_, bindparam, case, exists, func, select
from sqlalchemy.orm import Session, aliased, selectinload

from api.schemas import (
    CaseOut,
    CellStatus,
    ChainOut,
    ChainSide,
    EnvironmentKind,
    EnvironmentOut,
    EnvironmentRef,
    FailureExample,
    FailureOut,
    FailureSlice,
    FailuresOut,
    MatrixCell,
    MatrixEnvironment,
    MatrixOut,
    ModelEvidence,
    PackageOut,
    RunDetailOut,
    RunEnvironment,
    RunOut,
    RunsOut,
    SplitChainOut,
    StepOut,
)
from matrix.routes import ALIASES, EXPORTERS, KEY_PACKAGES, KINDS, ROUTE_PACKAGES
from store.models import Case, DataChange, Environment, Outcome, Package, Run, Step
from store.outcomes import current as current  # re-exported: api.coverage and api.verdicts read it here

# A result row of any shape (SQLAlchemy 2.1's Row is variadic: Row[Any] would be a one-column row).
AnyRow = Row[*tuple[Any, ...]]


class QueryError(ValueError):
    """A parameter the caller got wrong: `param` names it, the message says what was expected."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class RequirementTest:
    """A query's `require` pins, tested against environments' versions with each (pin, version) decided once.

    packaging's SpecifierSet.contains costs tens of microseconds, and a query weighs every measured environment,
    which share a handful of versions per package (issue 14). One per query: not shared across threads.
    """

    def __init__(self, require: tuple[Requirement, ...]) -> None:
        # Per pin: the names it is met by, its specifier, and each version decided so far.
        self._require = [(aliases(r.name), r.specifier, dict[str, bool]()) for r in require]

    def met(self, versions: dict[str, str]) -> bool:
        """Whether `versions` satisfy every pin; a pin on tensorflow is met by tensorflow-cpu as well (aliases)."""
        for names, specifier, seen in self._require:
            for name in names:
                version = versions.get(name)
                if version is None:
                    continue
                hit = seen.get(version)
                if hit is None:
                    hit = seen[version] = specifier.contains(version, prereleases=True)
                if hit:
                    break
            else:
                return False
        return True


@dataclass(frozen=True)
class ChainQuery:
    models: tuple[str, ...]
    route: str
    exporter: str | None = None
    python: str | None = None
    require: tuple[Requirement, ...] = field(default=())
    limit: int | None = None
    target: str | None = None  # saved_model | tflite | keras: what must have passed on a TF route (issue 11)

    @classmethod
    def parse(
        cls, models: str | list[str], route: str, *, exporter: str | None = None,
        python: str | None = None, require: list[str] | None = None, limit: int | None = None,
        target: str | None = None,
    ) -> ChainQuery:
        names = split_names(models)
        if not names:
            raise QueryError("models", "expected one or more comma-separated model names")
        reqs = []
        for text in require or []:
            try:
                reqs.append(Requirement(text))
            except InvalidRequirement:
                raise QueryError("require", f"expected a PEP 508 requirement such as 'torch>=2.3', got {text!r}") \
                    from None
        return cls(tuple(dict.fromkeys(names)), route, exporter, python, tuple(reqs), limit, target)

    @cached_property
    def requirements(self) -> RequirementTest:
        """`require`, as the rankings and near misses of this query test it."""
        return RequirementTest(self.require)


def split_names(value: str | list[str] | None) -> list[str]:
    """`a,b` or repeated parameters (`models=a&models=b`) → names, in order, without blanks or repeats."""
    parts = [value] if isinstance(value, str) else (value or [])
    return list(dict.fromkeys(n.strip() for part in parts for n in part.split(",") if n.strip()))


def aliases(name: str) -> tuple[str, ...]:
    name = canonicalize_name(name)
    return ALIASES.get(name, (name,))


@lru_cache(maxsize=65536)
def _version(text: str | None) -> Version:
    # Cached: ranking parses the same few hundred version strings on every request.
    try:
        return Version(text or "0")
    except InvalidVersion:
        return Version("0")


def version_key(text: str | None) -> tuple[int, Version, str]:
    """Sort key for version strings: PEP 440 order, unparsable ones first, missing (None) last."""
    if text is None:
        return (2, Version("0"), "")
    try:
        return (1, Version(text), text)
    except InvalidVersion:
        return (0, Version("0"), text)


def rank_key(versions: dict[str, str]) -> tuple[Version, ...]:
    tf = versions.get("tensorflow") or versions.get("tensorflow-cpu")
    return (_version(versions.get("torch")), _version(tf), _version(versions.get("onnx")),
            _version(versions.get("onnxruntime")))


@lru_cache(maxsize=8)
def _evidence_query(exporter: bool, target: bool, paged: bool = True) -> Select[*tuple[Any, ...]]:
    """The passing cases of a page of chains (or, not `paged`, of every environment), with their environments'
    fields: built once per filter and bound per request (`page`, `models`, `route`, `exporter`, `target`). Building
    it per request cost a /chains answer a millisecond of coercion (issue 14)."""
    conditions = [Case.model.in_(bindparam("models", expanding=True)), Case.route == bindparam("route"),
                  Case.status == "pass", Case.artifact_id.is_(None), current()]
    if exporter:
        conditions.append(Case.exporter == bindparam("exporter"))
    if target:
        conditions.append(Case.target == bindparam("target"))
    if paged:  # the page on both sides of the join: the environments are then read by key, not scanned and hashed
        conditions += [Case.environment_id.in_(bindparam("page", expanding=True)),
                       Environment.id.in_(bindparam("page", expanding=True))]
    return (
        select(Case.environment_id, Case.model, Case.exporter, Case.opset, Case.opset_emitted, Case.max_abs_diff,
               Case.target, Case.recorded_at, Case.run_id, Case.id, Environment.name, Environment.python,
               Environment.python_full, Environment.lock_hash, Environment.cutoff, Environment.index_url)
        .join(Environment, Environment.id == Case.environment_id)
        .where(*conditions)
    )


_EVERY_ENVIRONMENTS_EVIDENCE = _evidence_query(False, False, paged=False)


def read_evidence(session: Session, facts: FactsCache, version: int, route: str, models: dict[str, Iterable[int]],
                  ) -> None:
    """Read into the answers' memo at `version` (FactsCache.evidence) the evidence of every environment of
    `models` (model → environment ids) on `route`, for answers that narrow no exporter or target: what a chains page
    of them cites then needs no read (api/verdicts.py reads it as a route's slice grows by those models)."""
    read: dict[int, dict[str, list[AnyRow]]] = defaultdict(dict)
    for model, env_ids in models.items():
        for env_id in env_ids:
            read[env_id][model] = []
    for row in session.connection().execute(_EVERY_ENVIRONMENTS_EVIDENCE, {"models": sorted(models), "route": route}):
        if row.environment_id in read and row.model in read[row.environment_id]:
            read[row.environment_id][row.model].append(row)
    held = facts.evidence.at(version)
    for env_id, per_model in read.items():  # one dict item at a time: safe across threads
        key = (route, None, None, env_id)
        held[key] = {**held.get(key, {}), **per_model}


def failed_exports() -> Select[int, str, Any]:
    """Per (export environment, model): its newest current export that failed, where no export of the model passed
    there. Split mode stores no runtime case after a failed export, so this is the only trace of that torch on
    the ONNX routes (another opset or exporter that worked put a graph on them, which then ran or will)."""
    return (
        select(Case.environment_id, Case.model, func.max(case((Case.status != "pass", Case.id))))
        .where(Case.route == "export", Case.status != "skip", current())
        .group_by(Case.environment_id, Case.model)
        .having(func.sum(case((Case.status == "pass", 1), else_=0)) == 0)
    )


@dataclass(frozen=True)
class EnvironmentFacts:
    """What ranking needs of one resolved environment: fixed once it is recorded (a new lock is a new row)."""

    python: str  # as requested, e.g. "3.11"
    name: str  # the environment's readable id
    versions: dict[str, str]  # the KEY_PACKAGES it pins
    rank: tuple[Version, ...]


class FactsCache:
    """Per-process memo of EnvironmentFacts by environment id, so that ranking reads no package rows.

    Environments and their packages are never changed after they are stored, so an entry never goes stale
    for the database it was read from; hold one cache per database (the app keeps one in its state).
    """

    def __init__(self, recheck: float = 0.0) -> None:
        # The data version the answers read at (DataVersion): shared with the app's response cache.
        self.version = DataVersion(recheck)
        # Replaced whole, never mutated: a reader always sees facts and places that belong together.
        self._state: tuple[dict[int, EnvironmentFacts], dict[int, int]] = ({}, {})
        self._lock = threading.Lock()
        self._requested: dict[int, tuple[str, ...]] = {}  # environment id → its requirements, as stored
        self._wanted: dict[str, dict[int, bool]] = {}  # route → environment id → requests_route
        self._weighed: dict[str, dict[int, dict[str, str]]] = {}  # route → environment id → route_versions
        # What readers above derive from the store and keep as long as these facts (api/verdicts.py MeasuredIndex).
        self.derived: dict[str, Any] = {}
        # The chains pages' evidence read at each data version (_page_evidence, read_evidence).
        self.evidence: PerVersion[Evidence] = PerVersion(dict)

    def requested(self, session: Session, env_ids: Collection[int]) -> dict[int, tuple[str, ...]]:
        """The requirements each environment was asked with (fixed when it is stored, like the facts)."""
        missing = [e for e in env_ids if e not in self._requested]
        for i in range(0, len(missing), 5000):
            for env_id, requirements in session.connection().execute(
                select(Environment.id, Environment.requirements).where(Environment.id.in_(missing[i: i + 5000]))
            ):
                self._requested[env_id] = tuple(requirements)  # one dict item at a time: safe across threads
        return {e: self._requested[e] for e in env_ids if e in self._requested}

    def requests_route(self, session: Session, env_ids: Collection[int], route: str) -> dict[int, bool]:
        """Whether each of `env_ids` asked for the route's package (requests_route), weighed once per environment,
        route and process: every /chains answer weighs every environment (issue 14). Read only: the cache's own."""
        wanted = self._wanted.setdefault(route, {})
        missing = [e for e in env_ids if e not in wanted]
        if missing:
            for env_id, requirements in self.requested(session, missing).items():
                wanted[env_id] = requests_route(requirements, route)  # one dict item at a time, as above
        return wanted

    def route_versions(self, session: Session, env_ids: Collection[int], route: str) -> dict[int, dict[str, str]]:
        """The versions a route weighs, per environment of `env_ids` that exists: the facts' KEY_PACKAGES plus the
        route's own packages where they are not key packages (onnx2tf, onnx-tf, nobuco, litert-torch).

        Read once per environment, route and process, like the facts (packages are stored with their environment
        and never change): every answer on those routes read every environment's converter row and copied every
        environment's versions to add it, a round trip and a dict per environment per request (issue 14). Read
        only: the dicts are the cache's own, and with no own packages they are the facts' own.
        """
        facts = self.every(session, env_ids)[0]
        extra = sorted(n for n in ROUTE_PACKAGES.get(route, ()) if n not in KEY_PACKAGES)
        if not extra:
            return {e: facts[e].versions for e in env_ids if e in facts}
        weighed = self._weighed.setdefault(route, {})
        missing = [e for e in env_ids if e not in weighed and e in facts]
        own: dict[int, dict[str, str]] = defaultdict(dict)
        for i in range(0, len(missing), 5000):
            for env_id, name, version in session.connection().execute(
                select(Package.environment_id, Package.name, Package.version)
                .where(Package.name.in_(extra), Package.environment_id.in_(missing[i: i + 5000]))
                .order_by(Package.environment_id, Package.name)
            ):
                own[env_id][name] = version
        for e in missing:
            weighed[e] = {**facts[e].versions, **own[e]}  # one dict item at a time: safe across threads
        return {e: weighed[e] for e in env_ids if e in weighed}

    def get(self, session: Session, env_ids: Collection[int]) -> tuple[dict[int, EnvironmentFacts], dict[int, int]]:
        """The facts of `env_ids` (those that exist), and every known environment's place in the ranking.

        Places are ints, so a request sorts its candidates without comparing a single Version.
        """
        facts, order = self.every(session, env_ids)
        return {e: facts[e] for e in env_ids if e in facts}, order

    def every(self, session: Session, env_ids: Collection[int]) -> tuple[dict[int, EnvironmentFacts], dict[int, int]]:
        """get() without the copy: the facts of every environment known so far, `env_ids` among them (those that
        exist). Read only: the dicts are the cache's own."""
        missing = [e for e in env_ids if e not in self._state[0]]
        if missing:
            loaded = _load_facts(session, missing)
            with self._lock:
                # Replaced only if something is new: readers hold on to the state they were given (a slice of
                # api/verdicts.py is valid for one ranking), and threads that loaded the same facts at once would
                # each have replaced it.
                new = {e: f for e, f in loaded.items() if e not in self._state[0]}
                if new:
                    facts = {**self._state[0], **new}
                    ranked = sorted(facts, key=lambda e: (facts[e].rank, e))
                    self._state = (facts, {e: i for i, e in enumerate(ranked)})
        return self._state


def _load_facts(session: Session, env_ids: list[int]) -> dict[int, EnvironmentFacts]:
    conn = session.connection()  # plain rows: no ORM per-row processing
    pythons: dict[int, tuple[str, str, str]] = {}
    versions: dict[int, dict[str, str]] = defaultdict(dict)
    for i in range(0, len(env_ids), 5000):
        chunk = env_ids[i: i + 5000]
        for env_id, python, python_full, name in conn.execute(
            select(Environment.id, Environment.python, Environment.python_full, Environment.name)
            .where(Environment.id.in_(chunk))
        ):
            pythons[env_id] = (python, python_full or python, name)
        for env_id, name, version in conn.execute(
            select(Package.environment_id, Package.name, Package.version)
            .where(Package.environment_id.in_(chunk), Package.name.in_(KEY_PACKAGES))
        ):
            versions[env_id][name] = version
    return {e: EnvironmentFacts(python=pythons[e][0], name=pythons[e][2], versions=dict(versions[e]),
                                rank=(*rank_key(versions[e]), _version(pythons[e][1])))
            for e in pythons}


def known_good_chains(session: Session, query: ChainQuery, facts: FactsCache | None = None) -> list[ChainOut]:
    """Environments in which every requested model passed on the route, newest versions first."""
    return known_good_chain_page(session, query, facts)[0]


def known_good_chain_page(
    session: Session, query: ChainQuery, facts: FactsCache | None = None, candidates: list[int] | None = None,
    version: int | None = None,
) -> tuple[list[ChainOut], int]:
    """The best `query.limit` chains (all if None), and how many chains matched in all.

    One aggregate over the outcome rows (current passes, kept by store/outcomes.py) finds the candidates; their
    key versions come from `facts` (read once per environment and process), so a request reads no package rows
    unless a `require` names a package outside KEY_PACKAGES. The evidence (cases, runs) is read for the page only.
    `candidates`: the complete environments, when the caller has read them already (verdicts.ChainsView).
    `version`: the data version the caller's answer reads at; with `facts`, the evidence read is kept for the
    answers at that version (FactsCache.evidence).
    """
    # The outcome table holds each key's current passes already counted (store/outcomes.py): one index range
    # per model, instead of every case with its current() probe.
    if candidates is None:
        where = [Outcome.route == query.route, Outcome.model.in_(query.models), Outcome.passed > 0]
        if query.exporter:
            where.append(Outcome.exporter == query.exporter)
        if query.target:
            where.append(Outcome.target == query.target)
        complete = (
            select(Outcome.environment_id)
            .where(*where)
            .group_by(Outcome.environment_id)
            .having(func.count(func.distinct(Outcome.model)) == len(query.models))
        )
        candidates = list(session.connection().execute(complete).scalars())
    if not candidates:
        return [], 0
    known, place = (facts or FactsCache()).get(session, candidates)
    if query.python:
        known = {e: f for e, f in known.items() if f.python == query.python}
    versions = {e: f.versions for e, f in known.items()}
    extra = sorted({a for r in query.require for a in aliases(r.name)} - set(KEY_PACKAGES))
    if extra and versions:
        versions = {e: dict(v) for e, v in versions.items()}
        for env_id, name, pinned in session.connection().execute(
            select(Package.environment_id, Package.name, Package.version).where(Package.name.in_(extra))
        ):  # one index range scan, filtered here: cheaper than binding a thousand ids
            if env_id in versions:
                versions[env_id][name] = pinned
    if query.require:
        met = query.requirements.met
        ranked = [env_id for env_id, pinned in versions.items() if met(pinned)]
    else:
        ranked = list(versions)
    ranked.sort(key=place.__getitem__, reverse=True)
    page = ranked if query.limit is None else ranked[: query.limit]
    if not page:
        return [], len(ranked)
    envs, evidence = _page_evidence(session, query, page,
                                    facts.evidence.at(version) if facts is not None and version is not None else None)
    chains = []
    for env_id in page:
        env, rows = envs[env_id], evidence[env_id]
        newest, per_model = _newest_and_worst(rows)
        chains.append(ChainOut(
            environment_id=env_id, name=env.name, python=env.python, python_full=env.python_full,
            versions={n: v for n, v in versions[env_id].items() if n in KEY_PACKAGES},
            lock_hash=env.lock_hash or "", run_id=newest.run_id, recorded_at=newest.recorded_at,
            cutoff=env.cutoff, index_url=env.index_url, cases_passed=len(rows),
            models=[ModelEvidence(model=r.model, exporter=r.exporter, opset=r.opset, target=r.target,
                                  opset_emitted=r.opset_emitted, max_abs_diff=r.max_abs_diff)
                    for r in sorted(per_model.values(), key=lambda r: query.models.index(r.model))],
        ))
    return chains, len(ranked)


# Per (route, exporter, target, environment): per model the passing cases of the environment that a chains page
# cites, each row with the environment's own fields.
EvidenceKey = tuple[str, str | None, str | None, int]
Evidence = dict[EvidenceKey, dict[str, list[AnyRow]]]


def _page_evidence(session: Session, query: ChainQuery, page: list[int], held: Evidence | None,
                   ) -> tuple[dict[int, AnyRow], dict[int, list[AnyRow]]]:
    """Per environment of `page`: a row with its own fields, and the passing cases of the query's models. Read in
    one round trip, of the environments `held` (the answers' memo at one data version) lacks a model of: the newest
    environments lead most pages, and their evidence was read again by every answer (issue 14)."""
    def key(env_id: int) -> EvidenceKey:
        return query.route, query.exporter, query.target, env_id

    found = {} if held is None else {e: f for e in page if (f := _held_evidence(held, query, e)) is not None}
    missing = [e for e in page if e not in found]
    read: dict[int, dict[str, list[AnyRow]]] = {e: {x: [] for x in query.models} for e in missing}
    if missing:
        for row in session.connection().execute(  # the environment's own fields ride along: one round trip
            _evidence_query(bool(query.exporter), bool(query.target)),
            {"page": missing, "models": list(query.models), "route": query.route, "exporter": query.exporter,
             "target": query.target},
        ):
            read[row.environment_id][row.model].append(row)
        if held is not None:
            for env_id, per_model in read.items():  # one dict item at a time: safe across threads
                held[key(env_id)] = {**held.get(key(env_id), {}), **per_model}
    envs: dict[int, AnyRow] = {}
    evidence: dict[int, list[AnyRow]] = {}
    for env_id in page:
        per_model = read[env_id] if env_id in read else found[env_id]
        rows = evidence[env_id] = [row for x in query.models for row in per_model[x]]
        if rows:
            envs[env_id] = rows[0]
    return envs, evidence


def _held_evidence(held: Evidence, query: ChainQuery, env_id: int) -> dict[str, list[AnyRow]] | None:
    """The evidence of `env_id` for every model of `query` as `held` has it: read for the query's own filters, or,
    for a query narrowed by an exporter or a target, filtered from the route's whole evidence (read with its slice,
    read_evidence) as the narrowed statement would. Such pages read theirs per answer: a fifth of the bench's."""
    models = query.models
    own = held.get((query.route, query.exporter, query.target, env_id))
    if own is not None and all(x in own for x in models):
        return own
    if query.exporter is None and query.target is None:
        return None
    whole = held.get((query.route, None, None, env_id))
    if whole is None or not all(x in whole for x in models):
        return None
    exporter, target = query.exporter, query.target
    return {x: [r for r in whole[x] if (exporter is None or r.exporter == exporter)
                and (target is None or r.target == target)] for x in models}


def _newest_and_worst(rows: list[AnyRow]) -> tuple[AnyRow, dict[str, AnyRow]]:
    """A chain's evidence: its newest passing case (run and date), and per model the worst passing diff, which is
    the honest figure. Ties go to the newer case, and to the older one of equal diffs: the same answer in whatever
    order the rows were read (per page, or with a route's slice)."""
    per_model: dict[str, AnyRow] = {}
    for row in rows:
        worst = per_model.get(row.model)
        if worst is None or ((row.max_abs_diff or 0), -row.id) > ((worst.max_abs_diff or 0), -worst.id):
            per_model[row.model] = row
    return max(rows, key=lambda r: (r.recorded_at, r.id)), per_model


def unknown_models(session: Session, models: tuple[str, ...] | list[str]) -> list[str]:
    """The requested models with no recorded case; one index probe each (in one statement), not a scan of every
    case."""
    return unknown_names(session, models)[0]


def unknown_packages(session: Session, names: list[str]) -> list[str]:
    """The requested package names (aliases count) that no resolved environment pins."""
    return unknown_names(session, (), names)[1]


def unknown_names(session: Session, models: Collection[str], packages: Collection[str] = ()
                  ) -> tuple[list[str], list[str]]:
    """unknown_models and unknown_packages in one statement, one index probe per name: a request checks its
    parameters in one round trip."""
    models, packages = list(models), list(packages)
    if not models and not packages:
        return [], []
    found = session.connection().execute(select(
        *[exists().where(Case.model == m) for m in models],
        *[exists().where(Package.name.in_(aliases(n))) for n in packages],
    )).one()
    return ([m for m, known in zip(models, found[: len(models)], strict=True) if not known],
            [n for n, known in zip(packages, found[len(models):], strict=True) if not known])


def known_models(session: Session) -> set[str]:
    return set(session.scalars(select(Case.model).distinct()))


_DATA_VERSION = select(DataChange.counter).where(DataChange.id == 1)


_T = TypeVar("_T")


class PerVersion(Generic[_T]):
    """What answers derive from the store at one data version, shared by the answers at it: made anew (empty) the
    first time it is asked for at another version, and replaced whole, so a reader fills one version's."""

    def __init__(self, make: Callable[[], _T]) -> None:
        self._make = make
        self._held: tuple[int, _T] = (-1, make())

    def at(self, version: int) -> _T:
        held = self._held
        if held[0] != version:
            held = self._held = (version, self._make())
        return held[1]

    def peek(self, version: int) -> _T | None:
        """The value at `version` if one was made, without making it."""
        held = self._held
        return held[1] if held[0] == version else None


class DataVersion:
    """data_version() as this process last read it, read again once `recheck` seconds have passed (0: by every
    answer). The answers within that window share one read, so that an answer from what the process holds
    (api/verdicts.py MeasuredIndex) makes no round trip at all: after an idle moment that one read cost an answer
    two milliseconds (issue 14). An answer is then at most `recheck` seconds behind newly changed results, as the
    response cache's are (api/cache.py), and this process's own writes show at once (forget())."""

    def __init__(self, recheck: float = 0.0) -> None:
        self.recheck = recheck
        self._held: tuple[int, float] | None = None  # (version, when its read began), replaced whole
        self._forgotten = 0  # forget() calls: a read that began before one is not kept
        self._ahead = False  # a read_ahead() claimed by ahead() has not ended

    def held(self) -> int | None:
        """The version read less than `recheck` seconds ago, if there is one."""
        held = self._held
        return held[0] if held is not None and time.monotonic() - held[1] < self.recheck else None

    def read(self, session: Session) -> int:
        version = self.held()
        return self._read(session) if version is None else version

    def ahead(self) -> bool:
        """Whether to read the version again now, ahead of need (read_ahead): the one held is past half its window
        and no such read is under way. Claims that read: the caller must make it.

        Read when the window had passed, the version was the one wait of the answers that came then, and in a
        thread beside an event loop busy with other answers that wait was up to 20 ms: POST /check's p99 (issue 14).
        Read ahead, it is current again before any answer needs it while answers keep coming."""
        held = self._held
        if self._ahead or held is None or self.recheck <= 0 or time.monotonic() - held[1] < self.recheck / 2:
            return False
        self._ahead = True
        return True

    def read_ahead(self, session: Session) -> None:
        """The read ahead() claimed."""
        try:
            self._read(session)
        finally:
            self._ahead = False

    def _read(self, session: Session) -> int:
        began, forgotten = time.monotonic(), self._forgotten  # the window starts before the read
        version = data_version(session)
        if forgotten == self._forgotten:  # else it may predate this process's own write: asked again next time
            self._held = (version, began)
        return version

    def forget(self) -> None:
        """Read again by the next answer: this process has just changed the data."""
        self._forgotten += 1
        self._held = None


def data_version(session: Session) -> int:
    """Keys the response cache: a counter that triggers move on every committed insert, update or delete.

    Read by every answer: one statement built once and run on the session's connection, without the ORM's
    per-statement work (half of what the read cost, issue 14)."""
    return session.connection().execute(_DATA_VERSION).scalar() or 0


@lru_cache(maxsize=16384)
def _pin(text: str) -> tuple[str, str | None] | None:
    """A requirement string → (normalised name, its `==` version or None); None if it does not parse."""
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    specs = list(req.specifier)
    exact = specs[0].version if len(specs) == 1 and specs[0].operator in ("==", "===") else None
    return canonicalize_name(req.name), exact


def _requested_pin(requirements: list[str], names: tuple[str, ...]) -> str | None:
    """The `==` version a request pinned for one of `names`: the axis value of an environment that never resolved."""
    for text in requirements:
        pin = _pin(text)
        if pin and pin[0] in names and pin[1]:
            return pin[1]
    return None


def _requests_route(requirements: list[str], route: str | None) -> bool:
    return requests_route(tuple(requirements), route)


@lru_cache(maxsize=65536)
def requests_route(requirements: tuple[str, ...], route: str | None) -> bool:
    """Whether an environment asked for the route's package (its requirements as stored); memoised, since every
    /chains answer counts the environments that resolved but ran nothing (issue 14)."""
    if route is None:
        return True
    wanted = {canonicalize_name(n) for n in ROUTE_PACKAGES.get(route, ())}
    return any((pin := _pin(text)) and pin[0] in wanted for text in requirements)


@dataclass(frozen=True)
class MatrixQuery:
    x: str = "torch"
    y: str = "tensorflow"
    route: str | None = None
    models: tuple[str, ...] = ()
    exporter: str | None = None
    python: str | None = None
    target: str | None = None
    kind: str | None = None  # joint | export | runtime: the kind of environment that ran the cases


def _case_filters(route: str | None, models: tuple[str, ...], exporter: str | None,
                  python: str | None, target: str | None = None, kind: str | None = None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [current()]
    if target:
        conditions.append(Case.target == target)
    if route:
        conditions.append(Case.route == route)
    if models:
        conditions.append(Case.model.in_(models))
    if exporter:
        conditions.append(Case.exporter == exporter)
    if python:
        conditions.append(Case.environment_id.in_(select(Environment.id).where(Environment.python == python)))
    if kind:
        conditions.append(Case.environment_id.in_(select(Environment.id).where(Environment.kind == kind)))
    return conditions


def _kind(value: str | None) -> EnvironmentKind:
    """An environment's kind as the schemas type it; rows recorded before kinds existed are joint."""
    return cast(EnvironmentKind, value if value in KINDS else "joint")


def _environment_kinds(session: Session) -> dict[int, EnvironmentKind]:
    # Every environment: the table is small beside the cases, and one read beats binding thousands of ids.
    return {env_id: _kind(kind) for env_id, kind in session.execute(select(Environment.id, Environment.kind))}


def _export_sides(session: Session, conditions: list[ColumnElement[bool]]) -> list[AnyRow]:
    """Runtime cases matching `conditions`, each with the export environment whose stored graph it ran.

    Rows of (id, environment_id, target, status, signature, export_id). One runtime case serves every export
    environment that produced the same graph, so it comes once per export environment; export_id is None where no
    current export case of the graph is recorded (the join is the one split_chain_page makes).
    """
    export = aliased(Case)
    return list(session.execute(
        select(Case.id, Case.environment_id, Case.target, Case.status, Case.signature,
               export.environment_id.label("export_id"))
        .outerjoin(export, and_(export.artifact_id == Case.artifact_id, export.model == Case.model,
                                export.route == "export", export.status == "pass", current(export)))
        .where(*conditions, Case.route != "export",
               Case.environment_id.in_(select(Environment.id).where(Environment.kind == "runtime")))
    ))


def _refs(session: Session, env_ids: Collection[int]) -> dict[int, EnvironmentRef]:
    """Export sides as rows name them: id, name, python and key versions (torch among them)."""
    versions = package_versions(session, env_ids, KEY_PACKAGES)
    return {row.id: EnvironmentRef(id=row.id, name=row.name, python=row.python, versions=versions.get(row.id, {}))
            for row in session.execute(select(Environment.id, Environment.name, Environment.python)
                                       .where(Environment.id.in_(sorted(set(env_ids)))))}


def _member_order(m: MatrixEnvironment) -> tuple[str, str]:
    return m.name, m.export_environment.name if m.export_environment else ""


# A cell's identity: (x version, y version, target, environment kind). Targets and kinds never share a verdict
# (issues 11, 12): the in-memory Keras model passing says nothing about the .tflite, nor a joint environment about
# a split chain. A target of None is an environment in which nothing ran (it did not resolve).
CellKey = tuple[str | None, str | None, str | None, EnvironmentKind]


def matrix_grid(session: Session, query: MatrixQuery) -> MatrixOut:
    """Versions of `x` against versions of `y`: per cell (one target, one environment kind) the environments
    there and their pass/fail counts.

    Joint and export environments count their own cases. A runtime environment has no torch, so its cases are
    placed by export → runtime pair: the runtime side's pins, then the export side's (torch), name the cell.
    """
    xs, ys = aliases(query.x), aliases(query.y)
    conditions = _case_filters(query.route, query.models, query.exporter, query.python, query.target, query.kind)
    kinds = _environment_kinds(session)
    counts: dict[tuple[int, str], tuple[int, int]] = {}
    for row in session.execute(
        select(Case.environment_id, Case.target, func.count().filter(Case.status == "pass").label("passed"),
               func.count().label("total"))
        .where(*conditions).group_by(Case.environment_id, Case.target)
    ):
        if kinds.get(row.environment_id) != "runtime":  # counted per pair below
            counts[row.environment_id, row.target] = (row.passed, row.total)
    # (export environment or None, runtime environment, target) → runtime case id → passed
    pairs: dict[tuple[int | None, int, str], dict[int, bool]] = defaultdict(dict)
    for row in _export_sides(session, conditions):
        pairs[row.export_id, row.environment_id, row.target][row.id] = row.status == "pass"
    measured = {e for e, _ in counts} | {r for _, r, _ in pairs} | {e for e, _, _ in pairs if e is not None}
    rows = {e.id: e for e in session.execute(
        select(Environment.id, Environment.name, Environment.python, Environment.status, Environment.signature,
               Environment.requirements))}
    # An environment that never resolved has no cases, but it is an answer too: "this pair conflicts".
    unresolved = [
        e for e in rows.values()
        if e.id not in measured and e.signature and _requests_route(e.requirements, query.route)
        and (not query.python or e.python == query.python) and (not query.kind or kinds.get(e.id) == query.kind)
    ]
    pins: dict[int, dict[str, str]] = defaultdict(dict)
    shown = measured | {e.id for e in unresolved}
    for env_id, name, version in session.connection().execute(
        select(Package.environment_id, Package.name, Package.version).where(Package.name.in_(sorted({*xs, *ys})))
    ):
        if env_id in shown:  # filtered here rather than binding every id (see known_good_chain_page)
            pins[env_id][name] = version

    def axis(ids: tuple[int, ...], names: tuple[str, ...]) -> str | None:
        """The first side that pins one of `names`, else the first that asked for it (an unresolved request)."""
        for env_id in ids:
            if found := next((pins[env_id][n] for n in names if n in pins[env_id]), None):
                return found
        return next((v for env_id in ids if (v := _requested_pin(rows[env_id].requirements, names))), None)

    def member(env_id: int, passed: int, failed: int, export_id: int | None = None) -> MatrixEnvironment:
        env = rows[env_id]
        return MatrixEnvironment(
            id=env.id, name=env.name, python=env.python, status=env.status, signature=env.signature, passed=passed,
            failed=failed, kind=kinds.get(env_id, "joint"),
            export_environment=None if export_id is None else refs[export_id],
        )

    refs = _refs(session, {e for e, _, _ in pairs if e is not None})
    members: dict[CellKey, list[MatrixEnvironment]] = defaultdict(list)
    tally: dict[CellKey, list[int]] = defaultdict(lambda: [0, 0])
    runtime_cases: dict[CellKey, dict[int, bool]] = defaultdict(dict)  # a case counts once per cell
    key: CellKey
    for (env_id, target), (passed, total) in counts.items():
        key = (axis((env_id,), xs), axis((env_id,), ys), target, kinds.get(env_id, "joint"))
        members[key].append(member(env_id, passed, total - passed))
        tally[key][0] += passed
        tally[key][1] += total - passed
    for (export_id, runtime_id, target), outcome in pairs.items():
        sides = (runtime_id,) if export_id is None else (runtime_id, export_id)
        key = (axis(sides, xs), axis(sides, ys), target, "runtime")
        passed = sum(outcome.values())
        members[key].append(member(runtime_id, passed, len(outcome) - passed, export_id))
        runtime_cases[key].update(outcome)
    # An unresolved environment joins the cells measured at its pins (it adds no verdict to them: 0 passed, 0 failed,
    # its own status says why), and stands alone as target None only where nothing was measured.
    measured_at: dict[tuple[str | None, str | None, EnvironmentKind], list[CellKey]] = defaultdict(list)
    for key in list(members):
        measured_at[key[0], key[1], key[3]].append(key)
    for env in unresolved:
        at = (axis((env.id,), xs), axis((env.id,), ys), kinds.get(env.id, "joint"))
        for key in measured_at.get(at) or [(at[0], at[1], None, at[2])]:
            members[key].append(member(env.id, 0, 0))
    out = []
    for key, group in members.items():
        xv, yv, cell_target, kind = key
        outcome = runtime_cases.get(key, {})
        joint_passed, joint_failed = tally.get(key, (0, 0))
        passed = joint_passed + sum(outcome.values())
        failed = joint_failed + len(outcome) - sum(outcome.values())
        status: CellStatus = ("unresolved" if passed + failed == 0 else "pass" if failed == 0
                              else "fail" if passed == 0 else "mixed")
        out.append(MatrixCell(x=xv, y=yv, status=status, passed=passed, failed=failed, target=cell_target, kind=kind,
                              environments=sorted(group, key=_member_order)))
    out.sort(key=lambda c: (version_key(c.x), version_key(c.y), c.target is None, c.target or "",
                            KINDS.index(c.kind)))
    return MatrixOut(
        x=query.x, y=query.y, route=query.route, models=list(query.models), exporter=query.exporter,
        python=query.python, x_versions=sorted({c.x for c in out}, key=version_key),
        y_versions=sorted({c.y for c in out}, key=version_key), cells=out, target=query.target,
        kind=_kind(query.kind) if query.kind else None,
    )


@dataclass(frozen=True)
class FailureQuery:
    package: str = "torch"
    route: str | None = None
    models: tuple[str, ...] = ()
    exporter: str | None = None
    python: str | None = None
    limit: int = 100
    target: str | None = None
    kind: str | None = None


@dataclass
class _Slice:
    """One (target, kind) part of a signature group."""

    n: int = 0
    envs: set[int] = field(default_factory=set)
    example_id: int = 0
    versions: set[str] = field(default_factory=set)


@dataclass
class _SignatureGroup:
    signature: str
    first: dt.datetime
    last: dt.datetime
    n: int = 0
    envs: set[int] = field(default_factory=set)
    example_id: int = 0
    versions: set[str] = field(default_factory=set)
    slices: dict[tuple[str | None, EnvironmentKind], _Slice] = field(default_factory=dict)


def _span(versions: set[str]) -> tuple[str | None, str | None]:
    ordered = sorted(versions, key=version_key)
    return (ordered[0], ordered[-1]) if ordered else (None, None)


def _slices(g: _SignatureGroup, examples: dict[int, FailureExample]) -> list[FailureSlice]:
    return [FailureSlice(target=target, kind=kind, count=s.n, environments=len(s.envs),
                         first_version=_span(s.versions)[0], last_version=_span(s.versions)[1],
                         example=examples[s.example_id])
            for (target, kind), s in sorted(g.slices.items(), key=lambda item: (
                -item[1].n, item[0][0] is None, item[0][0] or "", KINDS.index(item[0][1])))]


def failures(session: Session, query: FailureQuery) -> FailuresOut:
    """Signatures with counts, the span of `package` versions where each was seen, and one example; each split
    into slices of one target and one environment kind.

    A runtime environment (split chain) pins no torch: where it does not pin `package`, the versions are those of
    the export environments whose graph the failing cases ran.
    """
    names = aliases(query.package)
    conditions = [Case.signature.is_not(None), *_case_filters(query.route, query.models, query.exporter,
                                                               query.python, query.target, query.kind)]
    kinds = _environment_kinds(session)
    pinned = {env_id: version for env_id, version in session.execute(
        select(Package.environment_id, Package.version).where(Package.name.in_(names))
    )}
    exported: dict[tuple[str | None, int, str], set[int]] = defaultdict(set)
    for side in _export_sides(session, conditions):
        if side.export_id is not None:
            exported[side.signature, side.environment_id, side.target].add(side.export_id)

    def seen(signature: str, env_id: int, target: str) -> set[str]:
        if env_id in pinned:
            return {pinned[env_id]}
        return {pinned[e] for e in exported.get((signature, env_id, target), ()) if e in pinned}

    by_sig: dict[str, _SignatureGroup] = {}
    # Per (signature, environment, target): one pass over the failed cases, small enough to fold here.
    for row in session.execute(
        select(Case.signature, Case.environment_id, Case.target, func.count().label("n"),
               func.min(Case.id).label("first_id"), func.min(Case.recorded_at).label("first"),
               func.max(Case.recorded_at).label("last"))
        .where(*conditions).group_by(Case.signature, Case.environment_id, Case.target)
    ):
        g = by_sig.get(row.signature) or by_sig.setdefault(
            row.signature, _SignatureGroup(row.signature, first=row.first, last=row.last)
        )
        versions = seen(row.signature, row.environment_id, row.target)
        g.n += row.n
        g.envs.add(row.environment_id)
        g.example_id = min(g.example_id or row.first_id, row.first_id)
        g.first = min(g.first, row.first)
        g.last = max(g.last, row.last)
        g.versions |= versions
        part = g.slices.setdefault((row.target, kinds.get(row.environment_id, "joint")), _Slice())
        part.n += row.n
        part.envs.add(row.environment_id)
        part.example_id = min(part.example_id or row.first_id, row.first_id)
        part.versions |= versions
    groups = sorted(by_sig.values(), key=lambda g: (-g.n, g.signature))[: query.limit]
    where = [*conditions, Case.signature.in_([g.signature for g in groups])]
    seen_in: dict[str | None, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for sig, model, route in session.execute(select(Case.signature, Case.model, Case.route).where(*where).distinct()):
        seen_in[sig][0].add(model)
        seen_in[sig][1].add(route)
    examples = _failure_examples(
        session, {g.example_id for g in groups} | {s.example_id for g in groups for s in g.slices.values()}, kinds)
    out = []
    for g in groups:
        models, routes = seen_in[g.signature]
        first_version, last_version = _span(g.versions)
        out.append(FailureOut(
            signature=g.signature, scope="case", count=g.n, environments=len(g.envs), models=sorted(models),
            routes=sorted(routes), first_version=first_version, last_version=last_version, first_seen=g.first,
            last_seen=g.last, example=examples[g.example_id], targets=sorted({t for t, _ in g.slices if t is not None}),
            kinds=sorted({k for _, k in g.slices}, key=KINDS.index), slices=_slices(g, examples),
        ))
    # A resolution failure ran no target and no model: it answers only a query that names neither.
    if not query.models and not query.exporter and not query.target:
        out.extend(_environment_failures(session, query, names, kinds))
    out.sort(key=lambda f: (-f.count, f.signature))
    return FailuresOut(package=query.package, route=query.route, models=list(query.models),
                       failures=out[: query.limit], target=query.target,
                       kind=_kind(query.kind) if query.kind else None)


def _failure_examples(session: Session, case_ids: set[int], kinds: dict[int, EnvironmentKind],
                      ) -> dict[int, FailureExample]:
    """The example cases, each with its first failing step, its environment's versions and, on a runtime side,
    the export environments that produced the graph it ran."""
    rows = session.execute(
        select(Case.id, Case.environment_id, Environment.name.label("env"), Case.model, Case.route, Case.target,
               Step.name.label("step"), Step.error_type, Step.message)
        .join(Environment, Environment.id == Case.environment_id)
        .outerjoin(Step, (Step.case_id == Case.id) & (Step.signature == Case.signature))
        .where(Case.id.in_(sorted(case_ids))).order_by(Step.ordinal)
    ).all()
    exported: dict[int, set[int]] = defaultdict(set)
    for side in _export_sides(session, [Case.id.in_(sorted(case_ids))]):
        if side.export_id is not None:
            exported[side.id].add(side.export_id)
    refs = _refs(session, {e for ids in exported.values() for e in ids})
    versions = package_versions(session, {ex.environment_id for ex in rows}, KEY_PACKAGES)
    examples: dict[int, FailureExample] = {}
    for ex in rows:
        examples.setdefault(ex.id, FailureExample(
            environment_id=ex.environment_id, environment=ex.env, model=ex.model, route=ex.route,
            step=ex.step, error_type=ex.error_type, message=ex.message, target=ex.target,
            kind=kinds.get(ex.environment_id, "joint"), versions=versions.get(ex.environment_id, {}),
            exported_by=sorted((refs[e] for e in exported.get(ex.id, ())), key=lambda r: r.name),
        ))
    return examples


def _environment_failures(session: Session, query: FailureQuery, names: tuple[str, ...],
                          kinds: dict[int, EnvironmentKind]) -> list[FailureOut]:
    """Environments that never got a case (resolution conflicts, missing interpreters), grouped by signature."""
    env_query = select(Environment.id, Environment.name, Environment.signature, Environment.error,
                       Environment.requirements, Environment.resolved_at).where(
        Environment.signature.is_not(None)
    ).order_by(Environment.id)
    if query.python:
        env_query = env_query.where(Environment.python == query.python)
    if query.kind:
        env_query = env_query.where(Environment.kind == query.kind)
    grouped: dict[str, list[AnyRow]] = defaultdict(list)
    for env in session.execute(env_query):
        if _requests_route(env.requirements, query.route):
            grouped[env.signature].append(env)
    out = []
    for signature, envs in grouped.items():
        versions = {v for e in envs if (v := _requested_pin(e.requirements, names))}
        first_version, last_version = _span(versions)
        examples = {e.id: FailureExample(environment_id=e.id, environment=e.name, model=None, route=None,
                                         step="resolve", error_type=None, message=e.error,
                                         kind=kinds.get(e.id, "joint")) for e in envs}
        g = _SignatureGroup(signature, first=min(e.resolved_at for e in envs), last=max(e.resolved_at for e in envs))
        for e in envs:
            part = g.slices.setdefault((None, kinds.get(e.id, "joint")), _Slice())
            part.n += 1
            part.envs.add(e.id)
            part.example_id = part.example_id or e.id
            if v := _requested_pin(e.requirements, names):
                part.versions.add(v)
        out.append(FailureOut(
            signature=signature, scope="environment", count=len(envs), environments=len(envs), models=[],
            routes=[], first_version=first_version, last_version=last_version, first_seen=g.first,
            last_seen=g.last, example=examples[envs[0].id], kinds=sorted({k for _, k in g.slices}, key=KINDS.index),
            slices=_slices(g, examples),
        ))
    return out


def _status_counts(session: Session, column: Any, keys: list[Any]) -> dict[Any, dict[str, int]]:
    counts: dict[Any, dict[str, int]] = defaultdict(dict)
    if keys:
        for key, status, n in session.execute(
            select(column, Case.status, func.count()).where(column.in_(keys)).group_by(column, Case.status)
        ):
            counts[key][status] = n
    return counts


def _run_fields(run: Run, cases: dict[str, int]) -> dict[str, Any]:
    return dict(id=run.id, spec_name=run.spec_name, spec_hash=run.spec_hash, runner_version=run.runner_version,
                corpus_version=run.corpus_version, host=run.host, cutoff=run.cutoff, started_at=run.started_at,
                finished_at=run.finished_at, status=run.status, counts=run.counts, cases=cases)


def runs(session: Session, limit: int = 50, offset: int = 0) -> RunsOut:
    """Runs, newest first, with their recorded cases counted by status."""
    rows = session.scalars(select(Run).order_by(Run.started_at.desc(), Run.id).limit(limit).offset(offset)).all()
    counts = _status_counts(session, Case.run_id, [r.id for r in rows])
    return RunsOut(runs=[RunOut(**_run_fields(r, counts[r.id])) for r in rows],
                   total=session.scalar(select(func.count()).select_from(Run)) or 0, limit=limit, offset=offset)


def run_detail(session: Session, run_id: str) -> RunDetailOut | None:
    run = session.get(Run, run_id)
    if run is None:
        return None
    per_env: dict[int, dict[str, int]] = defaultdict(dict)
    for env_id, status, n in session.execute(
        select(Case.environment_id, Case.status, func.count()).where(Case.run_id == run_id)
        .group_by(Case.environment_id, Case.status)
    ):
        per_env[env_id][status] = n
    totals: dict[str, int] = defaultdict(int)
    for statuses in per_env.values():
        for status, n in statuses.items():
            totals[status] += n
    envs = session.execute(
        select(Environment.id, Environment.name, Environment.python, Environment.status, Environment.signature)
        .where(Environment.id.in_(list(per_env))).order_by(Environment.name)
    )
    return RunDetailOut(**_run_fields(run, dict(totals)), environments=[
        RunEnvironment(id=e.id, name=e.name, python=e.python, status=e.status, signature=e.signature,
                       cases=per_env[e.id]) for e in envs
    ])


def environment_detail(session: Session, env_id: int) -> EnvironmentOut | None:
    """An environment, its packages, and every case with its steps (lockfile links are the route's to add)."""
    env = session.get(Environment, env_id)
    if env is None:
        return None
    cases = session.scalars(
        select(Case).where(Case.environment_id == env_id).options(selectinload(Case.steps))
        .order_by(Case.model, Case.route, Case.exporter, Case.opset)
    ).all()
    return EnvironmentOut(
        id=env.id, hash=env.hash, name=env.name, python=env.python, python_full=env.python_full,
        requirements=env.requirements, excludes=env.excludes, index_url=env.index_url, cutoff=env.cutoff,
        status=env.status, error=env.error, signature=env.signature, lock_hash=env.lock_hash,
        resolved_at=env.resolved_at, packages=[PackageOut(name=p.name, version=p.version) for p in env.packages],
        cases=[CaseOut(
            id=c.id, run_id=c.run_id, model=c.model, route=c.route, exporter=c.exporter, opset=c.opset,
            opset_emitted=c.opset_emitted, status=c.status, signature=c.signature, max_abs_diff=c.max_abs_diff,
            recorded_at=c.recorded_at, target=c.target, artifact_id=c.artifact_id,
            steps=[StepOut(ordinal=s.ordinal, name=s.name, status=s.status, seconds=s.seconds,
                           peak_rss=s.peak_rss, error_type=s.error_type, message=s.message, signature=s.signature,
                           max_abs_diff=s.max_abs_diff, details=s.details) for s in c.steps],
        ) for c in cases],
        lockfiles={}, kind=_kind(env.kind),
    )


@dataclass(frozen=True)
class Provenance:
    """What a lockfile is stamped with: the newest run that recorded cases in the environment."""

    run_id: str | None
    recorded_at: dt.datetime | None
    models: tuple[str, ...]


def environment_provenance(session: Session, env_id: int) -> Provenance:
    newest = session.execute(
        select(Case.run_id, Case.recorded_at).where(Case.environment_id == env_id)
        .order_by(Case.recorded_at.desc()).limit(1)
    ).first()
    passed = session.scalars(
        select(Case.model).where(Case.environment_id == env_id, Case.status == "pass", current()).distinct()
        .order_by(Case.model)
    ).all()
    return Provenance(newest.run_id if newest else None, newest.recorded_at if newest else None, tuple(passed))


def facets(session: Session) -> dict[str, list[str]]:
    """The values the dashboard's controls offer: models, routes, exporters, targets, environment kinds, pythons,
    and axis packages."""
    # Axes are what specs vary (the requested packages) plus the key pins; a scan of every package row is not needed.
    requested = {pin[0] for reqs in session.scalars(select(Environment.requirements)) for t in reqs if (pin := _pin(t))}
    candidates = {"tensorflow" if n in ALIASES else n for n in requested | set(KEY_PACKAGES)}
    merged = candidates - set(unknown_packages(session, sorted(candidates)))
    first = [n for n in ("torch", "tensorflow", "onnx", "onnxruntime", "onnx2tf", "onnx-tf", "numpy", "protobuf")
             if n in merged]
    combos = session.execute(  # one pass, not three; `export` is the research side of split chains, not a route
        select(Case.model, Case.route, Case.exporter).where(Case.route != "export").distinct()).all()
    return {
        "models": sorted({c.model for c in combos}),
        "routes": sorted({c.route for c in combos}),
        # Only what the exporter filter accepts: a route without an ONNX export records exporter "none".
        "exporters": sorted({c.exporter for c in combos} & set(EXPORTERS)),
        "targets": sorted(t for t in session.scalars(select(Case.target).distinct()) if t),
        "kinds": sorted(set(_environment_kinds(session).values()), key=KINDS.index),
        "pythons": sorted(session.scalars(select(Environment.python).distinct()), key=version_key),
        "packages": first + sorted(merged - set(first)),
    }


def environment_row(session: Session, env_id: int) -> Environment | None:
    return session.get(Environment, env_id)


def package_versions(
    session: Session, environment_ids: Collection[int], names: Collection[str] | None = None,
) -> dict[int, dict[str, str]]:
    """Each environment's package versions (of `names` only, when given): the one read of Package rows by
    environment that the report, the docs and the checker share."""
    found: dict[int, dict[str, str]] = defaultdict(dict)
    ids = sorted(set(environment_ids))
    for start in range(0, len(ids), 500):  # stay under every backend's bound-parameter limit
        query = select(Package.environment_id, Package.name, Package.version).where(
            Package.environment_id.in_(ids[start:start + 500]))
        if names is not None:
            query = query.where(Package.name.in_(list(names)))
        for env_id, name, version in session.execute(query):
            found[env_id][name] = version
    return found


# --- split chains ------------------------------------------------------------------------------------------


# Core aliases made once, as store/outcomes.py makes its own: cheap to build from and safe across threads.
_RUNTIME, _EXPORT = Case.__table__.alias("runtime").c, Case.__table__.alias("export").c


@lru_cache(maxsize=4)
def _split_queries(exporter: bool) -> tuple[Select[*tuple[Any, ...]], Select[*tuple[Any, ...]]]:
    """split_chain_page's two statements, built once per filter and bound per request (`models`, `route`,
    `exporter`, `n_models`; the evidence also `runtimes`): the complete pairs, and the passing cases of a page."""
    runtime, export = _RUNTIME, _EXPORT
    conditions = [runtime.model.in_(bindparam("models", expanding=True)), runtime.route == bindparam("route"),
                  runtime.status == "pass", runtime.artifact_id.is_not(None), export.route == "export",
                  export.status == "pass", export.artifact_id == runtime.artifact_id, export.model == runtime.model,
                  current(runtime), current(export)]
    if exporter:
        conditions.append(export.exporter == bindparam("exporter"))
    pairs = (
        select(export.environment_id, runtime.environment_id)
        .where(*conditions)
        .group_by(export.environment_id, runtime.environment_id)
        .having(func.count(func.distinct(runtime.model)) == bindparam("n_models"))
    )
    evidence = (
        select(export.environment_id.label("export_id"), runtime.environment_id.label("runtime_id"), runtime.model,
               export.exporter, export.opset, runtime.opset_emitted, runtime.max_abs_diff, runtime.target,
               runtime.recorded_at, runtime.run_id, runtime.id)
        .where(*conditions, runtime.environment_id.in_(bindparam("runtimes", expanding=True)))
    )
    return pairs, evidence


def split_chain_page(
    session: Session, query: ChainQuery, facts: FactsCache | None = None,
    candidates: list[tuple[int, int]] | None = None,
) -> tuple[list[SplitChainOut], int]:
    """Export → runtime pairs in which every requested model passed: the export environment stored the graph
    (its `export` case passed) and the runtime environment converted and ran that graph within tolerance.

    Any export environment pairs with any runtime environment that ran the same graph: the file is the
    interface, so the two sides may even use different Pythons (a spec's export-python); `python` selects the
    production side's. Ranked by the research side, then production. `candidates`: the complete (export, runtime)
    pairs, when the caller has read them already (verdicts.complete_pairs).
    """
    complete_pairs, evidence_of = _split_queries(bool(query.exporter))
    params = {"models": list(query.models), "route": query.route, "exporter": query.exporter,
              "n_models": len(query.models)}
    pairs = candidates if candidates is not None else session.connection().execute(complete_pairs, params).all()
    if not pairs:
        return [], 0
    known, place = (facts or FactsCache()).get(session, {e for pair in pairs for e in pair})

    def fits(e: int, r: int) -> bool:
        if e not in known or r not in known:
            return False
        if query.python and known[r].python != query.python:  # the production side's; research may differ
            return False
        return query.requirements.met({**known[r].versions, **known[e].versions})

    ranked = sorted(((e, r) for e, r in pairs if fits(e, r)), key=lambda p: (place[p[0]], place[p[1]]),
                    reverse=True)
    page = ranked if query.limit is None else ranked[: query.limit]
    if not page:
        return [], len(ranked)
    ids = {e for pair in page for e in pair}
    envs = {row.id: row for row in session.connection().execute(
        select(Environment.id, Environment.name, Environment.python, Environment.python_full,
               Environment.lock_hash, Environment.cutoff, Environment.index_url).where(Environment.id.in_(ids)))}
    evidence: dict[tuple[int, int], list[AnyRow]] = defaultdict(list)
    wanted = set(page)
    for row in session.connection().execute(evidence_of, {**params, "runtimes": list({r for _, r in page})}):
        if (row.export_id, row.runtime_id) in wanted:
            evidence[row.export_id, row.runtime_id].append(row)

    def side(env_id: int) -> ChainSide:
        env = envs[env_id]
        return ChainSide(environment_id=env_id, name=env.name, python=env.python, python_full=env.python_full,
                         versions={n: v for n, v in known[env_id].versions.items() if n in KEY_PACKAGES},
                         lock_hash=env.lock_hash or "", cutoff=env.cutoff, index_url=env.index_url)

    chains = []
    for pair in page:
        rows = evidence[pair]
        newest, per_model = _newest_and_worst(rows)
        chains.append(SplitChainOut(
            research=side(pair[0]), production=side(pair[1]), run_id=newest.run_id, recorded_at=newest.recorded_at,
            cases_passed=len(rows),
            models=[ModelEvidence(model=r.model, exporter=r.exporter, opset=r.opset, opset_emitted=r.opset_emitted,
                                  max_abs_diff=r.max_abs_diff, target=r.target)
                    for r in sorted(per_model.values(), key=lambda r: query.models.index(r.model))],
        ))
    return chains, len(ranked)
