"""What the generated docs tabulate: coverage per route, what to pin per target, torch spans (issues 10, 11, 17).

Read-only. One pass over the current cases (`queries.current()`) is folded into chains once (`measurements`),
and every table is computed from that in memory, so `knowngood docs` stays a handful of queries on 100k cases.
A chain is a joint environment, or an export environment paired with a runtime environment through an artifact
the first stored and the second started from; an artifact exported by several torch releases (one graph, stored
once) serves a chain with each of them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import queries
from matrix.corpus import REGISTRY
from matrix.routes import FRAMEWORKS, ROUTES, SPLIT_ROUTES
from store.models import Case, Environment, Package, Step

# Converters and frameworks a pin row names; nobuco is not a KEY_PACKAGE but is the converter of its route.
PINNED = (*FRAMEWORKS, "nobuco", "onnxscript")  # onnxscript: what the dynamo exporter ran with
CONVERTERS = {"onnx2tf": ("onnx2tf",), "onnx-tf": ("onnx-tf",), "nobuco": ("nobuco",),
              "litert-torch": ("litert-torch", "ai-edge-torch"), "onnxruntime": ()}
TENSORFLOW = ("tensorflow", "tensorflow-cpu")
# What a coverage grid's columns are, per route: the production side's framework (none for litert-torch,
# which runs its .tflite in LiteRT; its grid is one column of torch minors).
COLUMNS: dict[str, tuple[str, ...]] = {"onnxruntime": ("onnxruntime",), "litert-torch": ()}
# uv's reason exists and nothing was installed: the answer "these versions cannot be installed together".
# no-interpreter (the host lacks a Python) and install-failed (a download or build broke) say nothing about
# the versions, so they leave a cell missing.
UNRESOLVABLE = ("conflict",)


def family(model: str) -> str:
    """The corpus family a model belongs to (its family file); unknown models are their own family."""
    return str(REGISTRY.get(model, model))


def minor(version: str | None) -> str | None:
    """`2.13.1` → `2.13`; None for a missing or unparsable version."""
    if not version:
        return None
    try:
        release = Version(version).release
    except InvalidVersion:
        return None
    return ".".join(str(p) for p in release[:2])


def _first(versions: dict[str, str], names: Iterable[str]) -> str | None:
    return next((versions[n] for n in names if n in versions), None)


@dataclass(frozen=True)
class EnvironmentRow:
    id: int
    kind: str
    status: str
    python: str
    requirements: list[str]
    options: dict[str, Any]
    versions: dict[str, str]  # the PINNED packages of its lock; empty if it never resolved

    def pin(self, names: Iterable[str]) -> str | None:
        """The locked version of the first of `names`, or the `==` version the request asked for."""
        names = tuple(names)
        return _first(self.versions, names) or queries._requested_pin(self.requirements, names)


@dataclass
class Tally:
    passed: int = 0
    total: int = 0
    exporters: set[str] = field(default_factory=set)  # the exporters that passed

    def add(self, status: str, n: int, exporter: str) -> None:
        self.total += n
        if status == "pass":
            self.passed += n
            self.exporters.add(exporter)


ChainKey = tuple[int | None, int, str, str]  # export environment (None: joint), environment, route, target


@dataclass
class Measurements:
    """Every current, non-skipped case result folded into chains, and the environments they ran in."""

    environments: dict[int, EnvironmentRow]
    # (export env | None, env, route, target) → model → tally of that model's cases in the chain
    chains: dict[ChainKey, dict[str, Tally]]
    # (artifact, model) → the export environments that stored it
    exported_by: dict[tuple[int, str], set[int]]
    # the case results themselves: environment, artifact, model, route, target, exporter, status, n
    outcomes: list[Any]
    # (export environment, model) whose export failed: no graph, so no route case follows it in split mode
    export_failed: set[tuple[int, str]] = field(default_factory=set)

    def versions(self, key: ChainKey) -> dict[str, str]:
        """The chain's pins: the production side's, with the research side's torch and onnx on top."""
        research, production = key[0], key[1]
        merged = dict(self.environments[production].versions)
        if research is not None:
            merged.update(self.environments[research].versions)
        return merged

    def torch(self, key: ChainKey) -> str | None:
        return self.environments[key[0] if key[0] is not None else key[1]].versions.get("torch")


