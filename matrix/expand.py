"""Spec → environments × cases: readable ids, identity hashes, include/exclude patterns."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from matrix import versions
from matrix.routes import (
    BOTH_SIDES,
    CONVERTER_OPTIONS,
    EXPORT_SIDE,
    OPSET_HIGHEST,
    OPSET_NONE,
    ROUTE_PACKAGES,
    ROUTES,
    SPLIT_ROUTES,
    TARGETS,
)
from matrix.spec import LatestMinors, Spec, SpecError, check_pattern

CORPUS_DIR = Path(__file__).parent / "corpus"

# Short names keep environment ids readable, as cibuildwheel's cp311-manylinux_x86_64 does.
SHORT = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "ort",
    "tensorflow": "tf",
    "tensorflow-cpu": "tfcpu",
    "onnx2tf": "onnx2tf",
    "onnx-tf": "onnxtf",
    "litert-torch": "litert",
    "ai-edge-torch": "aiedge",
}


class PlanError(SpecError):
    """A spec that loads but expands to a plan we refuse: too large, empty, or with a pattern matching nothing."""


@dataclass(frozen=True, kw_only=True)
class Environment:
    """One concrete combination to resolve and install."""

    python: str
    requirements: tuple[str, ...]
    extras: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    index: tuple[tuple[str, str], ...] = ()
    cutoff: str | None = None
    # uv --override requirements (spec `overrides`): the declared pins they relax are recorded with the lock.
    overrides: tuple[str, ...] = ()
    # Converter options that are a spec axis (CONVERTER_OPTIONS): (axis, value), passed to each case's worker.
    options: tuple[tuple[str, str], ...] = ()
    kind: str = "joint"  # joint | export | runtime (ARCHITECTURE.md: environment kinds)

    @property
    def id(self) -> str:
        parts = [f"py{self.python}"]
        for req in self.requirements:
            name, spec = split_requirement(req)
            short = SHORT.get(name, name)
            if spec.startswith("==") and "," not in spec:
                parts.append(short + spec[2:])
            elif spec:
                parts.append(f"{short}[{spec}]")
            else:
                parts.append(short)
        parts += [value for _, value in self.options]
        if self.overrides:
            parts.append("override." + ".".join(split_requirement(r)[0] for r in self.overrides))
        if self.kind != "joint":
            parts.append(self.kind)  # a suffix, so patterns such as 'py3.11-torch2.4*' still select it
        return "-".join(parts)

    @property
    def hash(self) -> str:
        payload: dict[str, object] = {
            "python": self.python,
            "requirements": sorted(self.requirements + self.extras),
            "excludes": sorted(self.excludes),
            "index": list(self.index),
            "cutoff": self.cutoff,
        }
        # Only when present, so that the hashes of every environment recorded before issue 11 stay the same.
        if self.overrides:
            payload["overrides"] = sorted(self.overrides)
        if self.options:
            payload["options"] = [list(o) for o in self.options]
        if self.kind != "joint":  # joint environments were hashed before kinds existed: their hashes stay
            payload["kind"] = self.kind
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def all_requirements(self) -> tuple[str, ...]:
        return self.requirements + self.extras

    @property
    def index_url(self) -> str:
        return versions.index_url(dict(self.index))  # the one place that knows the default index


@dataclass(frozen=True, kw_only=True)
class Case:
    """One model through one route, with one exporter and opset."""

    model: str
    route: str
    exporter: str
    opset: int
    model_hash: str = field(default="", compare=False)
    artifact: str = ""  # split chains, runtime side: the key of the artifact the case starts from
    target: str = ""  # TARGETS: saved_model | tflite | keras on TF routes, "" elsewhere

    @property
    def key(self) -> str:
        opset = "highest" if self.opset == OPSET_HIGHEST else str(self.opset)
        key = f"{self.model}.{self.route}.{self.exporter}.op{opset}"
        key = f"{key}.{self.target}" if self.target else key
        return f"{key}.{self.artifact[:12]}" if self.artifact else key


@dataclass(frozen=True)
class Plan:
    spec: Spec
    corpus_path: Path
    corpus_version: str
    items: tuple[tuple[Environment, tuple[Case, ...]], ...]

    @property
    def environments(self) -> list[Environment]:
        return [env for env, _ in self.items]

    @property
    def case_count(self) -> int:
        return sum(len(cases) for _, cases in self.items)


def _requirement(axis: str, value: str) -> str:
    if value[:1].isalpha():
        return value  # a whole requirement; the axis name is only a label
    return axis if value == "*" else f"{axis}{value}"


def _route_applies(route: str, env: Environment) -> bool:
    """A converter route runs only where its converter is part of the environment."""
    needed = ROUTE_PACKAGES.get(route, ())
    names = {split_requirement(r)[0] for r in env.requirements}
    return not needed or any(n in names for n in needed) or route == "onnxruntime"


def split_requirement(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$", req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return canonicalize_name(m.group(1)), m.group(2).strip()


# Companions released in lockstep with a framework: release 2.N goes with the framework's 2.N. Their own
# requirement on `tensorflow` carries that coupling, but a spec that excludes `tensorflow` (to keep a single
# copy, tensorflow-cpu) drops it, and the resolver then picks the newest tf-keras for every TF: a mismatch no
# user's pip would produce. So a bare companion name is pinned to the environment's framework minor.
TRACKS_MINOR_OF = {"tf-keras": ("tensorflow", "tensorflow-cpu")}
# tf-keras's first release is 2.14.1: TensorFlow 2.12 and 2.13 carry Keras 2 themselves, and a companion pinned to
# their minor would make every such environment unresolvable (ResolutionConflict(tf-keras)), which it is not.
FIRST_TRACKED = {"tf-keras": (2, 14)}


def pinned_minors(requirements: Iterable[str]) -> dict[str, tuple[int, int]]:
    """name → (major, minor) of each requirement pinned to one release or one minor: `torch==2.8.0` and
    `torch==2.8.*` → {"torch": (2, 8)}."""
    out = {}
    for req in requirements:
        name, spec = split_requirement(req)
        m = re.fullmatch(r"==\s*(\d+)\.(\d+)(\.[0-9A-Za-z.+-]*|\.\*)?", spec)
        if m:
            out[name] = (int(m.group(1)), int(m.group(2)))
    return out


def track_minor(requirements: tuple[str, ...], extras: tuple[str, ...]) -> tuple[str, ...]:
    """`tf-keras` beside `tensorflow-cpu==2.19.1` → `tf-keras>=2.19,<2.20`; a companion with a specifier is kept."""
    pins = pinned_minors(requirements)
    out = []
    for extra in extras:
        name, spec = split_requirement(extra)
        frameworks = [pins[f] for f in TRACKS_MINOR_OF.get(name, ()) if f in pins]
        if not spec and frameworks:
            major, minor = frameworks[0]
            if (major, minor) < FIRST_TRACKED.get(name, (0, 0)):
                continue  # no release for that minor: what it provides ships inside the framework there
            extra = f"{name}>={major}.{minor},<{major}.{minor + 1}"
        out.append(extra)
    return tuple(out)


# What an exporter needs comes with it (issue 10). torch's dynamo exporter imports onnxscript, which torch
# does not declare, so an environment that will run it (a spec asking for `dynamo`, or for `default` where
# torch may be >= 2.9, whose default is dynamo) gets onnxscript as a companion: the onnxscript of its torch's
# time, i.e. the newest release before the next torch minor came out (dates from PyPI's upload times; before
# onnxscript 0.1.0 only dated dev builds existed, which is what `pip install onnxscript` gave then). The
# newest onnxscript is not always usable with an older torch (torch 2.8.0: NoOnnxFunction(aten::convolution)).
# A spec that lists companions for torch decides alone: `[companions] torch = []` keeps onnxscript out.
ONNXSCRIPT_OF_TORCH = {
    (2, 1): "onnxscript<=0.1.0.dev20240130",  # torch 2.2.0: 2024-01-30
    (2, 2): "onnxscript<=0.1.0.dev20240424",  # torch 2.3.0: 2024-04-24
    (2, 3): "onnxscript<=0.1.0.dev20240724",  # torch 2.4.0: 2024-07-24
    (2, 4): "onnxscript<=0.1.0.dev20241017",  # torch 2.5.0: 2024-10-17
    (2, 5): "onnxscript<0.2",  # torch 2.6.0: 2025-01-29; 0.1.0 of 2025-01-27
    (2, 6): "onnxscript<0.2.5",  # torch 2.7.0: 2025-04-23, the day of 0.2.5
    (2, 7): "onnxscript<0.4",  # torch 2.8.0: 2025-08-06; 0.3.2
    (2, 8): "onnxscript<0.5.4",  # torch 2.9.0: 2025-10-15; 0.5.3
    (2, 9): "onnxscript<0.6",  # torch 2.10.0: 2026-01-21; 0.5.7
    (2, 10): "onnxscript<0.7",  # torch 2.11.0: 2026-03-23; 0.6.2
    (2, 11): "onnxscript<0.7.1",  # torch 2.12.0: 2026-05-13; 0.7.0
    (2, 12): "onnxscript<0.7.2",  # torch 2.13.0: 2026-07-08; 0.7.1
    (2, 13): "onnxscript<0.7.2",  # torch 2.14.0: 2026-09-02; 0.7.1
    (2, 14): "onnxscript<0.7.3",  # torch 2.15.0: 2026-10-28; 0.7.2
}
# Releases built against NumPy 1.x, whose metadata does not cap NumPy: beside NumPy 2, torch before 2.3 raises
# "RuntimeError: Numpy is not available" at every tensor↔array conversion, and onnxruntime before 1.19 fails to
# import or segfaults. An environment holding one of them and nothing else that caps NumPy (an export
# environment, or ONNX Runtime alone) would measure that and not the exporter or the runtime, so it gets
# `numpy<2`, as every practitioner pins it; only the side of a split chain that holds the package.
NUMPY_2_FROM = {"torch": (2, 3), "onnxruntime": (1, 19)}  # the first minor built against NumPy 2


def numpy_companions(requirements: tuple[str, ...]) -> tuple[str, ...]:
    """`("numpy<2",)` where an exactly pinned package predates its NumPy 2 build (NUMPY_2_FROM); `()` otherwise."""
    minors = pinned_minors(requirements)
    return ("numpy<2",) if any(n in minors and minors[n] < first for n, first in NUMPY_2_FROM.items()) else ()


FIRST_DYNAMO = (2, 1)  # torch.onnx.dynamo_export
DEFAULT_IS_DYNAMO = (2, 9)  # torch.onnx.export(dynamo=True) by default


def exporter_companions(requirements: tuple[str, ...], exporters: Iterable[str],
                        companions: Mapping[str, list[str]]) -> tuple[str, ...]:
    """`("onnxscript<0.5.4",)` for torch==2.8.0 with the dynamo exporter; `()` where no exporter needs it."""
    exporters = set(exporters)
    if "torch" in companions or not exporters & {"dynamo", "default"}:
        return ()
    if not any(split_requirement(r)[0] == "torch" for r in requirements):
        return ()
    minor = pinned_minors(requirements).get("torch")
    if minor is None:
        return ("onnxscript",)  # an unpinned torch resolves to the newest, which takes the newest onnxscript
    runs_dynamo = ("dynamo" in exporters and minor >= FIRST_DYNAMO) or minor >= DEFAULT_IS_DYNAMO
    if not runs_dynamo:
        return ()
    return (ONNXSCRIPT_OF_TORCH.get(minor, "onnxscript"),)


def expand_braces(pattern: str) -> list[str]:
    """`py3.{10,11}-*` → [`py3.10-*`, `py3.11-*`]."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for option in m.group(1).split(",") for x in expand_braces(head + option + tail)]


