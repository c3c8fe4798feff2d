"""Read-side SQL as named functions: (session, params) → rows. Routes and the CLI call these."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.schemas import ChainOut, ModelEvidence
from knowngood.models import Case, Environment, Package, Run

# The packages a user pins by hand; everything else follows from them.
KEY_PACKAGES = ("torch", "onnx", "onnxruntime", "tensorflow", "tensorflow-cpu", "onnx2tf", "onnx-tf",
                "numpy", "protobuf")
# To a user these are one framework: a filter on either matches both.
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "tensorflow-cpu": ("tensorflow", "tensorflow-cpu")}


class QueryError(ValueError):
    """A parameter the caller got wrong: `param` names it, the message says what was expected."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class ChainQuery:
    models: tuple[str, ...]
    route: str
    exporter: str | None = None
    python: str | None = None
    require: tuple[Requirement, ...] = field(default=())

    @classmethod
    def parse(
        cls, models: str | list[str], route: str, *, exporter: str | None = None,
        python: str | None = None, require: list[str] | None = None,
    ) -> ChainQuery:
        names = [m.strip() for part in ([models] if isinstance(models, str) else models)
                 for m in part.split(",") if m.strip()]
        if not names:
            raise QueryError("models", "expected one or more comma-separated model names")
        reqs = []
        for text in require or []:
            try:
                reqs.append(Requirement(text))
            except InvalidRequirement:
                raise QueryError("require", f"expected a PEP 508 requirement such as 'torch>=2.3', got {text!r}") \
                    from None
        return cls(tuple(dict.fromkeys(names)), route, exporter, python, tuple(reqs))


def _version(text: str | None) -> Version:
    try:
        return Version(text or "0")
    except InvalidVersion:
        return Version("0")


def _satisfies(versions: dict[str, str], req: Requirement) -> bool:
    name = canonicalize_name(req.name)
    for candidate in ALIASES.get(name, (name,)):
        if candidate in versions and req.specifier.contains(versions[candidate], prereleases=True):
            return True
    return False


def rank_key(versions: dict[str, str]) -> tuple[Version, ...]:
    tf = versions.get("tensorflow") or versions.get("tensorflow-cpu")
    return (_version(versions.get("torch")), _version(tf), _version(versions.get("onnx")),
            _version(versions.get("onnxruntime")))


def known_good_chains(session: Session, query: ChainQuery) -> list[ChainOut]:
    """Environments in which every requested model passed on the route, newest versions first."""
    conditions = [Case.model.in_(query.models), Case.route == query.route, Case.status == "pass"]
    if query.exporter:
        conditions.append(Case.exporter == query.exporter)
    complete = (
        select(Case.environment_id)
        .where(*conditions)
        .group_by(Case.environment_id)
        .having(func.count(func.distinct(Case.model)) == len(query.models))
    )
    env_query = select(Environment).where(Environment.id.in_(complete))
    if query.python:
        env_query = env_query.where(Environment.python == query.python)
    envs = {e.id: e for e in session.scalars(env_query)}
    if not envs:
        return []
    versions: dict[int, dict[str, str]] = defaultdict(dict)
    for env_id, name, version in session.execute(
        select(Package.environment_id, Package.name, Package.version).where(
            Package.environment_id.in_(envs), Package.name.in_(KEY_PACKAGES)
        )
    ):
        versions[env_id][name] = version
    evidence: dict[int, list[tuple[Case, Run]]] = defaultdict(list)
    for case, run in session.execute(
        select(Case, Run).join(Run, Run.id == Case.run_id).where(Case.environment_id.in_(envs), *conditions)
    ):
        evidence[case.environment_id].append((case, run))
    chains = []
    for env_id, env in envs.items():
        if not all(_satisfies(versions[env_id], r) for r in query.require):
            continue
        rows = evidence[env_id]
        newest_case, newest_run = max(rows, key=lambda cr: cr[0].recorded_at)
        per_model: dict[str, Case] = {}
        for case, _ in rows:  # the worst passing diff per model is the honest figure
            best = per_model.get(case.model)
            if best is None or (case.max_abs_diff or 0) > (best.max_abs_diff or 0):
                per_model[case.model] = case
        chains.append(ChainOut(
            environment_id=env_id, name=env.name, python=env.python, python_full=env.python_full,
            versions=versions[env_id], lock_hash=env.lock_hash or "", run_id=newest_run.id,
            recorded_at=newest_case.recorded_at, cutoff=env.cutoff, index_url=env.index_url,
            cases_passed=len(rows),
            models=[ModelEvidence(model=c.model, exporter=c.exporter, opset=c.opset,
                                  opset_emitted=c.opset_emitted, max_abs_diff=c.max_abs_diff)
                    for c in sorted(per_model.values(), key=lambda c: query.models.index(c.model))],
        ))
    chains.sort(key=lambda c: (rank_key(c.versions), c.recorded_at), reverse=True)
    return chains


def known_models(session: Session) -> set[str]:
    return set(session.scalars(select(Case.model).distinct()))


def status_table(session: Session) -> list[tuple[str, str, str, str, float | None]]:
    """(environment, model, route, status, max_abs_diff) for every recorded case, for the first page."""
    rows = session.execute(
        select(Environment.name, Case.model, Case.route, Case.exporter, Case.opset, Case.status,
               Case.max_abs_diff, Case.signature)
        .join(Environment, Environment.id == Case.environment_id)
        .order_by(Environment.name, Case.model, Case.route)
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]