def measurements(session: Session) -> Measurements:
    """Load the current case results once: three queries (cases, exports, environments) and one over packages."""
    # Skips are not results: the step could not apply (no dynamo exporter in that torch, a model unavailable).
    rows = session.execute(
        select(Case.environment_id, Case.artifact_id, Case.model, Case.route, Case.target, Case.exporter,
               Case.status, func.count().label("n"))
        .where(queries.current(), Case.status != "skip", Case.route != "export")
        .group_by(Case.environment_id, Case.artifact_id, Case.model, Case.route, Case.target, Case.exporter,
                  Case.status)
    ).all()
    exported_by: dict[tuple[int, str], set[int]] = defaultdict(set)
    for env_id, artifact_id, model in session.execute(
        select(Case.environment_id, Case.artifact_id, Case.model).distinct()
        .where(Case.route == "export", Case.artifact_id.is_not(None), Case.status == "pass", queries.current())
    ):
        if artifact_id is not None:  # the query's filter; told to the type checker
            exported_by[artifact_id, model].add(env_id)
    export_failed = {(env_id, model) for env_id, model, _ in session.execute(queries.failed_exports())}
    versions: dict[int, dict[str, str]] = defaultdict(dict)
    for env_id, name, version in session.connection().execute(
        select(Package.environment_id, Package.name, Package.version).where(Package.name.in_(PINNED))
    ):  # one index range scan (ix_package_name_environment_id_version), no ids bound
        versions[env_id][name] = version
    environments = {
        e.id: EnvironmentRow(id=e.id, kind=e.kind, status=e.status, python=e.python,
                             requirements=list(e.requirements or []), options=dict(e.options or {}),
                             versions=versions.get(e.id, {}))
        for e in session.execute(select(Environment.id, Environment.kind, Environment.status, Environment.python,
                                        Environment.requirements, Environment.options))
    }
    chains: dict[ChainKey, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
    for row in rows:
        research: Iterable[int | None] = (
            [None] if row.artifact_id is None else exported_by.get((row.artifact_id, row.model), ()))
        for export_id in research:
            chains[export_id, row.environment_id, row.route, row.target][row.model].add(
                row.status, row.n, row.exporter)
    return Measurements(environments=environments, chains=dict(chains), exported_by=dict(exported_by),
                        outcomes=list(rows), export_failed=export_failed)


# --- coverage per route (issue 17) -------------------------------------------------------------------------


@dataclass
class CoverageCell:
    passed: int = 0
    total: int = 0
    unresolvable: bool = False

    @property
    def status(self) -> str:
        """pass | fail | mixed (measured), unresolvable, or missing; a measurement outranks a conflict."""
        if self.total:
            return "pass" if self.passed == self.total else "fail" if self.passed == 0 else "mixed"
        return "unresolvable" if self.unresolvable else "missing"


@dataclass(frozen=True)
class Coverage:
    """A route's torch minor × production-side minor grid; cells absent from `cells` are missing.

    The axes are the store's, not the route's: every torch minor (and TensorFlow or onnxruntime minor) any
    environment pins or asks for, so a minor the route never reached is a row of holes, not left out.
    """

    route: str
    column: str  # the column axis: "tensorflow", "onnxruntime", or "" (one column)
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], CoverageCell]

    def cell(self, row: str, column: str) -> CoverageCell:
        return self.cells.get((row, column)) or CoverageCell()

    @property
    def answered(self) -> int:
        """Cells with an answer: measured, or known not to resolve. "Resolved but never run" is no answer."""
        return sum(1 for c in self.cells.values() if c.status != "missing")

    @property
    def share(self) -> float:
        size = len(self.rows) * len(self.columns)
        return self.answered / size if size else 0.0


