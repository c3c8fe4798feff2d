"""The work queue of shared-database deployments: a plan stored once as one row per environment, claimed by any
number of workers with `SELECT … FOR UPDATE SKIP LOCKED` and held by a lease each worker renews from a thread.

Why hand-written rather than procrastinate or pgqueuer (both maintained, both built on SKIP LOCKED): each is an
asyncio consumer that owns the process's loop and runs registered task functions, while a runner is a synchronous
program with its own threads (--jobs), progress display and signal handling, whose "job" is minutes of
subprocesses. Each installs its own schema with its own command (`procrastinate schema --apply`, `pgq install`),
where ours comes only from Alembic and `knowngood db check` fails on tables it does not know. And neither expresses
what a split plan needs: runtime environments may start only once every export environment is done, and their
cases are computed then, from the artifacts the exports stored. What we need of a queue is one claim statement, one
renewal statement and a phase barrier: about as much code as configuring either library would be.

The database clock (now()) times every lease, so workers on machines whose clocks disagree still agree on expiry.
Only this module writes `queue_entry`; runs, environments and cases are still written by `record` alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from packaging.version import Version
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from matrix import expand
from runner import RUNNER_VERSION, record, split
from runner.errors import UvFailed
from runner.results import StepResult, StepStatus
from runner.stop import Stopped
from store.errors import KnowngoodError
from store.models import QueueEntry, Run

if TYPE_CHECKING:
    from runner.run import Context

log = logging.getLogger(__name__)

Items = list[tuple[expand.Environment, tuple[expand.Case, ...]]]
EXPORTS, RUNTIMES = 0, 1  # phases: a runtime environment reads what every export environment stored


class QueueUnavailable(KnowngoodError):
    """`--queue` asked of a database without row locks that skip locked rows (SQLite)."""

    exit_code = 2  # usage: the flag does not fit the database


def worker_id() -> str:
    """Who holds a lease: readable (host and pid, for an operator) and unique (a nonce, for pid reuse)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# -- the plan, stored once ---------------------------------------------------------------------------------------

def _environment(data: dict[str, Any]) -> expand.Environment:
    # JSON gave lists back; the frozen dataclass holds tuples (and tuples of pairs for index and options).
    tuples: dict[str, tuple[Any, ...]] = {
        k: tuple(tuple(v) if isinstance(v, list) else v for v in data[k])
        for k in ("requirements", "extras", "excludes", "index", "overrides", "options") if k in data}
    return expand.Environment(**{**data, **tuples})


def _case(data: dict[str, Any]) -> expand.Case:
    return expand.Case(**data)


def entries(plan: expand.Plan, items: Items) -> list[QueueEntry]:
    """The queue rows of a plan: joint and export environments first, then runtime ones (split and both modes)."""
    rows: list[tuple[int, expand.Environment, dict[str, Any]]] = []
    if plan.spec.mode in ("joint", "both"):
        rows += [(EXPORTS, env, {"cases": [asdict(c) for c in cases]}) for env, cases in items]
    if plan.spec.mode in ("split", "both"):
        cut = expand.split(expand.Plan(plan.spec, plan.corpus_path, plan.corpus_version, tuple(items)))
        rows += [(EXPORTS, env, {"cases": [asdict(c) for c in cases]})
                 for env, cases in split.export_order(cut)]
        wanted = sorted({(c.model, c.exporter, c.opset, c.model_hash) for _, cases in cut.exports for c in cases})
        rows += [(RUNTIMES, env, {"routes": list(routes), "wanted": [list(w) for w in wanted],
                                  "targets": {r: list(expand.targets_of(plan.spec, r)) for r in routes},
                                  "partners": [e for e, r in cut.pairs if r == env.hash]})
                 for env, routes in cut.runtimes]
    return [QueueEntry(phase=phase, position=i, env_hash=env.hash, name=env.id, attempts=0,
                       payload={"environment": asdict(env), **body})
            for i, (phase, env, body) in enumerate(rows)]


