"""API latency and throughput over 10k and 1M step rows in PostgreSQL, against hello-world in the same run.

    uv run python bench/api.py                      # 10k and 1,000,000 steps, 5 s per measurement
    uv run python bench/api.py --rows 10000 200000  # quicker

A throwaway PostgreSQL cluster (initdb/pg_ctl, as the tests do) is migrated to 0007 and filled through SQLAlchemy
core insert() with schema-valid rows: environments (15% unresolvable), 100 pinned packages each with a hashed lock,
and for each resolved environment 20 models × every route × every exporter as cases, with their steps. Then it is
upgraded to head, so the outcome table (0008) is backfilled from those cases as in a deployment, and the time is
printed. Each app runs under uvicorn in server processes of its own (--workers, default 2); the load comes from
`wrk` (apt-get install wrk), a separate process, over loopback. Three loads per database:

- cache hits: /chains and /lockfile over 30 URLs, each primed until every server process holds its answer. The
  response cache answers them before routing, so they measure the cache, not the store.
- uncached /chains: the response cache off, and every request a distinct query (models, route, python, require,
  exporter) that no earlier request asked, so neither the response cache nor a warmed plan answers it. Before
  them each server process holds the per-version index a running server holds (api/verdicts.py MeasuredIndex):
  grown by one plain question per route, model and exporter (index_questions), asked of every process and never
  measured. What growing it costs is the row below, the first answer after a write.
- POST /check: distinct realistic requirements.txt bodies (a measured environment's hashed lock, some with one
  pin moved, 1-3 models, every route the file pins or one named), response cache off.
- the first answer after a write: a committed write moves the data version, and the server process that answers
  next reads the routes it needs again (the per-version index of api/verdicts.py). Twenty times per endpoint, one
  request after each write: the cost a client meets right after new results are recorded or ingested.

Each is measured at saturation (as fast as wrk can go: p99 there is mostly queueing behind the other connections)
and paced below it (--pace, a fraction of the saturated rate): the latency a client sees at a load the server
keeps up with. A paced row is named by the rate it achieved, with the rate asked for beside it where they differ,
and a warning is printed where it came within 80% of saturation. An uncached load is paced --repeats times (3), each
run with questions of its own and printed: a run's p99 is its slowest few dozen answers, and POST /check's moved from
4.6 to 6.4 ms between runs a minute apart on this machine. Its row holds the median of each figure. The issue 14
targets are judged on those rows at the largest size and printed as met or missed; nothing is asserted. The
machine's load average is printed beside them: figures are noisy when other work shares the cores, which is why
every row is also given as a ratio to hello-world measured alongside.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine, insert, text

sys.path.insert(0, str(Path(__file__).parents[1]))

from api.app import create_app
from matrix.routes import EXPORTERS, ROUTES
from store import migrate
from store.db import make_engine
from store.models import Case, Environment, Package, Run, Step
from store.settings import Settings
from tests.pgcluster import free_port, throwaway_cluster

ROOT = Path(__file__).parents[1]

# The apps uvicorn imports in its worker processes (--factory).


def app_factory() -> FastAPI:
    return create_app(Settings())  # KNOWNGOOD_DATABASE_URL and KNOWNGOOD_RESPONSE_CACHE_SIZE from the environment


def hello_factory() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"message": "Hello World"}

    return app


# A throwaway PostgreSQL, as tests/conftest.py starts it.


def postgres() -> contextlib.AbstractContextManager[str]:
    return throwaway_cluster(prefix="knowngood-bench-pg-")


def create_database(server: str, name: str, revision: str = "head") -> str:
    admin = make_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = f"{server}/{name}"
    migrate.upgrade(url, revision)
    return url


# Filled at the revision before the outcome table, then upgraded: the backfill runs over every row, as it would
# on a deployment's database.
FILL_REVISION = "0008"


def upgrade_filled(url: str) -> float:
    """Upgrade a filled database to head (the outcome backfill); seconds taken. Then fresh statistics and
    visibility maps, as autovacuum would give."""
    start = time.perf_counter()
    migrate.upgrade(url)
    seconds = time.perf_counter() - start
    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return seconds


# Schema-valid content, shaped like a nightly matrix.

MODELS = ("resnet", "transformer", "grid_sample", "control_flow", "batchnorm", "custom_op", "mobilenet", "vit",
          "lstm", "gru", "unet", "yolo_head", "bert_tiny", "gpt_tiny", "deformable", "roi_align", "nms", "einsum",
          "layernorm", "attention_mask")
AXES = {
    "python": ("3.9", "3.10", "3.11", "3.12", "3.13"),
    "torch": ("2.0.1", "2.1.2", "2.2.2", "2.3.1", "2.4.1", "2.5.1", "2.6.0", "2.7.1", "2.8.0", "2.9.1"),
    "tensorflow": ("2.13.1", "2.14.1", "2.15.1", "2.16.2", "2.17.1", "2.18.1", "2.19.1", "2.20.0"),
    "onnx": ("1.14.1", "1.15.0", "1.16.2", "1.17.0", "1.18.0", "1.19.1"),
    "onnxruntime": ("1.15.1", "1.16.3", "1.17.3", "1.18.1", "1.19.2", "1.20.1", "1.21.1", "1.22.1", "1.23.2"),
}
SIGNATURES = ("UnsupportedOperator(aten::grid_sampler_2d)", "UnsupportedOperator(aten::roi_align)",
              "ParityExceeded(input=1)", "ParityExceeded(input=0)", "ConversionError(Einsum)", "Crash(SIGSEGV)",
              "Timeout(convert)", "OutOfMemory", "IRVersionTooNew", "ProtobufIncompatible",
              "ModuleNotFound(tensorflow_addons)", "ShapeInferenceError(Reshape)")
STEPS_PER_ENV = sum(len(ROUTES[r]) for r in ROUTES) * len(MODELS) * len(EXPORTERS)


@dataclass
class Filled:
    environments: int
    cases: int
    steps: int
    seconds: float


def fill(engine: Engine, steps_wanted: int, seed: int = 0) -> Filled:
    """Insert runs, environments (15% unresolvable), packages, cases and steps until `steps_wanted` steps exist."""
    rng = random.Random(seed)
    start = time.perf_counter()
    resolved_envs = max(1, round(steps_wanted / STEPS_PER_ENV))
    combos: set[tuple[str, ...]] = set()
    while len(combos) < resolved_envs + resolved_envs * 15 // 85:
        combos.add(tuple(rng.choice(values) for values in AXES.values()))
    filler = [f"dep-{i:03d}" for i in range(92)]
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    runs: list[dict[str, Any]] = [
        {"id": f"00000000-0000-4000-8000-{i:012d}", "spec_name": "nightly", "spec_hash": "0" * 64,
         "runner_version": "0.1.0", "corpus_version": "c1", "host": "bench", "cutoff": "2026-11-01",
         "started_at": now + dt.timedelta(days=i), "finished_at": now + dt.timedelta(days=i, hours=5),
         "status": "finished", "counts": {}} for i in range(30)
    ]
    envs: list[dict[str, Any]] = []
    packages: list[dict[str, Any]] = []
    cases: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    counts = {"environments": 0, "cases": 0, "steps": 0}
    conn = engine.connect()
    conn.execute(insert(Run), runs)

    def flush() -> None:
        # Parents before children; batches keep memory flat at a million rows.
        for table, rows in ((Environment, envs), (Package, packages), (Case, cases), (Step, steps)):
            for i in range(0, len(rows), 20_000):
                conn.execute(insert(table), rows[i: i + 20_000])
        counts["environments"] += len(envs)
        counts["cases"] += len(cases)
        counts["steps"] += len(steps)
        for rows in (envs, packages, cases, steps):
            rows.clear()

    case_id = step_id = 0
    for env_id, (python, torch, tf, onnx, ort) in enumerate(sorted(combos), start=1):
        tf_name = "tensorflow-cpu" if env_id % 2 else "tensorflow"
        requirements = [f"torch=={torch}", f"{tf_name}=={tf}", f"onnx=={onnx}", f"onnxruntime=={ort}", "onnx2tf",
                        "onnx-tf"]
        name = f"py{python}-torch{torch}-{tf_name}{tf}-onnx{onnx}-ort{ort}"
        env_hash = hashlib.sha256(name.encode()).hexdigest()
        row: dict[str, Any] = {
            "id": env_id, "hash": env_hash, "name": name, "python": python, "python_full": f"{python}.9",
            "requirements": requirements, "excludes": [], "index_url": "https://pypi.org/simple",
            "cutoff": "2026-11-01", "resolved_at": now, "memory": {},
        }
        if env_id > resolved_envs:  # the rest did not resolve: a result with a reason, no lock, no cases
            envs.append({**row, "status": "conflict", "lock_hash": None, "lock_text": None,
                         "error": "Because tensorflow depends on numpy<2 and onnx depends on numpy>=2 …",
                         "signature": "ResolutionConflict(numpy)"})
            continue
        pins = {"torch": torch, tf_name: tf, "onnx": onnx, "onnxruntime": ort, "onnx2tf": "1.26.3",
                "onnx-tf": "1.10.0", "numpy": "1.26.4", "protobuf": "4.25.5"}
        pins.update({d: f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}" for d in filler})
        lock_lines = []
        for pkg, version in sorted(pins.items()):
            hashes = [f"sha256:{hashlib.sha256(f'{pkg}{version}{k}'.encode()).hexdigest()}" for k in range(2)]
            packages.append({"environment_id": env_id, "name": pkg, "version": version, "hashes": hashes})
            lock_lines.append(f"{pkg}=={version} \\\n" + " \\\n".join(f"    --hash={h}" for h in hashes))
        envs.append({**row, "status": "installed", "lock_hash": hashlib.sha256(name.encode() + b"lock").hexdigest(),
                     "lock_text": "\n".join(lock_lines) + "\n", "error": None, "signature": None})
        run = runs[env_id % len(runs)]
        for model in MODELS:
            for route, route_steps in ROUTES.items():
                for exporter in EXPORTERS:
                    case_id += 1
                    failing = rng.random() < 0.3
                    fail_at = rng.randrange(len(route_steps)) if failing else len(route_steps)
                    signature = rng.choice(SIGNATURES) if failing else None
                    cases.append({
                        "id": case_id, "run_id": run["id"], "environment_id": env_id, "model": model,
                        "route": route, "exporter": exporter, "opset": 17, "opset_emitted": 17, "model_hash": "m1",
                        "corpus_version": "c1", "runner_version": "0.1.0", "signature": signature,
                        "status": "fail" if failing else "pass", "max_abs_diff": None if failing else 1e-6,
                        "recorded_at": run["started_at"] + dt.timedelta(seconds=case_id % 3600),
                    })
                    for ordinal, step in enumerate(route_steps):
                        step_id += 1
                        status = "ok" if ordinal < fail_at else "fail" if ordinal == fail_at else "skip"
                        steps.append({
                            "id": step_id, "case_id": case_id, "ordinal": ordinal, "name": step, "status": status,
                            "seconds": round(rng.uniform(0.01, 4.0), 3), "peak_rss": rng.randint(2**27, 2**32),
                            "error_type": "RuntimeError" if status == "fail" else None,
                            "message": f"{signature}: detail of the failure at {step}" if status == "fail" else None,
                            "signature": signature if status == "fail" else None,
                            "max_abs_diff": 1e-6 if step == "parity" and status == "ok" else None,
                            "details": {"opset_emitted": 17} if step == "export" else {},
                        })
        if len(steps) >= 50_000:
            flush()
    flush()
    conn.commit()
    conn.close()
    return Filled(counts["environments"], counts["cases"], counts["steps"], time.perf_counter() - start)


# Servers and load.


def serve_worker(factory: str, port: int) -> None:
    """One server process on its own SO_REUSEPORT socket; the kernel spreads connections over the processes.

    Not `uvicorn --workers`: it binds with protocol 0, and asyncio sets TCP_NODELAY only on sockets whose protocol
    is IPPROTO_TCP, so every response would wait ~40 ms for the client's delayed ACK.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config(f"bench.api:{factory}", factory=True, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def serve(factory: str, env: dict[str, str], workers: int) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-worker", factory, str(port)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}) for _ in range(workers)]
    base = f"http://127.0.0.1:{port}"
    _SERVERS[base] = procs
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=30).close()  # the dashboard: seconds on a busy machine
                break
            except OSError:
                if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                    raise RuntimeError(f"{factory} did not start") from None
                time.sleep(0.2)
        time.sleep(1)  # every process up, not just the first to answer
        yield base
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_SERVERS: dict[str, list[subprocess.Popen[bytes]]] = {}  # serve(): base URL → its processes