def coverage(m: Measurements, route: str) -> Coverage:
    """Which torch minor × TensorFlow (onnxruntime) minor cells of `route` hold an answer.

    Rows are every torch minor of the store and columns every minor of the route's column axis (one column, "",
    on litert-torch), whichever routes those environments were for: a share is of the whole grid, and a minor
    this route never reached shows as missing. A route no environment asked for and no case ran has no grid.
    Joint environments answer the cell of their own pins; a split chain answers (its export side's torch, its
    runtime side's column). A conflicting joint environment marks its cell unresolvable, a conflicting export
    environment its torch row (on routes with runtime environments), a conflicting runtime environment its
    column, where nothing was measured. Resolved but never run is no answer.
    """
    names = COLUMNS.get(route, TENSORFLOW)
    envs = m.environments

    def column(env: EnvironmentRow) -> str | None:
        return minor(env.pin(names)) if names else ""

    # The axes come from every environment, not only this route's: counting a route's own minors made litert-torch
    # read "3 of 3" while most torch minors were never tried on it. pin() falls back to the request, so an
    # environment that never resolved still names its minors. Every cell's minors are among these.
    rows: set[str] = {x for env in envs.values() if (x := minor(env.pin(("torch",)))) is not None}
    cols: set[str] = {y for env in envs.values() if (y := column(env)) is not None}

    cells: dict[tuple[str, str], CoverageCell] = defaultdict(CoverageCell)
    for row in m.outcomes:
        if row.route != route:
            continue
        y = column(envs[row.environment_id])
        # A set: an artifact stored by two export environments of one torch minor (two Pythons, two patch
        # releases) answers that minor's cell once, not twice.
        xs = ({minor(envs[row.environment_id].versions.get("torch"))} if row.artifact_id is None else
              {minor(envs[e].versions.get("torch")) for e in m.exported_by.get((row.artifact_id, row.model), ())})
        for x in xs:
            if x is None or y is None:
                continue
            cells[x, y].total += row.n
            cells[x, y].passed += row.n if row.status == "pass" else 0
    planned = any(queries._requests_route(e.requirements, route) for e in envs.values())
    if not cells and not planned:
        return Coverage(route=route, column=names[0] if names else "", rows=[], columns=[], cells={})
    # Export environments serve every route a runtime environment was planned for: only there does one that
    # cannot resolve leave its torch row without a chain.
    split = any(e.kind == "runtime" and queries._requests_route(e.requirements, route) for e in envs.values())
    rows_unresolvable: set[str] = set()
    cols_unresolvable: set[str] = set()
    for env in envs.values():
        if env.status not in UNRESOLVABLE:
            continue
        x = minor(env.pin(("torch",)))
        if env.kind == "export":
            if x is not None and split:
                rows_unresolvable.add(x)
            continue
        if not queries._requests_route(env.requirements, route):
            continue
        y = column(env)
        if y is None:
            continue
        if env.kind == "runtime":
            cols_unresolvable.add(y)
        elif x is not None:
            cells[x, y].unresolvable = True
    for x in rows:
        for y in cols:
            if x in rows_unresolvable or y in cols_unresolvable:
                cells[x, y].unresolvable = True
    return Coverage(route=route, column=names[0] if names else "", rows=sorted(rows, key=queries.version_key),
                    columns=sorted(cols, key=queries.version_key),
                    cells={k: c for k, c in cells.items() if c.status != "missing"})


# --- what to pin, per target (issues 11 and 17) ------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """A section of "what to pin": where the model is deployed, and the (route, target) pairs that reach it."""

    title: str
    routes: tuple[tuple[str, str], ...]


DEPLOYMENTS = (
    # TF Serving calls a SavedModel's serving_default; every TF route that writes one answers it.
    Deployment("TF Serving", (("onnx2tf", "saved_model"), ("onnx-tf", "saved_model"), ("nobuco", "saved_model"))),
    Deployment("TFLite", (("onnx2tf", "tflite"), ("onnx-tf", "tflite"), ("nobuco", "tflite"),
                          ("litert-torch", "tflite"))),
    Deployment("ONNX Runtime", (("onnxruntime", ""),)),
)


@dataclass(frozen=True)
class Pin:
    """The newest chain in which a model passed for one deployment, with what backs it."""

    family: str
    model: str
    route: str
    target: str
    split: bool
    python: str  # "3.11", or "3.11 → 3.12" when the research side runs another Python
    versions: dict[str, str]
    converter: str  # "onnx2tf 1.28.8", "" on onnxruntime
    backend: str  # the onnx2tf-backend option, if the environment set one
    exporters: tuple[str, ...]  # the exporters it passed with there
    cases: int  # passing cases in this chain
    chains: int  # chains in which it passed for this deployment, at any versions
    environments: int  # distinct environments in those chains


