"""The pipeline: plan → skip recorded → resolve → install → execute → record → summary."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.orm import Session, sessionmaker

from matrix import expand, versions
from matrix import spec as spec_mod
from runner import environments, execute, record, split, uv
from runner import queue as work_queue
from runner.errors import UvFailed
from runner.results import StepResult, case_status
from runner.stop import Stop, Stopped, handling_signals
from store.db import make_engine, make_sessionmaker
from store.models import Environment as EnvironmentRow
from store.models import Run
from store.settings import Settings

log = logging.getLogger(__name__)

# What an environment is predicted to need before anything of it was measured: torch + TF in one process.
DEFAULT_PEAK = 3 * 2**30


@dataclass
class Summary:
    run_id: str
    environments: Counter[str] = field(default_factory=Counter)
    cases: Counter[str] = field(default_factory=Counter)
    skipped_recorded: int = 0
    installs: int = 0
    seconds: float = 0.0
    interrupted: str | None = None  # the signal that stopped the run, if one did
    exit_code: int = 0  # 128 + that signal's number, as a shell reports it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str, key: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, kind)[key] += n


class MemoryBudget:
    """Admit an environment only while the predicted peaks of those running fit the budget."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.cond = threading.Condition()

    def acquire(self, need: int) -> int:
        need = min(need, self.budget)  # one environment alone is always admitted
        with self.cond:
            self.cond.wait_for(lambda: self.used + need <= self.budget)
            self.used += need
        return need

    def release(self, need: int) -> None:
        with self.cond:
            self.used -= need
            self.cond.notify_all()


@dataclass
class Context:
    """What every environment's processing shares within one run."""

    settings: Settings
    plan: expand.Plan
    run_id: str
    Session: sessionmaker[Session]
    progress: Progress
    env_task: TaskID
    case_task: TaskID
    summary: Summary
    budget: MemoryBudget
    force: bool
    resolve_only: bool
    step_timeout: float
    memory_limit: int
    stopping: Stop = field(default_factory=lambda: Stop(20.0))
    cache: uv.CacheLock = field(default_factory=uv.CacheLock)  # installs against limits.prune-cache


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
    only: list[str] | None = None,
    corpus: str | None = None,
    resolve_only: bool = False,
    queue: bool = False,
    console: Console | None = None,
) -> Summary:
    """Run a spec end to end and record everything in the database.

    `queue` (PostgreSQL): store the plan once as a work queue, or join the unfinished queue of the same spec, and
    claim environments from it until it is drained; any number of processes may do so at once (runner/queue.py)."""
    started = time.monotonic()
    console = console or Console(stderr=True)
    spec = spec_mod.load(spec_path, corpus=corpus)
    plan = expand.plan(spec, index=uv.index_settings(), selectors=versions.resolve_selectors(spec),
                       max_environments=settings.max_environments)
    items = shard_of(expand.select(plan, only), shard)
    engine = make_engine(settings.database_url)
    Session = make_sessionmaker(engine)
    stopping = Stop(settings.stop_grace)
    with Session() as session, _progress(console) as progress:
        if queue:
            run_row, joined = work_queue.open_or_join(session, plan, items)
            n_envs, n_cases = work_queue.totals(session, run_row.id)
            progress.console.print(f"queue of run {run_row.id}: {'joined' if joined else 'planned'}, {n_envs} "
                                   f"environments; more workers: the same command, on any machine")
        else:
            run_row = record.start_run(session, plan)
            n_envs, n_cases = len(items), sum(len(c) for _, c in items)
        # With a queue, a worker past its grace period just goes: its lease passes and another worker retakes.
        on_deadline = (lambda: None) if queue else _interrupt_later(Session, run_row.id)
        ctx = Context(
            settings=settings, plan=plan, run_id=run_row.id, Session=Session, progress=progress,
            env_task=progress.add_task("environments", total=n_envs),
            case_task=progress.add_task("cases", total=n_cases),
            summary=Summary(run_id=run_row.id),
            budget=MemoryBudget(settings.memory_budget_mb * 2**20),
            force=force,
            resolve_only=resolve_only,
            step_timeout=min(settings.step_timeout, spec.limits.step_timeout),
            memory_limit=min(settings.memory_limit_mb, spec.limits.memory_limit_mb) * 2**20,
            stopping=stopping,
        )
        summary = ctx.summary
        worker = work_queue.worker_id()
        try:
            with handling_signals(stopping, on_deadline):
                if queue:
                    work_queue.work(ctx, worker, process_environment)
                else:
                    if spec.mode in ("joint", "both") and spec.limits.prune_cache:
                        split.process_by_torch(ctx, items, _process_all)
                    elif spec.mode in ("joint", "both"):
                        _process_all(ctx, items)
                    if spec.mode in ("split", "both"):
                        split.run_split(ctx, expand.split(replace(plan, items=tuple(items))), _process_all)
        except Stopped:
            summary.interrupted, summary.exit_code = stopping.name, stopping.exit_code
        summary.seconds = time.monotonic() - started
        counts = _counts(summary)
        if queue:
            session.rollback()
            _queue_worker_done(session, run_row.id, worker, counts, stopped=bool(summary.interrupted))
        elif summary.interrupted:
            session.rollback()  # whatever the stop cut short in this session is not a result
            record.interrupt_run(session, run_row, counts)
        else:
            record.finish_run(session, run_row, counts)
    engine.dispose()
    return summary


