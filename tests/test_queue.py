"""The work queue on a throwaway PostgreSQL: claims skip locked rows, leases pass and are retaken, runtime
environments wait for every export, and four real workers with one SIGKILLed record every planned case once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.version import Version
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session

from matrix import expand, spec
from runner import pythons, queue, record, split, uv
from runner.results import StepResult, StepStatus
from store.db import make_engine, make_sessionmaker
from store.models import Case, Environment, Package, QueueEntry, Run
from store.settings import Settings

ROOT = Path(__file__).parents[1]
SLEEPY = ROOT / "tests" / "fixtures" / "corpus" / "sleepy.py"
LEASE = 3.0  # seconds: short, so the killed worker's environment is retaken soon
WORKERS = 4


@pytest.fixture
def pg(fresh_db: Callable[[str], str]) -> Iterator[str]:
    yield fresh_db("postgresql")


@contextlib.contextmanager
def _session(url: str) -> Iterator[Session]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _plan(tmp_path: Path, body: str) -> tuple[expand.Plan, queue.Items]:
    path = tmp_path / "q.toml"
    path.write_text(body)
    plan = expand.plan(spec.load(path))
    return plan, list(plan.items)


JOINT = f"""\
name = "queued"
models = ["nap1", "nap2", "nap3"]
routes = ["onnxruntime"]
corpus = "{SLEEPY}"
exclude-newer = "2025-01-01"

[axes]
python = ["3.11"]
six = ["==1.16.0", "==1.17.0"]
packaging = ["==24.1", "==24.2"]
"""


def test_claims_skip_locked_rows_and_leases_pass_to_the_next_worker(pg: str, tmp_path: Path) -> None:
    plan, items = _plan(tmp_path, JOINT)
    with _session(pg) as s:
        run, joined = queue.open_or_join(s, plan, items)
        assert not joined
        again, joined = queue.open_or_join(s, plan, items)  # a second starter joins instead of planning again
        assert joined and again.id == run.id
        assert len(s.scalars(select(QueueEntry)).all()) == 4

    with _session(pg) as a, _session(pg) as b, _session(pg) as c:
        # A transaction holding the first entry's row lock: claims skip it instead of waiting for it.
        first = a.scalars(select(QueueEntry).order_by(QueueEntry.position).limit(1).with_for_update()).one()
        taken = queue.claim(b, run.id, "B", lease=60)
        assert taken is not None and taken.position == 1
        a.commit()
        got_a = queue.claim(a, run.id, "A", lease=0.5)
        assert got_a is not None and got_a.id == first.id
        time.sleep(1.0)  # A stops renewing: its lease passes
        got_c = queue.claim(c, run.id, "C", lease=60)
        assert got_c is not None and got_c.id == first.id and got_c.attempts == 2 and got_c.worker == "C"
        assert queue.renew(a, [first.id], "A", lease=60) == {first.id}  # A learns it lost the entry
        assert queue.renew(b, [taken.id], "B", lease=60) == set()
        for entry_id in (first.id, taken.id):
            queue.finish(c, entry_id)
        rest = [queue.claim(c, run.id, "C", lease=60) for _ in range(3)]
        assert [e.position for e in rest if e] == [2, 3] and rest[2] is None
        assert not queue.drained(c, run.id)
        for e in rest[:2]:
            assert e is not None
            queue.finish(c, e.id)
        assert queue.drained(c, run.id)


SPLIT = """\
name = "queued-split"
mode = "split"
models = ["resnet"]
routes = ["onnxruntime"]
exclude-newer = "2025-01-01"

