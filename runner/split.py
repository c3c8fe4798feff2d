"""Split chains: export once per export environment, then convert and run each stored graph once per runtime
environment (no torch there), and record both sides so a chain can be served as two lockfiles.

Export environments are processed torch release by torch release, so a sweep holds the builds of one torch at a
time when `limits.prune` removes each venv after use; the artifacts they leave are small and stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from matrix import expand
from runner import RUNNER_VERSION, execute, uv
from runner.errors import UvFailed
from store.models import Artifact, Case, Environment, Package

if TYPE_CHECKING:
    from runner.run import Context

Items = list[tuple[expand.Environment, tuple[expand.Case, ...]]]


def artifact_dir(root: Path, key: str) -> Path:
    """Where an artifact lives; the worker (runner/worker/artifact.py) writes the same layout."""
    return root / key[:2] / key


def job(case: expand.Case, artifact_root: Path, options: dict[str, str] | None = None) -> execute.Job:
    """The worker's job for a planned case; on split chains, export cases store an artifact and runtime cases
    read one."""
    return execute.Job(
        key=case.key, model=case.model, route=case.route, exporter=case.exporter, opset=case.opset,
        target=case.target, options=dict(options or {}),
        artifact_root=str(artifact_root) if case.route == "export" else None,
        artifact=str(artifact_dir(artifact_root, case.artifact)) if case.artifact else None,
    )


def _torch_order(env: expand.Environment) -> tuple[Version, str]:
    """Export environments newest torch first, grouped by torch, so one torch build is in use at a time."""
    for req in env.requirements:
        name, spec = expand.split_requirement(req)
        if name == "torch":
            try:
                return Version(spec.lstrip("=<>~!")) if spec else Version("9999"), env.id
            except InvalidVersion:
                break
    return Version("0"), env.id


def export_order(split: expand.SplitPlan) -> Items:
    """Export environments newest torch first, grouped by torch (what both a split run and a queue follow)."""
    return sorted(split.exports, key=lambda item: _torch_order(item[0]), reverse=True)


# A CUDA build of torch is mostly these; dropping them from uv's cache is what bounds a sweep's disk.
_TORCH_BUILD = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _by_torch(exports: Items) -> list[Items]:
    """Consecutive export environments grouped by their torch requirement (already sorted by it)."""
    groups: list[Items] = []
    for item in exports:
        if groups and _torch_order(groups[-1][0][0])[0] == _torch_order(item[0])[0]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def torch_release(env: expand.Environment) -> Version | None:
    """The torch release an environment holds, or None (runtime environments hold none)."""
    if not any(expand.split_requirement(req)[0] == "torch" for req in env.requirements):
        return None
    return _torch_order(env)[0]


def drop_torch_build(ctx: Context, hashes: list[str]) -> None:
    """After a torch release's last export environment: remove its build from uv's cache (limits.prune-cache).

    `hashes` are the environments of that release whose pins name the build; installs of this process wait (and
    no install waits for it) while uv removes it (uv.CacheLock)."""
    with ctx.Session() as session:
        names = set(session.scalars(
            select(Package.name).join(Environment, Environment.id == Package.environment_id)
            .where(Environment.hash.in_(hashes))))
    doomed = sorted(n for n in names if _TORCH_BUILD.match(n))
    ctx.progress.console.print(f"[dim]pruning uv's cache: {', '.join(doomed) or 'nothing'}[/]")
    with ctx.cache.exclusive():
        try:
            uv.cache_clean(doomed, uv_path=ctx.settings.uv)
        except UvFailed as exc:
            # Housekeeping, not a result: another sweep sharing the cache may have removed the same build first
            # (uv then fails on a file that is gone). The build stays on disk at worst; the sweep goes on.
            ctx.progress.console.print(f"[yellow]could not prune uv's cache; going on: {exc}[/]")


def process_by_torch(ctx: Context, items: Items, process_all: Callable[[Any, Items], None]) -> None:
    """Environments newest torch first, one torch release at a time; with limits.prune-cache, that release's build
    leaves uv's cache once its last environment is done, so a sweep holds one torch build at a time."""
    for group in _by_torch(sorted(items, key=lambda item: _torch_order(item[0]), reverse=True)):
        installs = ctx.summary.installs
        process_all(ctx, group)
        # Only a build this run installed: a resumed run that skips a release must not empty the cache under
        # another sweep that shares it and is installing that release right now.
        if ctx.plan.spec.limits.prune_cache and ctx.summary.installs > installs:
            drop_torch_build(ctx, [env.hash for env, _ in group])