@dataclass(frozen=True)
class Miss:
    """No chain passes: the failure that got furthest (then the newest chain where it did), if any."""

    family: str
    model: str
    route: str
    target: str
    step: str | None
    signature: str | None
    versions: dict[str, str]
    split: bool


def _rank(m: Measurements, key: ChainKey) -> tuple[Any, ...]:
    versions = m.versions(key)
    converter = _first(versions, CONVERTERS.get(key[2], ()))
    return (*queries.rank_key(versions), queries._version(converter), queries._version(m.environments[key[1]].python),
            key[1], key[0] or 0)


def _by_family(models: Iterable[str]) -> list[str]:
    return sorted(set(models), key=lambda model: (family(model), model))


def pins(session: Session, m: Measurements, deployment: Deployment) -> list[Pin | Miss]:
    """Per model measured for `deployment` (grouped by family): its newest passing chain (a Pin), else its closest
    failure (a Miss).

    Per model, not per family as a whole: a family's variants are different questions (batchnorm in eval and in
    train mode, control flow traced, scripted or through torch.cond), and one variant that never passes would
    hide the chains that serve the others. A model passes in a chain when one of its exporters passed there.
    """
    wanted = set(deployment.routes)
    passing: dict[str, list[ChainKey]] = defaultdict(list)
    measured: set[str] = set()
    for key, models in m.chains.items():
        if (key[2], key[3]) not in wanted:
            continue
        measured.update(models)
        for model, tally in models.items():
            if tally.passed:
                passing[model].append(key)
    misses = _closest_failures(session, m, deployment, sorted(measured - set(passing)))
    out: list[Pin | Miss] = []
    envs = m.environments
    for model in _by_family(measured):
        if model not in passing:
            out.append(misses[model])
            continue
        key = max(passing[model], key=lambda k: _rank(m, k))
        research, production, route, target = key
        versions = m.versions(key)
        python = envs[production].python
        if research is not None and envs[research].python != python:
            python = f"{envs[research].python} → {python}"
        converter_name = next((n for n in CONVERTERS.get(route, ()) if n in versions), None)
        tally = m.chains[key][model]
        out.append(Pin(
            family=family(model), model=model, route=route, target=target, split=research is not None,
            python=python, versions=versions,
            converter=f"{converter_name} {versions[converter_name]}" if converter_name else "",
            backend=str(envs[production].options.get("onnx2tf-backend", "")),
            exporters=tuple(sorted(tally.exporters)), cases=tally.passed, chains=len(passing[model]),
            environments=len({e for k in passing[model] for e in k[:2] if e is not None}),
        ))
    return out


def _closest_failures(session: Session, m: Measurements, deployment: Deployment,
                      models: list[str]) -> dict[str, Miss]:
    """Per model, the failing case whose first failed step came latest in its route (then the newest chain)."""
    if not models:
        return {}
    routes = {route for route, _ in deployment.routes}
    rows = session.execute(
        select(Case.environment_id, Case.artifact_id, Case.model, Case.route, Case.target, Case.signature,
               Step.name.label("step"))
        .outerjoin(Step, (Step.case_id == Case.id) & (Step.signature == Case.signature))
        .where(queries.current(), Case.route.in_(routes), Case.model.in_(models),
               Case.status.not_in(("pass", "skip")))
    ).all()
    best: dict[str, tuple[tuple[Any, ...], Miss]] = {}
    for row in rows:
        if (row.route, row.target) not in deployment.routes:
            continue
        split = row.artifact_id is not None
        steps = SPLIT_ROUTES.get(row.route, ()) if split else ROUTES.get(row.route, ())
        reached = steps.index(row.step) if row.step in steps else -1
        research = sorted(m.exported_by.get((row.artifact_id, row.model), ())) if split else [None]
        for export_id in research:
            key: ChainKey = (export_id, row.environment_id, row.route, row.target)
            rank = (reached, *_rank(m, key))
            if row.model not in best or rank > best[row.model][0]:
                best[row.model] = (rank, Miss(
                    family=family(row.model), model=row.model, route=row.route, target=row.target, step=row.step,
                    signature=row.signature, versions=m.versions(key), split=split))
    return {model: best[model][1] if model in best else Miss(
        family=family(model), model=model, route="", target="", step=None, signature=None, versions={}, split=False)
        for model in models}