def _counts(summary: Summary) -> dict[str, object]:
    counts: dict[str, object] = {
        "environment_status": dict(summary.environments),
        "case_status": dict(summary.cases),
        "skipped_recorded": summary.skipped_recorded,
        "installs": summary.installs,
        "seconds": round(summary.seconds, 1),
    }
    if summary.interrupted:
        counts["stopped_by"] = summary.interrupted
    return counts


def _queue_worker_done(session: Session, run_id: str, worker: str, counts: dict[str, object], *,
                       stopped: bool) -> None:
    """Keep this worker's counts on the run; the worker that drains the queue finishes the run, and a stopped
    worker marks it interrupted only if no other worker still holds a lease on it."""
    status = None
    if work_queue.drained(session, run_id):
        status = "finished"
    elif stopped and not work_queue.others_working(session, run_id, worker):
        status = "interrupted"
    record.worker_counts(session, run_id, worker, counts, status)


def _interrupt_later(Session: sessionmaker[Session], run_id: str) -> Callable[[], None]:
    """What the stop watchdog records before it ends the process at the deadline: the run is interrupted."""

    def mark() -> None:
        with Session() as session:
            record.interrupt_run(session, session.get_one(Run, run_id), {"stopped_by": "grace period over"})

    return mark


def _process_all(ctx: Context, items: list[tuple[expand.Environment, tuple[expand.Case, ...]]]) -> None:
    ctx.stopping.check()
    if ctx.settings.jobs == 1:
        for env, cases in items:
            process_environment(ctx, env, cases)
        return
    with ThreadPoolExecutor(max_workers=ctx.settings.jobs, thread_name_prefix="env") as pool:
        for future in [pool.submit(process_environment, ctx, env, cases) for env, cases in items]:
            future.result()