def open_or_join(session: Session, plan: expand.Plan, items: Items) -> tuple[Run, bool]:
    """The queued run to work on: an unfinished one of this spec, corpus and runner version, else a new one with
    the plan stored. Returns (run, joined). Concurrent starters serialise on an advisory lock, so one plans."""
    if session.get_bind().dialect.name != "postgresql":
        raise QueueUnavailable("--queue needs a PostgreSQL database (workers claim environments with row locks "
                               "that skip locked rows); with SQLite use --jobs, or --shard I/N across machines")
    # Held to the end of this transaction: the run and all its entries become visible together.
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"queue:{plan.spec.source_hash}"})
    run = session.scalars(
        select(Run).where(Run.spec_hash == plan.spec.source_hash, Run.corpus_version == plan.corpus_version,
                          Run.runner_version == RUNNER_VERSION, Run.status != "finished",
                          select(QueueEntry.id).where(QueueEntry.run_id == Run.id, QueueEntry.done_at.is_(None))
                          .exists())
        .order_by(Run.started_at.desc()).limit(1)
    ).first()
    if run is not None:
        record.resume_run(session, run)  # commits, releasing the lock
        return run, True
    run = record.start_run(session, plan, commit=False)
    session.flush()  # the run row first: entries reference it, and no relationship tells the flush so
    for entry in entries(plan, items):
        entry.run_id = run.id
        session.add(entry)
    session.commit()
    return run, False


def load(session: Session, entry: QueueEntry) -> tuple[expand.Environment, tuple[expand.Case, ...]]:
    """The environment and cases of a claimed entry; a runtime entry's cases are the artifacts its export
    partners stored, known only now that every export entry is done."""
    env = _environment(entry.payload["environment"])
    if env.hash != entry.env_hash:
        raise RuntimeError(f"queue entry {entry.id}: payload of {entry.name} does not hash to {entry.env_hash}")
    if entry.phase == RUNTIMES:
        wanted = {(m, e, int(o), h) for m, e, o, h in entry.payload["wanted"]}
        targets = {r: tuple(t) for r, t in entry.payload.get("targets", {}).items()}
        return env, split.artifact_cases(session, entry.payload["partners"], wanted, tuple(entry.payload["routes"]),
                                         targets)
    return env, tuple(_case(c) for c in entry.payload["cases"])


# -- claims and leases -------------------------------------------------------------------------------------------