# --- first and last passing torch minor (issue 10) ---------------------------------------------------------


@dataclass(frozen=True)
class TorchSpan:
    family: str
    model: str
    route: str
    target: str
    first: str | None  # the oldest torch minor with a chain where the model passed
    last: str | None
    measured: tuple[str, ...]  # every torch minor with a result
    gaps: tuple[str, ...]  # minors between first and last measured without a pass


def torch_spans(m: Measurements) -> list[TorchSpan]:
    """Per model (by family), route and target: the torch minors where it passed, and the measured ones between
    that did not. A split chain counts for the torch that exported the graph; a split export that failed counts
    as measured without a pass for every ONNX route of that model (a joint case records its own export step)."""
    measured: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    passed: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for key, models in m.chains.items():
        x = minor(m.torch(key))
        if x is None:
            continue
        for model, tally in models.items():
            ident = (model, key[2], key[3])
            measured[ident].add(x)
            if tally.passed:
                passed[ident].add(x)
    for env_id, model in m.export_failed:
        x = minor(m.environments[env_id].versions.get("torch")) if env_id in m.environments else None
        if x is None:
            continue
        for ident in [i for i in measured if i[0] == model and "export" in ROUTES.get(i[1], ())]:
            measured[ident].add(x)
    route_order = {r: i for i, r in enumerate(ROUTES)}
    out = []
    for ident in sorted(measured, key=lambda i: (family(i[0]), i[0], route_order.get(i[1], 99), i[1], i[2])):
        ok = sorted(passed[ident], key=queries.version_key)
        seen = sorted(measured[ident], key=queries.version_key)
        gaps: tuple[str, ...] = ()
        if ok:
            low, high = queries.version_key(ok[0]), queries.version_key(ok[-1])
            gaps = tuple(x for x in seen if low < queries.version_key(x) < high and x not in passed[ident])
        out.append(TorchSpan(family=family(ident[0]), model=ident[0], route=ident[1], target=ident[2],
                             first=ok[0] if ok else None, last=ok[-1] if ok else None, measured=tuple(seen),
                             gaps=gaps))
    return out


# --- what the default exporter did (issue 10) ---------------------------------------------------------------


@dataclass
class DefaultExport:
    """Per torch minor and onnxscript release: which exporter a plain torch.onnx.export(model, args, f) ran, and
    what it emitted. The onnxscript beside torch decides what its dynamo exporter can do."""

    torch: str
    onnxscript: str | None
    ran: Counter[str] = field(default_factory=Counter)
    opsets: set[int] = field(default_factory=set)
    ir_versions: set[int] = field(default_factory=set)
    failed: Counter[str] = field(default_factory=Counter)  # signature → export steps that failed


def default_exports(session: Session, m: Measurements) -> list[DefaultExport]:
    """The export steps of current cases with exporter `default`, as the worker recorded them (step details)."""
    rows = session.execute(
        select(Case.environment_id, Step.status, Step.signature, Step.details)
        .join(Step, Step.case_id == Case.id)
        .where(queries.current(), Case.exporter == "default", Step.name == "export")
    )
    per: dict[tuple[str, str | None], DefaultExport] = {}
    for env_id, status, signature, details in rows:
        versions = m.environments[env_id].versions if env_id in m.environments else {}
        x = minor(versions.get("torch"))
        if x is None:
            continue
        out = per.setdefault((x, versions.get("onnxscript")),
                             DefaultExport(torch=x, onnxscript=versions.get("onnxscript")))
        if status == "ok":
            out.ran[str(details.get("exporter_ran", "?"))] += 1
            if isinstance(details.get("opset_emitted"), int):
                out.opsets.add(details["opset_emitted"])
            if isinstance(details.get("ir_version"), int):
                out.ir_versions.add(details["ir_version"])
        elif status != "skip":
            out.failed[signature or status] += 1
    return [per[k] for k in sorted(per, key=lambda k: (queries.version_key(k[0]), queries.version_key(k[1])))]
