"""The pipeline: plan → skip recorded → resolve → install → execute → record → summary."""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from knowngood.db import make_engine, make_sessionmaker
from knowngood.settings import Settings
from matrix import expand, versions
from matrix import spec as spec_mod
from runner import environments, execute, record, uv
from runner.errors import UvFailed
from runner.results import StepResult, case_status

log = logging.getLogger(__name__)


@dataclass
class Summary:
    run_id: str
    environments: Counter[str] = field(default_factory=Counter)
    cases: Counter[str] = field(default_factory=Counter)
    skipped_recorded: int = 0
    installs: int = 0
    seconds: float = 0.0


def shard_of(items: list, shard: tuple[int, int] | None) -> list:  # type: ignore[type-arg]
    """Deterministic partition: environment i goes to shard i mod N (1-based I/N)."""
    if shard is None:
        return items
    index, total = shard
    return [item for i, item in enumerate(items) if i % total == index - 1]


def run(
    spec_path: str | Path,
    settings: Settings,
    *,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    console: Console | None = None,
) -> Summary:
    """Run a spec end to end and record everything in the database."""
    started = time.monotonic()
    console = console or Console(stderr=True)
    spec = spec_mod.load(spec_path)
    plan = expand.plan(spec, index=uv.index_settings(), selectors=versions.resolve_selectors(spec))
    items = shard_of(list(plan.items), shard)
    engine = make_engine(settings.database_url)
    Session = make_sessionmaker(engine)
    step_timeout = min(settings.step_timeout, spec.limits.step_timeout)
    memory_limit = min(settings.memory_limit_mb, spec.limits.memory_limit_mb) * 2**20
    with Session() as session, _progress(console) as progress:
        run_row = record.start_run(session, plan)
        summary = Summary(run_id=run_row.id)
        env_task = progress.add_task("environments", total=len(items))
        case_task = progress.add_task("cases", total=sum(len(c) for _, c in items))
        for env, cases in items:
            progress.update(env_task, description=f"[bold]{env.id}[/] resolving")
            resolved = _resolve(session, env)
            env_row = record.save_environment(session, resolved)
            summary.environments[resolved.status] += 1
            if resolved.lock is None:
                console.print(f"[yellow]{env.id}: {env_row.signature}[/]")
                progress.advance(case_task, len(cases))
                progress.advance(env_task)
                continue
            done = set() if force else record.recorded(session, env_row)
            todo = [c for c in cases if record.natural_key(c) not in done]
            summary.skipped_recorded += len(cases) - len(todo)
            progress.advance(case_task, len(cases) - len(todo))
            if not todo:
                progress.advance(env_task)
                continue
            progress.update(env_task, description=f"[bold]{env.id}[/] installing")
            try:
                venv, built = environments.install(settings.env_root, resolved)
            except UvFailed as exc:
                env_row.status, env_row.error = "install-failed", str(exc)
                env_row.signature = f"InstallFailed({env.id})"
                session.commit()
                console.print(f"[red]{env.id}: install failed[/]")
                progress.advance(case_task, len(todo))
                progress.advance(env_task)
                continue
            summary.installs += built
            env_row.status = "installed"
            if "probes" not in env_row.memory:
                progress.update(env_task, description=f"[bold]{env.id}[/] measuring imports")
                probes = execute.probe_memory(venv, settings.work_root / "probe")
                env_row.memory = {**env_row.memory, "probes": probes}
            session.commit()
            progress.update(env_task, description=f"[bold]{env.id}[/] running")
            by_key = {c.key: c for c in todo}

            def on_case(key: str, steps: list[StepResult], env_row=env_row, by_key=by_key, env=env) -> None:
                if force:
                    _forget(session, env_row, by_key[key])
                record.save_case(session, run_row, env_row, by_key[key], plan.corpus_version, steps)
                status = case_status(steps)
                summary.cases[status] += 1
                progress.advance(case_task)
                progress.console.print(f"  {env.id} {key}: {status}")

            workdir = settings.work_root / f"{run_row.id[:8]}-{env_row.id}"
            outcome = execute.execute(
                venv,
                [execute.Job(key=c.key, model=c.model, route=c.route, exporter=c.exporter, opset=c.opset)
                 for c in todo],
                corpus=plan.corpus_path,
                workdir=workdir,
                step_timeout=step_timeout,
                memory_limit=memory_limit,
                on_case=on_case,
            )
            env_row.memory = {**env_row.memory, "worker_peak_rss": outcome.peak_rss,
                              "worker_attempts": outcome.attempts}
            session.commit()
            if not settings.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
            if spec.limits.prune:
                environments.remove(venv)  # the lock and the results stay in the database
            progress.advance(env_task)
        summary.seconds = time.monotonic() - started
        record.finish_run(session, run_row, {
            "environment_status": dict(summary.environments),
            "case_status": dict(summary.cases),
            "skipped_recorded": summary.skipped_recorded,
            "installs": summary.installs,
            "seconds": round(summary.seconds, 1),
        })
    engine.dispose()
    return summary


def _resolve(session, env: expand.Environment) -> environments.Resolved:  # type: ignore[no-untyped-def]
    """A request with a cutoff resolves the same way forever: reuse its stored lock, skip uv."""
    if env.cutoff:
        row = record.stored_lock(session, env.hash)
        if row is not None and row.lock_text:
            from runner import pythons

            exe, full = pythons.find(env.python)
            return environments.Resolved(env, exe, full, uv.Lock(row.lock_text, uv.parse_lock(row.lock_text)))
    return environments.resolve(env)


def _forget(session, env_row, case: expand.Case) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import delete

    from knowngood.models import Case
    from runner import RUNNER_VERSION

    session.execute(delete(Case).where(
        Case.environment_id == env_row.id, Case.model == case.model, Case.route == case.route,
        Case.exporter == case.exporter, Case.opset == case.opset, Case.model_hash == case.model_hash,
        Case.runner_version == RUNNER_VERSION,
    ))
    session.commit()


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