def claim(session: Session, run_id: str, worker: str, lease: float, max_retakes: int = 3) -> QueueEntry | None:
    """Take the next open entry whose lease is free or has passed, in the lowest phase with open entries.

    A passed lease means a lost worker (a finished or given-back entry has none). An entry that would be retaken
    more than `max_retakes` times is given up instead (`give_up`), and the next one is taken."""
    open_ = (QueueEntry.run_id == run_id) & QueueEntry.done_at.is_(None)
    lowest = select(func.min(QueueEntry.phase)).where(open_).scalar_subquery()
    while True:
        row = session.execute(
            select(QueueEntry.id, QueueEntry.lease_until.is_not(None), QueueEntry.lost)
            .where(open_, QueueEntry.phase == lowest,
                   or_(QueueEntry.lease_until.is_(None), QueueEntry.lease_until < func.now()))
            .order_by(QueueEntry.position).limit(1)
            # Another worker claiming at this instant has the row locked: take the next one instead of waiting.
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            session.commit()
            return None
        entry_id, lapsed, lost = row
        lost += int(lapsed)
        if lost > max_retakes:
            give_up(session, entry_id, worker, lost)
            continue
        session.execute(update(QueueEntry).where(QueueEntry.id == entry_id).values(
            worker=worker, claimed_at=func.now(), lease_until=func.now() + dt.timedelta(seconds=lease),
            attempts=QueueEntry.attempts + 1, lost=lost))
        session.commit()
        return session.get_one(QueueEntry, entry_id, populate_existing=True)


def give_up(session: Session, entry_id: int, worker: str, lost: int) -> None:
    """Record an environment on which `lost` workers were lost as a crash, `WorkerLost(N times)`, and close its entry.

    Cases run in plan order and recorded ones are skipped on a retake, so every lost worker was most likely in the
    first case not recorded: that case is the crash (the rest are left to a later run, which skips it). A worker
    lost before the environment was installed (e.g. uv killed in an install) leaves no case to blame: the
    environment row is marked `worker-lost`. Called with the entry's row lock held; recording is idempotent, so a
    second worker giving up the same entry at once adds nothing."""
    entry = session.get_one(QueueEntry, entry_id, populate_existing=True)
    message = (f"the queue worker running {entry.name} was lost {lost} times: its lease passed without the entry "
               f"being finished or given back (the process was killed, e.g. by the OOM killer, or its machine went "
               f"away); given up after {lost - 1} retakes (KNOWNGOOD_QUEUE_MAX_RETAKES)")
    log.warning("queue: %s", message)
    env_row = record.stored_lock(session, entry.env_hash)
    blamed = None
    if env_row is not None and env_row.status == "installed":
        _, cases = load(session, entry)
        done = record.recorded(session, env_row)
        blamed = next((c for c in cases if record.natural_key(c) not in done), None)
        if blamed is not None:
            step = StepResult(case=blamed.key, step="worker", ordinal=0, status=StepStatus.crash,
                              error_type="WorkerLost", message=message, details={"times": lost})
            run = session.get_one(Run, entry.run_id)
            record.save_case(session, run, env_row, blamed, run.corpus_version, [step])
    elif env_row is not None:
        record.worker_lost(session, env_row, message, f"WorkerLost({lost} times)")
    session.execute(update(QueueEntry).where(QueueEntry.id == entry_id).values(
        worker=worker, lost=lost, done_at=func.now(), lease_until=None))
    record.entry_given_up(session, entry.run_id, entry.name, lost, blamed.key if blamed else None)


def renew(session: Session, ids: list[int], worker: str, lease: float) -> set[int]:
    """Extend this worker's leases; returns the ids it no longer holds (retaken after a stall)."""
    if not ids:
        return set()
    held = set(session.scalars(
        update(QueueEntry).where(QueueEntry.id.in_(ids), QueueEntry.worker == worker, QueueEntry.done_at.is_(None))
        .values(lease_until=func.now() + dt.timedelta(seconds=lease)).returning(QueueEntry.id)))
    session.commit()
    return set(ids) - held


def finish(session: Session, entry_id: int) -> None:
    session.execute(update(QueueEntry).where(QueueEntry.id == entry_id)
                    .values(done_at=func.now(), lease_until=None))
    session.commit()


def release(session: Session, entry_id: int, worker: str) -> None:
    """Give an entry back at once (a stop, an error): the next worker need not wait for the lease to pass."""
    session.execute(update(QueueEntry).where(QueueEntry.id == entry_id, QueueEntry.worker == worker)
                    .values(lease_until=None))
    session.commit()


def drained(session: Session, run_id: str) -> bool:
    return not session.scalar(select(QueueEntry.id).where(QueueEntry.run_id == run_id,
                                                          QueueEntry.done_at.is_(None)).limit(1))


def others_working(session: Session, run_id: str, worker: str) -> bool:
    """Whether another worker holds a live lease on this run."""
    return bool(session.scalar(select(QueueEntry.id).where(
        QueueEntry.run_id == run_id, QueueEntry.done_at.is_(None), QueueEntry.worker != worker,
        QueueEntry.lease_until > func.now()).limit(1)))


def totals(session: Session, run_id: str) -> tuple[int, int]:
    """Environments and (planned, non-runtime) cases of a queued run, for the progress display."""
    payloads = session.scalars(select(QueueEntry.payload).where(QueueEntry.run_id == run_id)).all()
    return len(payloads), sum(len(p.get("cases", ())) for p in payloads)


def busy_releases(session: Session, run_id: str) -> set[Version]:
    """Torch releases that an unfinished joint or export entry of this run still holds (or is yet to install)."""
    envs = session.scalars(select(QueueEntry.payload["environment"]).where(
        QueueEntry.run_id == run_id, QueueEntry.phase == EXPORTS, QueueEntry.done_at.is_(None)))
    return {t for t in (split.torch_release(_environment(e)) for e in envs) if t is not None}


class Pruner:
    """limits.prune-cache on a queue: the torch builds of the export environments this process ran leave uv's cache
    once no export or joint entry of their torch release is unfinished, whichever worker finishes it last.

    Each process prunes its own cache (workers on other machines have their own), and only releases it ran. Being
    finished is permanent, so a process that ran a release but did not finish its last entry prunes it at its next
    check; no lock between workers is needed."""

    def __init__(self, drop: Callable[[list[str]], None]) -> None:
        self.drop = drop
        self.ran: dict[Version, set[str]] = {}
        self.lock = threading.Lock()

    def done(self, entry: QueueEntry) -> None:
        """An entry this process finished: remember the torch release of an export environment."""
        env = _environment(entry.payload["environment"])
        release = split.torch_release(env)
        if env.kind == "export" and release is not None:
            with self.lock:
                self.ran.setdefault(release, set()).add(env.hash)

    def check(self, session: Session, run_id: str) -> None:
        """Drop the builds of releases this process ran whose entries are all finished now."""
        with self.lock:
            if not self.ran:
                return
        busy = busy_releases(session, run_id)
        session.commit()  # no transaction left open while uv works
        with self.lock:
            ready = {release: self.ran.pop(release) for release in list(self.ran) if release not in busy}
        for release, hashes in sorted(ready.items(), reverse=True):
            log.info("queue: torch %s: every export environment is finished; pruning its build", release)
            try:
                self.drop(sorted(hashes))
            except UvFailed as exc:  # a cache left full is no result, and no reason to stop the worker
                log.warning("queue: pruning torch %s from uv's cache failed: %s", release, exc)


class Heartbeat:
    """A thread renewing the leases this process holds, every third of the lease."""

    def __init__(self, Session: sessionmaker[Session], worker: str, lease: float) -> None:
        self.Session, self.worker, self.lease = Session, worker, lease
        self.held: set[int] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="queue-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def hold(self, entry_id: int) -> None:
        with self.lock:
            self.held.add(entry_id)

    def drop(self, entry_id: int) -> None:
        with self.lock:
            self.held.discard(entry_id)

    def _beat(self) -> None:
        while not self.done.wait(self.lease / 3):
            with self.lock:
                ids = sorted(self.held)
            try:
                with self.Session() as session:
                    lost = renew(session, ids, self.worker, self.lease)
            except Exception as exc:  # the database may come back before the lease passes: keep trying
                log.warning("queue: could not renew leases: %s", exc)
                continue
            for entry_id in lost:
                # Another worker took it after we failed to renew in time: both finish it; recording is idempotent.
                log.warning("queue: lease on entry %s was retaken by another worker", entry_id)


# -- the work loop -----------------------------------------------------------------------------------------------

def work(ctx: Context, worker: str, process: Callable[[Context, expand.Environment, tuple[expand.Case, ...]], None],
         ) -> None:
    """Claim and process entries until the queue is drained, or a stop is asked for (raises `Stopped`).

    With --jobs N, N claim loops share this process's heartbeat. A worker with nothing to claim while others
    hold leases waits: one of them may die, and its entry must then be retaken."""
    lease, poll = ctx.settings.queue_lease, ctx.settings.queue_poll
    pruner = Pruner(lambda hashes: split.drop_torch_build(ctx, hashes)) if ctx.plan.spec.limits.prune_cache else None
    with Heartbeat(ctx.Session, worker, lease) as heart:
        if ctx.settings.jobs == 1:
            _loop(ctx, worker, heart, process, poll, pruner)
        else:
            errors: list[BaseException] = []
            threads = [threading.Thread(target=_guarded,
                                        args=(errors, _loop, ctx, worker, heart, process, poll, pruner),
                                        name=f"queue-{i}") for i in range(ctx.settings.jobs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]


def _guarded(errors: list[BaseException], fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # handed to the main thread, which re-raises the first
        errors.append(exc)


def _loop(ctx: Context, worker: str, heart: Heartbeat,
          process: Callable[[Context, expand.Environment, tuple[expand.Case, ...]], None], poll: float,
          pruner: Pruner | None = None) -> None:
    while True:
        ctx.stopping.check()
        with ctx.Session() as session:
            if pruner:  # before claiming: releases other workers finished since this one's last entry
                pruner.check(session, ctx.run_id)
            entry = claim(session, ctx.run_id, worker, ctx.settings.queue_lease, ctx.settings.queue_max_retakes)
            if entry is None:
                if drained(session, ctx.run_id):
                    return
                if ctx.stopping.event.wait(poll):
                    raise Stopped(ctx.stopping.name)
                continue
            heart.hold(entry.id)
            try:
                env, cases = load(session, entry)
                session.commit()  # no transaction left open (idle) on this connection while the environment runs
                ctx.progress.console.print(f"[dim]queue: {entry.name} (attempt {entry.attempts})[/]")
                process(ctx, env, cases)
            except BaseException:
                release(session, entry.id, worker)
                raise
            finally:
                heart.drop(entry.id)
            finish(session, entry.id)
            if pruner:
                pruner.done(entry)
                pruner.check(session, ctx.run_id)
