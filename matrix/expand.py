"""Spec → environments × cases: readable ids, identity hashes, include/exclude patterns."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from matrix.routes import CONVERTER_OPTIONS, ROUTE_PACKAGES, ROUTES, TARGETS
from matrix.spec import LatestMinors, Spec

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
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def all_requirements(self) -> tuple[str, ...]:
        return self.requirements + self.extras

    @property
    def index_url(self) -> str:
        settings = dict(self.index)
        return settings.get("UV_DEFAULT_INDEX") or settings.get("UV_INDEX_URL") or "https://pypi.org/simple"


@dataclass(frozen=True, kw_only=True)
class Case:
    """One model through one route, with one exporter and opset."""

    model: str
    route: str
    exporter: str
    opset: int
    model_hash: str = field(default="", compare=False)
    target: str = ""  # TARGETS: saved_model | tflite | keras on TF routes, "" elsewhere

    @property
    def key(self) -> str:
        key = f"{self.model}.{self.route}.{self.exporter}.op{self.opset}"
        return f"{key}.{self.target}" if self.target else key


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


def track_minor(requirements: tuple[str, ...], extras: tuple[str, ...]) -> tuple[str, ...]:
    """`tf-keras` beside `tensorflow-cpu==2.19.1` → `tf-keras>=2.19,<2.20`; a companion with a specifier is kept."""
    pins = {}
    for req in requirements:
        name, spec = split_requirement(req)
        m = re.fullmatch(r"==\s*(\d+)\.(\d+)(\.[0-9A-Za-z.+-]*)?", spec)
        if m:
            pins[name] = (int(m.group(1)), int(m.group(2)))
    out = []
    for extra in extras:
        name, spec = split_requirement(extra)
        frameworks = [pins[f] for f in TRACKS_MINOR_OF.get(name, ()) if f in pins]
        if not spec and frameworks:
            major, minor = frameworks[0]
            extra = f"{name}>={major}.{minor},<{major}.{minor + 1}"
        out.append(extra)
    return tuple(out)


def expand_braces(pattern: str) -> list[str]:
    """`py3.{10,11}-*` → [`py3.10-*`, `py3.11-*`]."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for option in m.group(1).split(",") for x in expand_braces(head + option + tail)]


def matches(patterns: Iterable[str], env_id: str) -> bool:
    return any(fnmatch.fnmatchcase(env_id, p) for pat in patterns for p in expand_braces(pat))


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


def plan(
    spec: Spec,
    index: Mapping[str, str] | None = None,
    selectors: Mapping[str, list[str]] | None = None,
) -> Plan:
    """Expand a spec; `selectors` maps axis → concrete specifiers where `latest-minors` was resolved."""
    corpus_path = Path(spec.corpus).resolve() if spec.corpus else CORPUS_DIR
    version, model_hashes = corpus_hashes(corpus_path, spec.models)
    cases = tuple(dict.fromkeys(
        # A route that never exports (torch → Keras directly) has one case per model, not one per exporter/opset.
        Case(model=m, route=r, exporter=e, opset=o, model_hash=model_hashes[m], target=t)
        if "export" in ROUTES[r] else
        Case(model=m, route=r, exporter="none", opset=0, model_hash=model_hashes[m], target=t)
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
    items = []
    seen: set[Environment] = set()
    for python in axes["python"]:
        for combo, chosen in itertools.product(itertools.product(*(axes[p] for p in packages)),
                                               itertools.product(*(axes[o] for o in option_axes))):
            reqs = tuple(_requirement(p, s) for p, s in zip(packages, combo, strict=True))
            env = Environment(
                python=python,
                requirements=reqs,
                extras=track_minor(reqs, tuple(x for r in reqs
                                               for x in spec.companions.get(split_requirement(r)[0], ()))),
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
                if spec.include and not matches(spec.include, candidate.id):
                    continue
                if spec.exclude and matches(spec.exclude, candidate.id):
                    continue
                items.append((candidate, tuple(c for c in cases if _route_applies(c.route, candidate))))
    return Plan(spec=spec, corpus_path=corpus_path, corpus_version=version, items=tuple(items))


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