def runtime_cases(
    session: Session, split: expand.SplitPlan, runtime: expand.Environment, routes: tuple[str, ...],
) -> tuple[expand.Case, ...]:
    """Every distinct artifact the runtime environment's export partners stored, through each of its routes.

    Only exports of the plan's current models (model hash) and of this runner version count: a graph is converted
    once here however many torch releases emitted it.
    """
    partners = [e for e, r in split.pairs if r == runtime.hash]
    wanted = {(c.model, c.exporter, c.opset, c.model_hash) for _, cases in split.exports for c in cases}
    targets = {r: expand.targets_of(split.plan.spec, r) for r in routes}
    return artifact_cases(session, partners, wanted, routes, targets)


def artifact_cases(
    session: Session, partners: list[str], wanted: set[tuple[str, str, int, str]], routes: tuple[str, ...],
    targets: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[expand.Case, ...]:
    """The cases of a runtime environment whose export partners (environment hashes) are done: one per distinct
    stored artifact of a wanted (model, exporter, opset, model hash), through each route. The queue calls this
    with what it stored of the plan (runner/queue.py)."""
    rows = session.execute(
        select(Case.model, Case.exporter, Case.opset, Case.model_hash, Artifact.key)
        .join(Artifact, Artifact.id == Case.artifact_id)
        .join(Environment, Environment.id == Case.environment_id)
        .where(Environment.hash.in_(partners), Case.route == "export", Case.status == "pass",
               Case.runner_version == RUNNER_VERSION)
        .order_by(Case.id)
    )
    first: dict[str, tuple[str, str, int, str]] = {}
    for model, exporter, opset, model_hash, key in rows:
        if (model, exporter, opset, model_hash) in wanted:
            first.setdefault(key, (model, exporter, opset, model_hash))
    return tuple(
        expand.Case(model=m, route=route, exporter=e, opset=o, model_hash=h, artifact=key, target=target)
        for key, (m, e, o, h) in first.items()
        for route in routes
        for target in (targets or {}).get(route, ("",))
    )


def run_split(ctx: Context, split: expand.SplitPlan, process_all: Callable[[Any, Items], None]) -> None:
    """Phase one: every export environment (torch by torch). Phase two: every runtime environment on the
    artifacts its partners stored. Each phase resumes: recorded cases are skipped as in joint runs."""
    progress = ctx.progress
    exports = export_order(split)
    if ctx.plan.spec.mode == "split":  # the joint plan's totals were set before the split was known
        progress.update(ctx.env_task, total=split.installs, completed=0)
        progress.update(ctx.case_task, total=sum(len(c) for _, c in exports), completed=0)
    else:
        progress.update(ctx.env_task, total=(progress.tasks[ctx.env_task].total or 0) + split.installs)
        progress.update(ctx.case_task, total=(progress.tasks[ctx.case_task].total or 0)
                        + sum(len(c) for _, c in exports))
    process_by_torch(ctx, exports, process_all)
    with ctx.Session() as session:
        runtimes = [(env, runtime_cases(session, split, env, routes)) for env, routes in split.runtimes]
    progress.update(ctx.case_task, total=(progress.tasks[ctx.case_task].total or 0)
                    + sum(len(c) for _, c in runtimes))
    process_all(ctx, runtimes)