[axes]
python = ["3.11"]
torch = ["==2.4.1", "==2.5.1"]
onnx = ["==1.17.0"]
onnxruntime = ["==1.19.2", "==1.20.1"]
"""


def test_runtime_environments_wait_until_every_export_is_done(pg: str, tmp_path: Path) -> None:
    plan, items = _plan(tmp_path, SPLIT)
    with _session(pg) as s:
        run, _ = queue.open_or_join(s, plan, items)
        rows = s.scalars(select(QueueEntry).order_by(QueueEntry.position)).all()
        assert [(r.phase, r.name.rsplit("-", 1)[-1]) for r in rows] == [(0, "export")] * 2 + [(1, "runtime")] * 2
        assert "torch2.5.1" in rows[0].name  # newest torch first, as in a split run
        exports = [queue.claim(s, run.id, "A", lease=60), queue.claim(s, run.id, "B", lease=60)]
        assert queue.claim(s, run.id, "C", lease=60) is None  # runtimes wait for both exports
        assert exports[0] is not None and exports[1] is not None
        queue.finish(s, exports[0].id)
        assert queue.claim(s, run.id, "C", lease=60) is None
        queue.finish(s, exports[1].id)
        runtime = queue.claim(s, run.id, "C", lease=60)
        assert runtime is not None and runtime.phase == 1
        env, cases = queue.load(s, runtime)
        assert env.kind == "runtime" and cases == ()  # no export stored an artifact here
        assert sorted(runtime.payload["partners"]) == sorted(e.env_hash for e in exports)


def test_queue_refuses_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text(JOINT)
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(path), "--queue", "--db",
                           f"sqlite:///{tmp_path / 'kg.db'}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--queue needs a PostgreSQL database" in proc.stderr


def _entries(url: str) -> list[QueueEntry]:
    with _session(url) as s:
        return list(s.scalars(select(QueueEntry).order_by(QueueEntry.position)))


def _recorded(url: str) -> Counter[tuple[str, str]]:
    with _session(url) as s:
        rows = s.execute(select(Environment.name, Case.model).join(Case, Case.environment_id == Environment.id))
        return Counter((name, model) for name, model in rows)


def test_four_workers_one_killed_record_every_case_once(pg: str, tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text(JOINT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWNGOOD_")}
    env.update(KNOWNGOOD_ENV_ROOT=str(tmp_path / "envs"), KNOWNGOOD_WORK_ROOT=str(tmp_path / "work"),
               KNOWNGOOD_QUEUE_LEASE=str(LEASE), KNOWNGOOD_QUEUE_POLL="0.5")
    argv = [sys.executable, "-m", "knowngood", "run", str(path), "--queue", "--db", pg]
    started = time.monotonic()
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(WORKERS)]
    try:
        # The victim: a worker holding an environment of which at least one case is recorded, but not all.
        deadline = time.monotonic() + 240
        victim = None
        while victim is None:
            assert time.monotonic() < deadline, "no worker got half-way through an environment"
            done = Counter(name for name, _ in _recorded(pg))
            for e in _entries(pg):
                if e.done_at is None and e.worker and 0 < done[e.name] < 3:
                    victim = e
                    break
            else:
                time.sleep(0.1)
        pid = int(str(victim.worker).split(":")[1])
        (proc,) = [p for p in procs if p.pid == pid]
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.communicate()
        lease_at_kill = next(e for e in _entries(pg) if e.id == victim.id).lease_until
        results = [(p, *p.communicate(timeout=300)) for p in procs if p is not proc]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    took = time.monotonic() - started
    for p, _out, err in results:
        assert p.returncode == 0, err[-3000:]

    planned = Counter((e.id, c.model) for e, cases in expand.plan(spec.load(path)).items for c in cases)
    assert _recorded(pg) == planned  # every planned case, each exactly once
    entries = _entries(pg)
    assert all(e.done_at is not None for e in entries)
    retaken = next(e for e in entries if e.id == victim.id)
    assert retaken.attempts == 2 and retaken.worker != victim.worker
    assert lease_at_kill is not None and retaken.claimed_at is not None
    assert retaken.claimed_at >= lease_at_kill  # only once the dead worker's lease had passed
    assert sum(e.attempts for e in entries) == len(entries) + 1  # no other environment was taken twice
    with _session(pg) as s:
        (run,) = s.scalars(select(Run)).all()  # every worker worked on the one planned run
        assert run.status == "finished" and len(run.counts["workers"]) == WORKERS - 1
    summaries = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    print(f"4 workers, one SIGKILLed after {killed - started:.1f} s; its environment retaken "
          f"{(retaken.claimed_at - lease_at_kill).total_seconds():.1f} s after its lease ended; all done in "
          f"{took:.1f} s; cases per surviving worker: {[sum(s['cases'].values()) for s in summaries]}")


def test_a_stopped_worker_gives_its_environment_back_and_the_queue_resumes(pg: str, tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text(JOINT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWNGOOD_")}
    env.update(KNOWNGOOD_ENV_ROOT=str(tmp_path / "envs"), KNOWNGOOD_WORK_ROOT=str(tmp_path / "work"),
               KNOWNGOOD_QUEUE_LEASE="60", KNOWNGOOD_STOP_GRACE="10")
    argv = [sys.executable, "-m", "knowngood", "run", str(path), "--queue", "--db", pg]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not _recorded(pg):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert time.monotonic() - signalled < 10
    (held,) = [e for e in _entries(pg) if e.attempts]
    assert held.done_at is None and held.lease_until is None  # given back: nobody waits out a 60 s lease
    with _session(pg) as s:
        assert s.scalars(select(Run.status)).one() == "interrupted"
    run_id = json.loads(out.strip().splitlines()[-1])["run"]

    again = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["run"] == run_id  # joined, not planned again
    planned = Counter((e.id, c.model) for e, cases in expand.plan(spec.load(path)).items for c in cases)
    assert _recorded(pg) == planned
    with _session(pg) as s:
        assert s.scalars(select(Run.status)).one() == "finished"


def test_one_worker_with_two_jobs_drains_the_queue(pg: str, tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text(JOINT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWNGOOD_")}
    env.update(KNOWNGOOD_ENV_ROOT=str(tmp_path / "envs"), KNOWNGOOD_WORK_ROOT=str(tmp_path / "work"))
    proc = subprocess.run([sys.executable, "-m", "knowngood", "run", str(path), "--queue", "--jobs", "2", "--db", pg],
                          cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = Counter((e.id, c.model) for e, cases in expand.plan(spec.load(path)).items for c in cases)
    assert _recorded(pg) == planned
    entries = _entries(pg)
    assert [e.attempts for e in entries] == [1] * 4
    # two claim loops: the second environment was claimed before the first was done
    assert entries[1].claimed_at is not None and entries[0].done_at is not None
    assert entries[1].claimed_at < entries[0].done_at


# -- bounded retakes ---------------------------------------------------------------------------------------------

def _env_row(s: Session, entry: QueueEntry, status: str) -> Environment:
    """The environment row a worker leaves once it resolved (`resolved`) or installed (`installed`) an entry."""
    env = queue._environment(entry.payload["environment"])
    row = Environment(hash=env.hash, name=env.id, python=env.python, requirements=list(env.all_requirements),
                      index_url=env.index_url, cutoff=env.cutoff, status=status, kind=env.kind, memory={})
    s.add(row)
    s.commit()
    return row


def test_retakes_are_bounded_and_the_environment_is_recorded_as_a_crash(pg: str, tmp_path: Path) -> None:
    plan, items = _plan(tmp_path, JOINT)
    lease, retakes = 0.3, 2
    with _session(pg) as s:
        run, _ = queue.open_or_join(s, plan, items)
        first = queue.claim(s, run.id, "W0", lease, retakes)
        assert first is not None
        queue.release(s, first.id, "W0")  # given back (a stop): not a lost worker
        taken = queue.claim(s, run.id, "W1", lease, retakes)
        assert taken is not None and taken.id == first.id and (taken.attempts, taken.lost) == (2, 0)
        # The worker installed the environment and recorded its first case; then every worker dies in the second.
        env_row = _env_row(s, taken, "installed")
        _, cases = queue.load(s, taken)
        ok = StepResult(case=cases[0].key, step="export", ordinal=0, status=StepStatus.fail, error_type="E",
                        message="toy")
        assert record.save_case(s, s.get_one(Run, run.id), env_row, cases[0], plan.corpus_version, [ok])
        for lost in range(1, retakes + 1):
            time.sleep(lease + 0.2)  # the lease passes: the worker holding it is lost
            s.commit()  # now() is the transaction's start: begin a new one, as each claim loop does
            again = queue.claim(s, run.id, f"W{lost + 1}", lease, retakes)
            assert again is not None and again.id == first.id and again.lost == lost  # retaken
        time.sleep(lease + 0.2)
        s.commit()
        nxt = queue.claim(s, run.id, "W9", lease, retakes)  # one loss too many: given up, and the next one taken
        assert nxt is not None and nxt.id != first.id and nxt.position == 1
        closed = s.get_one(QueueEntry, first.id, populate_existing=True)
        assert closed.done_at is not None and (closed.lost, closed.attempts) == (retakes + 1, retakes + 2)
        recorded = {c.model: c for c in s.scalars(select(Case).where(Case.environment_id == env_row.id))}
        assert sorted(recorded) == [cases[0].model, cases[1].model]  # the rest is left for a later run
        crash = recorded[cases[1].model]
        assert (crash.status, crash.signature) == ("crash", f"WorkerLost({retakes + 1} times)")
        assert [(st.name, st.status, st.error_type) for st in crash.steps] == [("worker", "crash", "WorkerLost")]
        assert "lost 3 times" in (crash.steps[0].message or "")

        # Lost before its install finished: no case to blame, the environment row says so.
        resolved = _env_row(s, nxt, "resolved")
        for _ in range(retakes + 1):
            time.sleep(lease + 0.2)
            s.commit()
            queue.claim(s, run.id, "W", lease, retakes)
        s.refresh(resolved)
        assert (resolved.status, resolved.signature) == ("worker-lost", f"WorkerLost({retakes + 1} times)")
        given_up = s.get_one(Run, run.id, populate_existing=True).counts["given_up"]
        assert given_up == {first.name: {"lost": 3, "case": cases[1].key}, nxt.name: {"lost": 3, "case": None}}


KILLER = """\
import os
import signal
import time