def rss_mb(base: str) -> str:
    """The resident memory of each process serving `base` (Linux /proc), e.g. '182, 176 MB'."""
    sizes = []
    for proc in _SERVERS[base]:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        sizes.append(next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024)
    return ", ".join(f"{size:.0f}" for size in sizes) + " MB"


@dataclass
class Load:
    rps: float  # achieved: requests completed over the run's length
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    distinct: int = 0  # distinct requests wrk rotated over; fewer than `requests` means some were asked again
    mean_ms: float = 0.0


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class Post:
    """A POST request for wrk: path and JSON body."""

    path: str
    body: str


Request = str | Post


def _lua(text: str) -> str:
    """A Lua long-bracket string literal holding `text` verbatim (no escapes to get wrong in a JSON body)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def wrk(base: str, paths: list[Request], seconds: float, connections: int, delay_ms: float = 0.0) -> Load:
    """Drive `paths` (GET paths, or POSTs) round-robin with wrk (one thread, `connections` keep-alive connections).

    `delay_ms` > 0 makes each connection wait about that long before each request (wrk's `delay()` hook): a paced
    load instead of a saturating one. The waits are drawn from [0.5, 1.5] × `delay_ms`, and each connection's first
    from [0, 1] ×, so the connections do not fire in step: with one fixed wait they all started together and stayed
    together, every request queued behind the others' as at saturation, whatever the average rate.
    """
    exe = shutil.which("wrk")
    if not exe:
        sys.exit("wrk not found: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        entries = []
        for p in paths:
            if isinstance(p, Post):
                entries.append(f"{{'POST', {_lua(p.path)}, {_lua(p.body)}}}")
            else:
                entries.append(f"{{'GET', {_lua(p)}}}")
        script.write("local reqs = {\n" + ",\n".join(entries) + "\n}\nlocal i = 0\n"
                     "local json = {['Content-Type'] = 'application/json'}\n"
                     "request = function()\n  i = i + 1\n  local r = reqs[(i % #reqs) + 1]\n"
                     "  if r[3] then return wrk.format(r[1], r[2], json, r[3]) end\n"
                     "  return wrk.format(r[1], r[2])\nend\n")
        if delay_ms > 0:
            # wrk truncates a delay to whole milliseconds: rounded up with the probability of the fraction, the
            # mean wait is the one asked for (a 2.6 ms wait was 2 ms, and a paced rate overshot by a quarter).
            script.write(f"local started = 0\ndelay = function()\n  started = started + 1\n"
                         f"  local d = (0.5 + math.random()) * {delay_ms:.3f}\n"
                         f"  if started <= {connections} then d = math.random() * {delay_ms:.3f} end\n"
                         "  local whole = math.floor(d)\n"
                         "  if math.random() < d - whole then whole = whole + 1 end\n"
                         "  return whole\nend\n")
    try:
        # --timeout: a slow answer is counted in the latencies, not dropped as a socket error after wrk's 2 s
        out = subprocess.run([exe, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s", "--latency", "-s",
                              script.name, base], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)

    def percentile(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * _UNIT[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sent = re.search(r"^\s*(\d+) requests in", out, re.M)
    mean = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s)\s", out, re.M)
    assert rps and sent and mean, out
    return Load(float(rps.group(1)), percentile("50"), percentile("99"), int(errors.group(1)) if errors else 0,
                int(sent.group(1)), len(paths), float(mean.group(1)) * _UNIT[mean.group(2)])


def prime(base: str, paths: list[str], rounds: int) -> None:
    """Ask every question `rounds` times on fresh connections, so that every server process has answered it once."""
    for _ in range(rounds):
        for path in paths:
            with urllib.request.urlopen(base + path, timeout=120) as resp:
                assert resp.status == 200, (path, resp.status)


def queries(kind: str) -> list[str]:
    """Realistic questions: a few model sets, every route, with and without pins and a python filter."""
    sets = ["resnet", "resnet,transformer", "transformer,attention_mask", "resnet,mobilenet,vit", "lstm,gru"]
    out = []
    for models in sets:
        for route in ROUTES:
            out.append(f"/api/v1/{kind}?models={models}&route={route}")
        out.append(f"/api/v1/{kind}?models={models}&route=onnxruntime&require=torch%3E%3D2.4")
        out.append(f"/api/v1/{kind}?models={models}&route=onnx2tf&require=tensorflow%3C2.19&python=3.11")
    return out


def index_questions() -> list[str]:
    """/chains for one model on one route, of any exporter and of each: every slice and model the answers weigh. The
    measured questions skip them (Distinct.seen)."""
    return [f"/api/v1/chains?models={model}&route={route}" + (f"&exporter={exporter}" if exporter else "")
            for route in ROUTES for model in MODELS for exporter in (None, *EXPORTERS)]


class Distinct:
    """Requests of one kind, each handed out once: every wrk invocation gets requests no earlier one sent."""

    def __init__(self, make: Callable[[random.Random], tuple[Any, Request]], seed: int) -> None:
        self.make, self.rng, self.seen = make, random.Random(seed), set[Any]()

    def take(self, n: int) -> list[Request]:
        out: list[Request] = []
        while len(out) < n:
            key, request = self.make(self.rng)
            if key not in self.seen:
                self.seen.add(key)
                out.append(request)
        return out


def after_writes(base: str, url: str, source: Distinct, rounds: int) -> list[float]:
    """Milliseconds of the first answer after a write, `rounds` times: a committed write moves the data version, so
    the server process that answers reads the routes it needs again (api/verdicts.py MeasuredIndex). The write
    re-signs one case with its own signature: the data stay as they were, the version moves."""
    engine = make_engine(url)
    times = []
    for request in source.take(rounds):
        with engine.begin() as conn:
            conn.execute(text('UPDATE "case" SET signature = signature WHERE id = (SELECT min(id) FROM "case")'))
        if isinstance(request, Post):
            sent = urllib.request.Request(base + request.path, data=request.body.encode(),
                                          headers={"content-type": "application/json"})
        else:
            sent = urllib.request.Request(base + request)
        start = time.perf_counter()
        with urllib.request.urlopen(sent, timeout=120) as resp:
            assert resp.status == 200, (request, resp.status)
            resp.read()
        times.append((time.perf_counter() - start) * 1000)
    engine.dispose()
    return times


_REQUIRES = (None, None, "torch>=2.4", "torch<2.6", "tensorflow<2.19", "onnx>=1.16", "onnxruntime>=1.20",
             "torch>=2.2,<2.8", "numpy<2")


def chains_query(rng: random.Random) -> tuple[str, str]:
    """A /chains question: 1-3 models, any route, sometimes a python, a requirement or an exporter."""
    models = ",".join(rng.sample(MODELS, rng.choice((1, 1, 2, 2, 3))))
    params = [("models", models), ("route", rng.choice(list(ROUTES)))]
    if rng.random() < 0.3:
        params.append(("python", rng.choice(AXES["python"])))
    if require := rng.choice(_REQUIRES):
        params.append(("require", require))
    if rng.random() < 0.2:
        params.append(("exporter", rng.choice(EXPORTERS)))
    path = "/api/v1/chains?" + urllib.parse.urlencode(params)
    return path, path


_HEADER = ("# This file was autogenerated by uv via the following command:\n"
           "#    uv pip compile requirements.in --generate-hashes --python-version {python} -o requirements.txt\n")
_MOVABLE = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "tensorflow": "tensorflow"}


def check_request(locks: list[tuple[int, str, str]]) -> Callable[[random.Random], tuple[Any, Request]]:
    """POST /check bodies: a measured environment's hashed lock as requirements.txt (its python in uv's header),
    half as measured, the rest with one axis pin moved or another python; 1-3 models; the routes the file pins,
    or one named."""

    def make(rng: random.Random) -> tuple[Any, Request]:
        env_id, python, text = rng.choice(locks)
        roll, change = rng.random(), ""
        if roll > 0.8:
            python = rng.choice(AXES["python"])
            change = f"python={python}"
        elif roll > 0.5:
            package = rng.choice(list(_MOVABLE))
            version = rng.choice(AXES[package])
            text, moved = re.subn(rf"^(tensorflow(?:-cpu)?|{package})==\S+", lambda m: f"{m.group(1)}=={version}",
                                  text, count=1, flags=re.M) if package == "tensorflow" else re.subn(
                rf"^{package}==\S+", f"{package}=={version}", text, count=1, flags=re.M)
            change = f"{package}={version}" if moved else ""
        models = tuple(rng.sample(MODELS, rng.choice((1, 1, 2, 3))))
        routes = [] if rng.random() < 0.7 else [rng.choice(("onnxruntime", "onnx2tf", "onnx-tf"))]
        body = json.dumps({"filename": "requirements.txt", "text": _HEADER.format(python=python) + text,
                           "models": ",".join(models), "routes": routes})
        return (env_id, change, models, tuple(routes)), Post("/api/v1/check", body)

    return make


def locks_of(url: str) -> list[tuple[int, str, str]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = [(r[0], r[1], r[2]) for r in conn.execute(text(
            "SELECT id, python, lock_text FROM environment WHERE lock_text IS NOT NULL ORDER BY id"))]
    engine.dispose()
    return rows


TARGET_MS = 10.0  # issue 14: check p99 and uncached /chains p50, on 1M steps, paced below saturation


def main() -> int:
    if sys.argv[1:2] == ["--serve-worker"]:
        serve_worker(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000], help="step rows per database")
    parser.add_argument("--seconds", type=int, default=5, help="per measurement (after a 1 s warm-up)")
    parser.add_argument("--connections", type=int, default=8, help="at most; paced loads use fewer at low rates")
    parser.add_argument("--workers", type=int, default=2, help="server processes (for every app)")
    parser.add_argument("--rate", type=float, default=1500,
                        help="cache hits (and hello-world) are also measured paced at this rate; 0: skip")
    parser.add_argument("--pace", type=float, default=0.5,
                        help="uncached loads are also measured paced at this fraction of their saturated rate")
    parser.add_argument("--repeats", type=int, default=3,
                        help="paced uncached loads are measured this many times, each with new questions; the targets "
                             "are judged on the median of each figure")
    parser.add_argument("--batch", type=int, default=1500,
                        help="distinct requests handed to one wrk run at least; more where the run will send more at "
                             "the rate expected (any sent again are counted in the row)")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, server processes: {args.workers}, wrk: 1 thread, {args.connections} connections,"
          f" {args.seconds:g} s per measurement; load average at start: {_loadavg()}", flush=True)
    results: list[tuple[str, str, str, str, Load]] = []
    written: list[tuple[str, str, list[float]]] = []  # the first answer after a write, per endpoint and size

    def report(label: str, rows: str, kind: str, mode: str, load: Load) -> None:
        results.append((label, rows, kind, mode, load))
        again = f"  ({load.requests - load.distinct} sent again)" if load.requests > load.distinct > 1 else ""
        print(f"  {label:<12} {rows:>9} {kind:<18} {mode:<16} {load.rps:8.0f} req/s  p50 {load.p50_ms:7.2f} ms  "
              f"p99 {load.p99_ms:7.2f} ms  non-2xx {load.errors}{again}", flush=True)

    def report_paced(label: str, rows: str, kind: str, asked: float, saturated: Load, load: Load) -> None:
        """A paced load, named by the rate it achieved (the rate asked for beside it when they differ by more than
        10%), and flagged where it was not below saturation after all."""
        mode = f"paced {_rate(load.rps)}/s"
        if abs(load.rps - asked) > 0.1 * asked:
            mode += f" (asked {_rate(asked)})"
        report(label, rows, kind, mode, load)
        if load.rps > 0.8 * saturated.rps:
            print(f"  warning: {label} {kind} paced at {load.rps / saturated.rps:.0%} of its saturated rate: not "
                  "below saturation", flush=True)

    def paced(base: str, paths: Callable[[], list[Request]], rate: float, repeats: int = 1) -> list[Load]:
        """Latency at `rate` req/s offered, not at saturation: each connection waits between requests. Measured
        `repeats` times at the pace found, each run with `paths()` of its own.

        A connection's period is its wait plus the latency, so the first wait is `connections / rate` less the mean
        latency of a trial, then corrected by half the gap between the period asked and the one achieved (scaling the
        wait by achieved/asked, as before, ignored the latency and undershot at low rates). Few connections at low
        rates, so that each sends several requests in a trial; more where the latency needs them (Little's law, with
        room). The run is long enough for ~200 requests, so its p99 is a percentile, not the slowest of a handful.
        """
        conns = min(args.connections, max(2, math.ceil(rate / 4)))  # each at most ~4 req/s: a trial holds several
        wait_ms, measured = conns / rate * 1000, False
        for _ in range(3):
            trial = wrk(base, paths(), 3, conns, wait_ms)
            if not trial.requests:  # nothing answered within the trial: keep the guess
                continue
            needed = min(args.connections, max(conns, math.ceil(2 * rate * trial.mean_ms / 1000)))
            if needed != conns or not measured:
                conns, wait_ms = needed, needed / rate * 1000 - trial.mean_ms
            else:  # half the gap: a trial on a busy machine is noisy, and a full step overshot
                wait_ms += conns * 1000 * (1 / rate - 1 / trial.rps) / 2
            wait_ms, measured = max(0.05, wait_ms), True
        seconds = max(args.seconds, min(60, math.ceil(200 / rate)))
        return [wrk(base, paths(), seconds, conns, wait_ms) for _ in range(repeats)]

    def measure_fixed(label: str, rows: str, kind: str, base: str, paths: list[Request]) -> Load:
        wrk(base, paths, 1, args.connections)  # warm-up: connections, caches, plans
        load = wrk(base, paths, args.seconds, args.connections)
        report(label, rows, kind, "saturated", load)
        if args.rate:
            report_paced(label, rows, kind, args.rate, load, paced(base, lambda: paths, args.rate)[0])
        return load

    def measure_distinct(label: str, rows: str, base: str, source: Distinct) -> None:
        def batch(rate: float) -> list[Request]:  # a fresh batch per wrk run, as many as it will send at `rate`
            return source.take(max(args.batch, math.ceil(rate * max(args.seconds, 3) * 1.3)))

        warm = wrk(base, source.take(args.batch), 1, args.connections)  # warm-up: connections, per-process facts
        load = wrk(base, batch(warm.rps), args.seconds, args.connections)
        report(label, rows, "uncached, distinct", "saturated", load)
        rate = max(1.0, load.rps * args.pace)
        runs = paced(base, lambda: batch(rate), rate, args.repeats)
        if len(runs) > 1:  # each run on its own line; the table and the targets take the median of each figure
            for i, run in enumerate(runs, start=1):
                print(f"    run {i} of {len(runs)}: {run.rps:8.0f} req/s  p50 {run.p50_ms:7.2f} ms  "
                      f"p99 {run.p99_ms:7.2f} ms  non-2xx {run.errors}", flush=True)
        report_paced(label, rows, "uncached, distinct", rate, load, _median(runs))

    with postgres() as server:
        with serve("hello_factory", {}, args.workers) as base:
            hello = measure_fixed("hello", "-", "-", base, ["/"])
        hello_paced = next((r[4] for r in results if r[0] == "hello" and r[3] != "saturated"), hello)
        for rows in args.rows:
            url = create_database(server, f"kg_{rows}", FILL_REVISION)
            engine = make_engine(url)
            filled = fill(engine, rows)
            engine.dispose()
            backfill = upgrade_filled(url)
            label = f"{rows:,}"
            print(f"filled {label} steps: {filled.environments} environments, {filled.cases:,} cases, "
                  f"{filled.steps:,} steps in {filled.seconds:.0f} s; upgrade to head (outcome backfill) "
                  f"{backfill:.1f} s", flush=True)
            env = {"KNOWNGOOD_DATABASE_URL": url, "KNOWNGOOD_RESPONSE_CACHE_SIZE": "512"}
            with serve("app_factory", env, args.workers) as base:
                for kind in ("chains", "lockfile"):
                    paths = queries(kind)
                    prime(base, paths, rounds=4 * args.workers)
                    measure_fixed(f"/{kind}", label, "cache hits", base, list(paths))
            env["KNOWNGOOD_RESPONSE_CACHE_SIZE"] = "0"
            with serve("app_factory", env, args.workers) as base:
                # A server that has answered since the data last changed holds each route's index (api/verdicts.py
                # MeasuredIndex): grown here by one plain question per route, model and exporter, asked of every
                # process, none of them a question measured below. What the index costs to build is the row "first
                # answer after a write".
                index = index_questions()
                start = time.perf_counter()
                prime(base, index, rounds=4 * args.workers)
                print(f"  index grown by {len(index)} questions x {4 * args.workers} rounds in "
                      f"{time.perf_counter() - start:.0f} s; server memory (RSS per process): {rss_mb(base)}",
                      flush=True)
                chains_source = Distinct(chains_query, seed=rows)
                chains_source.seen.update(index)  # never measured: asked above
                check_source = Distinct(check_request(locks_of(url)), seed=rows)
                measure_distinct("/chains", label, base, chains_source)
                measure_distinct("POST /check", label, base, check_source)
                asked = len(chains_source.seen) - len(index) + len(check_source.seen)
                print(f"  server memory after {asked:,} distinct questions: {rss_mb(base)}", flush=True)
                for name, source in (("/chains", chains_source), ("POST /check", check_source)):
                    times = sorted(after_writes(base, url, source, rounds=20))
                    written.append((name, label, times))
                    print(f"  {name:<12} {label:>9} first answer after a write (x{len(times)}): median "
                          f"{times[len(times) // 2]:.1f} ms, slowest {times[-1]:.1f} ms", flush=True)
                # Each write moves the data version: every slice held is read again and the old ones let go. Memory
                # that grew with the writes would be slices kept alive (frozen out of the collector's sight).
                print(f"  server memory after those writes and answers: {rss_mb(base)}", flush=True)

    print("\n| endpoint | step rows | requests | load | req/s | p50 ms | p99 ms | req/s vs hello | p99 vs hello |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for label, rows, kind, mode, load in results:
        ref = hello if mode == "saturated" else hello_paced
        print(f"| {label} | {rows} | {kind} | {mode} | {load.rps:.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | "
              f"{load.rps / hello.rps:.0%} | {load.p99_ms / ref.p99_ms:.1f}x |")
    print("\n| endpoint | step rows | first answer after a write: median ms | slowest ms |")
    print("|---|---:|---:|---:|")
    for label, rows, times in written:
        print(f"| {label} | {rows} | {times[len(times) // 2]:.1f} | {times[-1]:.1f} |")
    large = f"{max(args.rows):,}"

    def paced_load(label: str) -> Load | None:
        return next((r[4] for r in results if r[0] == label and r[1] == large and r[2] == "uncached, distinct"
                     and r[3] != "saturated"), None)

    print(f"\ntargets (issue 14) at {large} steps, uncached distinct requests paced at {args.pace:.0%} of saturation, "
          f"the median of {args.repeats} run{'s' if args.repeats != 1 else ''} "
          f"(hello-world paced: p50 {hello_paced.p50_ms:.2f} ms, p99 {hello_paced.p99_ms:.2f} ms); "
          f"load average now: {_loadavg()}")
    for label, what, pick in (("POST /check", "p99", "p99_ms"), ("/chains", "p50", "p50_ms")):
        found = paced_load(label)
        if found is not None:
            value = getattr(found, pick)
            verdict = "met" if value < TARGET_MS else "MISSED"
            print(f"  {label:<12} {what} < {TARGET_MS:g} ms: {value:.2f} ms  {verdict}")
    return 0


def _median(loads: list[Load]) -> Load:
    """Several runs of one load as one: each figure the median of the runs' (errors and requests summed)."""
    median = statistics.median
    return Load(median(x.rps for x in loads), median(x.p50_ms for x in loads), median(x.p99_ms for x in loads),
                sum(x.errors for x in loads), sum(x.requests for x in loads), sum(x.distinct for x in loads),
                median(x.mean_ms for x in loads))


def _rate(rps: float) -> str:
    return f"{rps:.0f}" if rps >= 10 else f"{rps:.1f}"


def _loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