def matches(patterns: Iterable[str], env_id: str) -> bool:
    return any(fnmatch.fnmatchcase(env_id, p) for pat in patterns for p in expand_braces(pat))


def _unmatched(patterns: Iterable[str], ids: list[str], where: str) -> None:
    """Refuse a pattern that matches none of `ids`: a typo would otherwise change the plan silently."""
    for pattern in patterns:
        if not any(matches([pattern], i) for i in ids):
            python = ids[0].split("-")[0] if ids else "py3.11"
            raise PlanError(f"{where}: pattern {pattern!r} matches none of the {len(ids)} environments"
                            f"{f' (e.g. {ids[0]})' if ids else ''}; expected a pattern such as '{python}-*'")


def select(plan: Plan, only: list[str] | None) -> list[tuple[Environment, tuple[Case, ...]]]:
    """The plan's items whose environment id matches one of `only` (`--only`), each pattern matching some."""
    if not only:
        return list(plan.items)
    for pattern in only:
        try:
            check_pattern(pattern)
        except ValueError as exc:
            raise PlanError(f"--only: {exc}") from None
    _unmatched(only, [env.id for env in plan.environments], "--only")
    return [(e, c) for e, c in plan.items if matches(only, e.id)]


def corpus_hashes(corpus_path: Path, models: Iterable[str]) -> tuple[str, dict[str, str]]:
    """The corpus version (hash of all its source) and each model's hash (its family file)."""
    files = sorted(corpus_path.glob("*.py")) if corpus_path.is_dir() else [corpus_path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    version = digest.hexdigest()[:16]
    per_model: dict[str, str] = {}
    if corpus_path.is_dir() and corpus_path == CORPUS_DIR:
        from matrix import corpus

        for name in models:
            per_model[name] = hashlib.sha256(Path(corpus.model_file(name)).read_bytes()).hexdigest()[:16]
    else:
        for name in models:
            per_model[name] = version
    return version, per_model


def _opset(exporter: str, opset: int | str) -> int:
    if exporter == "default":
        return OPSET_NONE
    return OPSET_HIGHEST if opset == "highest" else int(opset)


def plan(
    spec: Spec,
    index: Mapping[str, str] | None = None,
    selectors: Mapping[str, list[str]] | None = None,
    *,
    max_environments: int | None = None,
) -> Plan:
    """Expand a spec; `selectors` maps axis → concrete specifiers where `latest-minors` was resolved.

    Refuses (PlanError) more than `max_environments` (or the spec's lower limit), include/exclude patterns that
    match nothing, and a plan left without environments or cases."""
    corpus_path = Path(spec.corpus).resolve() if spec.corpus else CORPUS_DIR
    version, model_hashes = corpus_hashes(corpus_path, spec.models)
    cases = tuple(dict.fromkeys(
        # A route that never exports (torch → Keras directly) has one case per model, not one per exporter/opset;
        # the default exporter passes no opset, so it has one per model and route.
        Case(model=m, route=r, exporter=e, opset=_opset(e, o), model_hash=model_hashes[m], target=t)
        if "export" in ROUTES[r] else Case(model=m, route=r, exporter="none", opset=OPSET_NONE,
                                           model_hash=model_hashes[m], target=t)
        for m in spec.models
        for r in spec.routes
        for e in spec.exporters
        for o in spec.opsets
        for t in targets_of(spec, r)
    ))
    axes: dict[str, list[str]] = {}
    for name, values in spec.axes.items():
        resolved: list[str] = []
        for value in values:
            if isinstance(value, LatestMinors):
                if not selectors or name not in selectors:
                    raise ValueError(f"axis {name!r}: latest-minors must be resolved against the index first")
                resolved.extend(selectors[name])
            else:
                resolved.append(value)
        axes[name] = list(dict.fromkeys(resolved))
    index_items = tuple(sorted((index or {}).items()))
    option_axes = [n for n in axes if n in CONVERTER_OPTIONS]
    packages = [n for n in axes if n != "python" and n not in option_axes]
    _check_size(spec, axes, min(spec.limits.max_environments, max_environments or spec.limits.max_environments))
    items, ids = [], []
    seen: set[Environment] = set()
    for python in axes["python"]:
        for combo, chosen in itertools.product(itertools.product(*(axes[p] for p in packages)),
                                               itertools.product(*(axes[o] for o in option_axes))):
            reqs = tuple(_requirement(p, s) for p, s in zip(packages, combo, strict=True))
            env = Environment(
                python=python,
                requirements=reqs,
                extras=_extras(spec, reqs),
                excludes=tuple(spec.excludes),
                index=index_items,
                cutoff=spec.exclude_newer,
                # An option applies only where its converter is part of the environment.
                options=tuple((axis, value) for axis, value in zip(option_axes, chosen, strict=True)
                              if CONVERTER_OPTIONS[axis][0] in {split_requirement(r)[0] for r in reqs}),
            )
            for candidate in (env, *_relaxed(spec, env)):
                if candidate in seen:  # an option axis over an environment without its converter
                    continue
                seen.add(candidate)
                ids.append(candidate.id)
                if spec.include and not matches(spec.include, candidate.id):
                    continue
                if spec.exclude and matches(spec.exclude, candidate.id):
                    continue
                items.append((candidate, tuple(c for c in cases if _route_applies(c.route, candidate))))
    _unmatched(spec.include, ids, f"{spec.locate('include')}: include")
    _unmatched(spec.exclude, ids, f"{spec.locate('exclude')}: exclude")
    if not items:
        field = "exclude" if spec.exclude else "include"
        raise PlanError(f"{spec.locate(field)}: {field}: no environment is left after include and exclude "
                        f"(they drop all {len(ids)} environment{'s' * (len(ids) != 1)}); expected at least one")
    if not any(c for _, c in items):
        raise PlanError(f"{spec.locate('routes')}: routes: no case applies to any environment: expected the "
                        f"converter of each route ({', '.join(spec.routes)}) on an axis")
    return Plan(spec=spec, corpus_path=corpus_path, corpus_version=version, items=tuple(items))


def _extras(spec: Spec, reqs: tuple[str, ...]) -> tuple[str, ...]:
    """What an environment with `reqs` gets beside them: companions, the exporter's needs, numpy<2 where due."""
    return (track_minor(reqs, tuple(x for r in reqs for x in spec.companions.get(split_requirement(r)[0], ())))
            + exporter_companions(reqs, spec.exporters, spec.companions) + numpy_companions(reqs))


def _check_size(spec: Spec, axes: Mapping[str, list[str]], limit: int) -> None:
    """Count the product from the axis lengths, so a plan too large to hold is refused before it is built."""
    total = math.prod(len(values) for values in axes.values())
    if total > limit:
        factors = " × ".join(f"{name} {len(values)}" for name, values in axes.items())
        raise PlanError(f"{spec.locate('axes')}: axes: the plan has {total:,} environments ({factors}), more "
                        f"than the limit of {limit:,}; expected fewer axis values, or a higher "
                        "limits.max-environments (and KNOWNGOOD_MAX_ENVIRONMENTS)")


def targets_of(spec: Spec, route: str) -> tuple[str, ...]:
    """The targets a route's cases deploy: the spec's `targets` that apply to it (all when omitted), or ("",)."""
    applicable = TARGETS.get(route)
    if not applicable:
        return ("",)
    return tuple(t for t in applicable if spec.targets is None or t in spec.targets)


def _relaxed(spec: Spec, env: Environment) -> tuple[Environment, ...]:
    """The twin of `env` resolved with the spec's overrides for the packages it has (uv --override).

    Practitioners relax a converter's exact pins this way when they make an environment unresolvable; the
    twin is measured only where the plain environment does not resolve (runner.environments.resolve).
    """
    names = {split_requirement(r)[0] for r in env.requirements}
    relax = tuple(o for name in sorted(names & set(spec.overrides)) for o in spec.overrides[name])
    if not relax:
        return ()
    return (replace(env, overrides=relax),)


def converter_options(env: Environment, route: str) -> dict[str, str]:
    """The converter keywords an environment's option axes set for a route: {"tflite_backend": "tf_converter"}."""
    out = {}
    for axis, value in env.options:
        package, keyword, _ = CONVERTER_OPTIONS[axis]
        if route == package:
            out[keyword] = value
    return out


# --- split chains ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """A plan cut into its two sides: export environments with their export cases, runtime environments with
    their routes, and which export environment feeds which runtime environment (one pair per combination)."""

    plan: Plan
    exports: tuple[tuple[Environment, tuple[Case, ...]], ...]
    runtimes: tuple[tuple[Environment, tuple[str, ...]], ...]
    pairs: tuple[tuple[str, str], ...]  # (export environment hash, runtime environment hash)

    @property
    def installs(self) -> int:
        return len(self.exports) + len(self.runtimes)


# Converters that start from torch itself (no ONNX file): they exist only in joint environments, and they pull
# torch in as a dependency, so they never join a runtime side.
JOINT_ONLY = tuple(p for route, packages in ROUTE_PACKAGES.items() if route not in SPLIT_ROUTES for p in packages)


def _side(reqs: tuple[str, ...], export: bool) -> tuple[str, ...]:
    """The requirements of one side: torch and its exporter's needs, or everything a runtime needs."""
    def keep(req: str) -> bool:
        name = split_requirement(req)[0]
        if export:
            return name in EXPORT_SIDE or name in BOTH_SIDES
        return name not in EXPORT_SIDE and name not in JOINT_ONLY
    return tuple(r for r in reqs if keep(r))


def _runtime_routes(env: Environment, routes: Iterable[str]) -> tuple[str, ...]:
    """The split routes a runtime side can run: its converter is there; ONNX Runtime where it was asked for or
    comes with a converter (onnx2tf and onnx-tf depend on it)."""
    names = {split_requirement(r)[0] for r in env.all_requirements}
    converters = {p for route, packages in ROUTE_PACKAGES.items() if route != "onnxruntime" for p in packages}
    out = []
    for route in dict.fromkeys(routes):
        if route not in SPLIT_ROUTES or route == "export":
            continue
        needed = set(ROUTE_PACKAGES.get(route, ()))
        if needed & names or (route == "onnxruntime" and names & converters):
            out.append(route)
    return tuple(out)


def _runtime_variants(spec: Spec, env: Environment) -> list[Environment]:
    """The joint environments whose runtime sides `env` feeds: itself, or one per combination of the spec's
    `[runtime]` axes (its requirement of each such package replaced, companions recomputed for the result)."""
    side = spec.runtime
    if not side.axes:
        return [env]
    out = []
    for combo in itertools.product(*side.axes.values()):
        chosen = {name: _requirement(name, value) for name, value in zip(side.axes, combo, strict=True)}
        kept = tuple(r for r in env.requirements if split_requirement(r)[0] not in chosen)
        reqs = kept + tuple(chosen.values())
        out.append(replace(env, requirements=reqs, extras=_extras(spec, reqs)))
    return out


def split(plan: Plan) -> SplitPlan:
    """Cut every environment of a joint plan into an export and a runtime environment, each built once.

    A spec's `[runtime]` table changes the runtime side only: its axes give one runtime environment per value
    and its cutoff replaces the spec's there, while every export environment stays as it would be without it."""
    exports: dict[str, tuple[Environment, dict[Case, None]]] = {}
    runtimes: dict[str, tuple[Environment, dict[str, None]]] = {}
    pairs: dict[tuple[str, str], None] = {}
    for env, cases in plan.items:
        # Converter options and the overrides that relax a converter's pins belong to the runtime side only.
        export_reqs = _side(env.requirements, True)
        export_env = replace(env, kind="export", python=plan.spec.export_python or env.python, options=(),
                             overrides=(), requirements=export_reqs,
                             extras=_side(env.extras, True) + numpy_companions(export_reqs))
        for variant in _runtime_variants(plan.spec, env):
            joint_needs = numpy_companions(variant.requirements)  # then each side's own (torch, or onnxruntime)
            runtime_reqs = _side(variant.requirements, False)
            runtime_env = replace(variant, kind="runtime", requirements=runtime_reqs,
                                  cutoff=plan.spec.runtime.exclude_newer or variant.cutoff,
                                  extras=tuple(x for x in _side(variant.extras, False) if x not in joint_needs)
                                  + numpy_companions(runtime_reqs))
            routes = _runtime_routes(runtime_env, (c.route for c in cases))
            exported = [c for c in cases if c.route in routes]
            if not exported:
                continue  # nothing here goes through an ONNX file (e.g. nobuco only): joint environments cover it
            entry = exports.setdefault(export_env.hash, (export_env, {}))
            for c in exported:
                entry[1][Case(model=c.model, route="export", exporter=c.exporter, opset=c.opset,
                              model_hash=c.model_hash)] = None
            runtimes.setdefault(runtime_env.hash, (runtime_env, {}))[1].update(dict.fromkeys(routes))
            pairs[(export_env.hash, runtime_env.hash)] = None
    return SplitPlan(
        plan=plan,
        exports=tuple((e, tuple(cs)) for e, cs in exports.values()),
        runtimes=tuple((e, tuple(rs)) for e, rs in runtimes.values()),
        pairs=tuple(pairs),
    )