class Toy:
    atol = rtol = 0.0
    tolerance_reason = "toy"
    expected = None

    def __init__(self, name, kill):
        self.name, self.kill = name, kill

    def unavailable(self):
        return None

    def build(self):
        if self.kill:  # what the OOM killer does to a runner whose case allocates too much: its parent goes
            time.sleep(3)  # allocating takes a while: the runner has recorded `first` by then, even under load
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(30)
        raise RuntimeError("toy model %s refuses to build" % self.name)

    def examples(self):
        return []

    def export_kwargs(self, exporter, opset):
        return {}


MODELS = {"first": Toy("first", False), "killer": Toy("killer", True), "last": Toy("last", False)}
"""


def test_an_environment_that_kills_every_worker_is_given_up(pg: str, tmp_path: Path) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    path = tmp_path / "k.toml"
    path.write_text(f'name = "killer"\nmodels = ["first", "killer", "last"]\nroutes = ["onnxruntime"]\n'
                    f'corpus = "{tmp_path / "killer.py"}"\nexclude-newer = "2025-01-01"\n\n'
                    f'[axes]\npython = ["3.11"]\nsix = ["==1.17.0"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWNGOOD_")}
    env.update(KNOWNGOOD_ENV_ROOT=str(tmp_path / "envs"), KNOWNGOOD_WORK_ROOT=str(tmp_path / "work"),
               KNOWNGOOD_QUEUE_LEASE="1.5", KNOWNGOOD_QUEUE_POLL="0.3", KNOWNGOOD_QUEUE_MAX_RETAKES="1")
    argv = [sys.executable, "-m", "knowngood", "run", str(path), "--queue", "--db", pg]
    codes = []
    for _ in range(3):  # one worker after another: the first two die in `killer`, the third gives it up
        proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0], proc.stderr[-3000:]
    with _session(pg) as s:
        cases = {c.model: (c.status, c.signature) for c in s.scalars(select(Case))}
        (entry,) = s.scalars(select(QueueEntry)).all()
        (run,) = s.scalars(select(Run)).all()
    assert cases == {"first": ("fail", cases["first"][1]), "killer": ("crash", "WorkerLost(2 times)")}
    assert (entry.attempts, entry.lost) == (2, 2) and entry.done_at is not None
    assert run.status == "finished" and run.counts["given_up"][entry.name]["lost"] == 2
    assert run.counts["given_up"][entry.name]["case"].startswith("killer.")


# -- limits.prune-cache ------------------------------------------------------------------------------------------

PRUNED = SPLIT.replace('onnx = ["==1.17.0"]', 'onnx = ["==1.16.2", "==1.17.0"]') + "\n[limits]\nprune-cache = true\n"


def _claim(s: Session, run_id: str, worker: str) -> QueueEntry:
    s.commit()
    entry = queue.claim(s, run_id, worker, lease=60)
    assert entry is not None
    return entry


def _done(s: Session, run_id: str, entry: QueueEntry, pruner: queue.Pruner) -> None:
    """The end of a worker's pass (runner/queue.py _loop): finish the entry, then the pruner's check."""
    queue.finish(s, entry.id)
    pruner.done(entry)
    pruner.check(s, run_id)


def test_a_torch_build_is_pruned_once_its_last_export_entry_is_done_whichever_worker_ran_it(
    pg: str, tmp_path: Path,
) -> None:
    plan, items = _plan(tmp_path, PRUNED)
    assert plan.spec.limits.prune_cache
    dropped: dict[str, list[list[str]]] = {"A": [], "B": []}
    pa, pb = queue.Pruner(dropped["A"].append), queue.Pruner(dropped["B"].append)
    with _session(pg) as s:
        run, _ = queue.open_or_join(s, plan, items)
        exports = [e for e in _entries(pg) if e.phase == queue.EXPORTS]
        assert [("torch2.5.1" in e.name, "torch2.4.1" in e.name) for e in exports] == [(True, False)] * 2 + [
            (False, True)] * 2  # newest torch first, grouped: a release is finished before the next is started
        a1, b1 = _claim(s, run.id, "A"), _claim(s, run.id, "B")
        assert queue.busy_releases(s, run.id) == {Version("2.5.1"), Version("2.4.1")}
        _done(s, run.id, a1, pa)
        assert dropped == {"A": [], "B": []}  # B still works on 2.5.1
        a2 = _claim(s, run.id, "A")  # A goes on to 2.4.1
        assert "torch2.4.1" in a2.name
        _done(s, run.id, b1, pb)  # B finishes 2.5.1's last entry: B drops what it ran of it at once ...
        assert dropped == {"A": [], "B": [[b1.env_hash]]}
        pa.check(s, run.id)  # ... and A at its next check (it ran 2.5.1 too, into its own cache)
        assert dropped == {"A": [[a1.env_hash]], "B": [[b1.env_hash]]}
        b2 = _claim(s, run.id, "B")
        _done(s, run.id, a2, pa)
        _done(s, run.id, b2, pb)
        pa.check(s, run.id)
        assert dropped == {"A": [[a1.env_hash], [a2.env_hash]], "B": [[b1.env_hash], [b2.env_hash]]}
        assert queue.busy_releases(s, run.id) == set()
        runtime = _claim(s, run.id, "A")
        assert runtime.phase == queue.RUNTIMES
        _done(s, run.id, runtime, pa)  # runtime environments hold no torch: nothing more to drop
        assert len(dropped["A"]) == 2


def test_queue_prune_removes_the_torch_build_from_a_real_uv_cache(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue's drop on a real uv cache: `nvidia-ml-py` stands in for a CUDA torch build (same name pattern,
    40 kB); `six` is not a torch build and stays; the venv linked from the cache keeps its files."""
    cache = tmp_path / "uv-cache"
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    exe, _ = pythons.find("3.11")
    venv = tmp_path / "venv"
    uv.venv(venv, exe)
    lock = uv.compile(exe, ["nvidia-ml-py==12.560.30", "six==1.17.0"])
    assert isinstance(lock, uv.Lock)
    uv.sync(venv, lock)

    def cached(name: str) -> bool:
        return any(name in p.name for p in cache.rglob("*") if p.is_dir())

    plan, items = _plan(tmp_path, PRUNED)
    engine = make_engine(pg)
    ctx = SimpleNamespace(Session=make_sessionmaker(engine), settings=Settings(database_url=pg),
                          progress=SimpleNamespace(console=Console(file=io.StringIO())), cache=uv.CacheLock())
    pa = queue.Pruner(lambda hashes: split.drop_torch_build(ctx, hashes))  # type: ignore[arg-type]
    pb = queue.Pruner(lambda hashes: split.drop_torch_build(ctx, hashes))  # type: ignore[arg-type]
    try:
        with _session(pg) as s:
            run, _ = queue.open_or_join(s, plan, items)
            a1, b1 = _claim(s, run.id, "A"), _claim(s, run.id, "B")
            for entry in (a1, b1):  # what the workers recorded: the environments' pins
                row = _env_row(s, entry, "installed")
                row.packages = [Package(name=p.name, version=p.version, hashes=[]) for p in lock.pins]
                s.commit()
            _done(s, run.id, a1, pa)
            assert cached("nvidia_ml_py") and cached("six")  # the other export environment of 2.5.1 is open
            _done(s, run.id, b1, pb)
            assert not cached("nvidia_ml_py") and cached("six")
            pa.check(s, run.id)  # A's turn: already gone, and uv says so without failing
    finally:
        engine.dispose()
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import pynvml, six; print(six.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.17.0"