def process_environment(ctx: Context, env: expand.Environment, cases: tuple[expand.Case, ...]) -> None:
    """Resolve, install, execute and record one environment, in a session of its own."""
    progress, summary = ctx.progress, ctx.summary
    ctx.stopping.check()  # environments not yet started when a stop came are left for the resumed run
    with ctx.Session() as session:
        run_row = session.get_one(Run, ctx.run_id)
        resolved = environments.resolve(env, record.stored_lock(session, env.hash), ttl=ctx.settings.resolve_ttl,
                                        uv_path=ctx.settings.uv)
        ctx.stopping.check()  # a stop during resolution: record nothing of an answer it may have cut short
        env_row = record.save_environment(session, resolved)
        summary.count("environments", resolved.status)
        if resolved.lock is None or ctx.resolve_only:
            if resolved.lock is None:
                progress.console.print(f"[yellow]{env.id}: {env_row.signature or resolved.status}[/]")
            progress.advance(ctx.case_task, len(cases))
            progress.advance(ctx.env_task)
            return
        done = set() if ctx.force else record.recorded(session, env_row)
        todo = [c for c in cases if record.natural_key(c) not in done]
        with summary.lock:
            summary.skipped_recorded += len(cases) - len(todo)
        progress.advance(ctx.case_task, len(cases) - len(todo))
        if not todo:
            progress.advance(ctx.env_task)
            return
        admitted = ctx.budget.acquire(_predicted_peak(env_row))
        try:
            ctx.stopping.check()  # it may have come while this environment waited for memory
            _install_and_execute(ctx, session, run_row, env, env_row, resolved, todo)
        finally:
            ctx.budget.release(admitted)
            progress.advance(ctx.env_task)


def _install_and_execute(
    ctx: Context, session: Session, run_row: Run, env: expand.Environment, env_row: EnvironmentRow,
    resolved: environments.Resolved, todo: list[expand.Case],
) -> None:
    progress, summary, settings = ctx.progress, ctx.summary, ctx.settings
    try:
        with ctx.cache.shared():
            venv, built = environments.install(settings.env_root, resolved, uv_path=settings.uv)
    except UvFailed as exc:
        ctx.stopping.check()  # not the environment's failure if a stop came during the install
        record.install_failed(session, env_row, str(exc))
        progress.console.print(f"[red]{env.id}: install failed[/]")
        progress.advance(ctx.case_task, len(todo))
        return
    with summary.lock:
        summary.installs += built
    record.installed(session, env_row, lambda: _probes(venv, settings.work_root / "probe"))
    by_key = {c.key: c for c in todo}

    def on_case(key: str, steps: list[StepResult]) -> None:
        # Called as each case ends, while the worker goes on: the case is in the database before the next starts.
        record.save_case(session, run_row, env_row, by_key[key], ctx.plan.corpus_version, steps, replace=ctx.force)
        status = case_status(steps)
        summary.count("cases", status)
        progress.advance(ctx.case_task)
        progress.console.print(f"  {env.id} {key}: {status}")

    workdir = settings.work_root / f"{ctx.run_id[:8]}-{env_row.id}"
    outcome = execute.execute(
        venv,
        [split.job(c, settings.artifact_root, expand.converter_options(env, c.route)) for c in todo],
        corpus=ctx.plan.corpus_path,
        workdir=workdir,
        step_timeout=ctx.step_timeout,
        memory_limit=ctx.memory_limit,
        on_case=on_case,
        stopping=ctx.stopping,
    )
    record.worker_figures(session, env_row, outcome.peak_rss, outcome.attempts)
    if not settings.keep_workdirs:
        shutil.rmtree(workdir, ignore_errors=True)
    if ctx.plan.spec.limits.prune:
        environments.remove(venv)  # the lock and the results stay in the database


def _probes(venv: Path, tmp: Path) -> dict[str, object]:
    """Import-memory figures, measured once per installed lock and kept beside it."""
    cached = venv / ".knowngood-probes.json"
    if cached.is_file():
        return json.loads(cached.read_text())  # type: ignore[no-any-return]
    figures = execute.probe_memory(venv, tmp)
    cached.write_text(json.dumps(figures))
    return figures


def _predicted_peak(env_row: EnvironmentRow) -> int:
    """The worker peak measured for this environment before, else the import probes' figure, else a default."""
    memory = env_row.memory or {}
    if memory.get("worker_peak_rss"):
        return int(memory["worker_peak_rss"])
    both = (memory.get("probes") or {}).get("torch_then_tensorflow") or {}
    if both.get("peak_rss"):
        return int(both["peak_rss"] * 1.5)  # cases add models and converter state on top of the imports
    return DEFAULT_PEAK


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
