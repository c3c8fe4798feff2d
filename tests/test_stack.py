"""The deployment for real: docker/Dockerfile built, docker/compose.yaml up on a loopback port, two runner shards.

Runs when KNOWNGOOD_STACK=1 (`nox -s tests` and `nox -s stack` set it): it needs root or a running Docker engine,
and about three minutes warm. The engine, the stand-in base images and the build are in tests/dockerengine.py.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix import expand, spec
from tests import dockerengine
from tests.pgcluster import free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("KNOWNGOOD_STACK") != "1",
    reason="the Docker stack runs under `nox -s tests` or `nox -s stack` (KNOWNGOOD_STACK=1)",
)

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
FAULTS = ROOT / "tests" / "fixtures" / "corpus" / "faults.py"
SMOKE = ROOT / "tests" / "fixtures" / "smoke-snapshot.json.gz"  # a real smoke run, exported
IMAGE = "knowngood:stack-test"  # not :latest, which may be someone's own build
POSTGRES = "postgres:15-bookworm"  # the stand-in is Debian bookworm's PostgreSQL, which is 15
SHARD_DEADLINE = 300
STOP_GRACE = 12  # KNOWNGOOD_STOP_GRACE in the stopped runner: the current case may use 12 - 8 = 4 s of it
# A toy corpus whose cases each take 3 s (then fail): a runner can be stopped with one case recorded and the next
# one running, and that one still finishes inside the grace period.
STOP_CORPUS = """\
import time


class Nap:
    atol = rtol = 0.0
    tolerance_reason = "toy"
    expected = None

    def __init__(self, name):
        self.name = name

    def unavailable(self):
        return None

    def build(self):
        time.sleep(3.0)
        raise RuntimeError("toy model %s refuses to build" % self.name)

    def examples(self):
        return []

    def export_kwargs(self, exporter, opset):
        return {}


MODELS = {name: Nap(name) for name in ("nap_a", "nap_b", "nap_c", "nap_d")}
"""


def _ca_bundle() -> Path | None:
    """The trust store this machine's own clients use, handed to uv in the build and in the shards (a builder
    behind a TLS-inspecting proxy needs it; elsewhere it is the ordinary system store and changes nothing)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dockerengine.Engine]:
    try:
        with dockerengine.engine(tmp_path_factory.mktemp("engine") / "dockerd.log") as e:
            yield e
    except dockerengine.EngineUnavailable as err:
        pytest.skip(str(err))


def test_image_compose_and_two_shards(engine: dockerengine.Engine, tmp_path: Path) -> None:
    timings: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    timings.update({f"standin {k}": v for k, v in dockerengine.standins(engine, POSTGRES).items()})
    timed("standins", started)

    # The Dockerfile as it is; only the optional CA secret is added.
    ca = _ca_bundle()
    secret = ["--secret", f"id=ca-certificates,src={ca}"] if ca else []
    started = time.monotonic()
    engine.run([*engine.docker, "build", "-f", str(ROOT / "docker" / "Dockerfile"), *secret, "-t", IMAGE,
                str(ROOT)], timeout=1200)
    timed("build", started)

    # The shards read a four-environment spec of a toy corpus (no frameworks) from a bind mount.
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    shutil.copy2(FAULTS, spec_dir / "faults.py")
    shutil.copy2(SMOKE, spec_dir / "smoke-snapshot.json.gz")
    (spec_dir / "tiny.toml").write_text(
        'name = "stack-tiny"\nmodels = ["broken"]\nroutes = ["onnxruntime"]\ncorpus = "faults.py"\n\n'
        '[axes]\npython = ["3.11"]\nsix = ["==1.16.0", "==1.17.0"]\npackaging = ["==24.1", "==24.2"]\n'
    )
    runner_env = {"KNOWNGOOD_SPEC": "/spec/tiny.toml"}
    if ca:
        shutil.copy2(ca, spec_dir / "ca-certificates.crt")
        runner_env["SSL_CERT_FILE"] = "/spec/ca-certificates.crt"
    (spec_dir / "naps.py").write_text(STOP_CORPUS)
    (spec_dir / "naps.toml").write_text(
        'name = "stack-stop"\nmodels = ["nap_a", "nap_b", "nap_c", "nap_d"]\nroutes = ["onnxruntime"]\n'
        'corpus = "naps.py"\n\n[axes]\npython = ["3.11"]\nsix = ["==1.17.0"]\n'
    )
    for path in (spec_dir, *spec_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the image runs as uid 10001
    planned = {env.id for env in expand.plan(spec.load(spec_dir / "tiny.toml")).environments}
    assert len(planned) == 4
    override = tmp_path / "compose.override.yaml"
    services: dict[str, Any] = {
        name: {"environment": runner_env, "volumes": [f"{spec_dir}:/spec:ro", "runner-data:/var/lib/knowngood"]}
        for name in ("runner-1", "runner-2")
    }
    # The stopped runner: compose's own runner-1 (entrypoint, stop_grace_period and all) as one shard of a
    # one-environment spec, under a profile of its own so that it starts only when asked for.
    runner = yaml.safe_load(COMPOSE.read_text())["services"]["runner-1"]
    services["runner-stop"] = {
        **{k: v for k, v in runner.items() if k != "depends_on"}, "profiles": ["stop"],
        "environment": {**runner["environment"], **runner_env, "KNOWNGOOD_SPEC": "/spec/naps.toml",
                        "KNOWNGOOD_SHARD": "1/1", "KNOWNGOOD_STOP_GRACE": str(STOP_GRACE)},
        "volumes": [f"{spec_dir}:/spec:ro", "runner-data:/var/lib/knowngood"],
    }
    override.write_text(json.dumps({"services": services}))

    port = free_port()
    project = f"kgstack{os.getpid()}"
    env = {"COMPOSE_PROJECT_NAME": project, "KNOWNGOOD_IMAGE": IMAGE, "POSTGRES_IMAGE": POSTGRES,
           "KNOWNGOOD_BIND": "127.0.0.1", "KNOWNGOOD_PORT": str(port)}
    compose = [*engine.compose, "-f", str(COMPOSE), "-f", str(override), "--profile", "runner", "--profile", "stop"]
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        started = time.monotonic()
        # Waits for PostgreSQL's health check and for migrate to complete, as the file's depends_on say.
        engine.run([*compose, "up", "-d", "--no-build", "postgres", "migrate", "api"], env=env, timeout=300)
        deadline = time.monotonic() + 60
        while True:
            try:
                status, runs = _get(f"{api}/runs")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the API did not answer within 60 s"
                time.sleep(0.5)
        assert status == 200 and runs["runs"] == []  # migrated, and empty
        timed("up", started)

        # A real smoke run's results into PostgreSQL through the image's CLI, then asked for through the API.
        # (The fixture, not data/snapshot.json.gz: that one takes a minute or two to import here.)
        started = time.monotonic()
        engine.run([*compose, "run", "--rm", "--no-deps", "-v", f"{spec_dir}:/spec:ro", "api", "snapshot",
                    "import", "/spec/smoke-snapshot.json.gz"], env=env, timeout=300)
        status, chains = _get(f"{api}/chains?models=resnet,grid_sample&route=onnxruntime")
        assert status == 200 and len(chains["chains"]) == 1, chains
        timed("snapshot import + chains", started)

        started = time.monotonic()
        engine.run([*compose, "up", "-d", "--no-build", "--no-recreate", "runner-1", "runner-2"], env=env,
                   timeout=120)
        ids = {name: engine.run([*compose, "ps", "-q", name], env=env).stdout.strip()
               for name in ("runner-1", "runner-2")}
        codes = engine.run([*engine.docker, "wait", *ids.values()], timeout=SHARD_DEADLINE).stdout.split()
        logs = {name: engine.run([*engine.docker, "logs", cid], check=False).stdout for name, cid in ids.items()}
        assert codes == ["0", "0"], logs
        timed("two shards", started)
        # Runner services carry no health check (the image's is the API's).
        for cid in ids.values():
            health = engine.run([*engine.docker, "inspect", "-f", "{{json .State.Health}}", cid]).stdout.strip()
            assert health == "null", health

        # Each shard is one run of the spec; together they cover the plan, each environment once.
        status, runs = _get(f"{api}/runs?limit=500")
        assert status == 200
        tiny = [r for r in runs["runs"] if r["spec_name"] == "stack-tiny"]
        assert len(tiny) == 2 and {r["status"] for r in tiny} == {"finished"}
        seen: list[str] = []
        env_ids: list[int] = []
        for run in tiny:
            status, detail = _get(f"{api}/runs/{run['id']}")
            assert status == 200 and detail["cases"] == {"fail": 2}  # the toy model raises while being built
            seen += [e["name"] for e in detail["environments"]]
            env_ids += [e["id"] for e in detail["environments"]]
        assert sorted(seen) == sorted(planned)
        lock = _text(f"{api}/environments/{env_ids[0]}/lockfile")
        assert "six==" in lock and "--hash=sha256:" in lock

        # The API's own health check (the image's HEALTHCHECK) turns healthy.
        api_id = engine.run([*compose, "ps", "-q", "api"], env=env).stdout.strip()
        deadline = time.monotonic() + 90
        while (state := engine.run([*engine.docker, "inspect", "-f", "{{.State.Health.Status}}", api_id])
               .stdout.strip()) != "healthy":
            assert state == "starting" and time.monotonic() < deadline, state
            time.sleep(2)

        started = time.monotonic()
        _stop_and_resume(engine, compose, env, timings)
        timed("SIGTERM + resume", started)
    except BaseException:
        logs_out = engine.run([*compose, "logs", "--no-color"], env=env, check=False)
        print(logs_out.stdout[-20000:], logs_out.stderr[-5000:])
        raise
    finally:
        started = time.monotonic()
        engine.run([*compose, "down", "-v", "--remove-orphans", "-t", "10"], env=env, timeout=300, check=False)
        timed("down -v", started)
        print("stack timings (s):", json.dumps(timings))


def _sql(engine: dockerengine.Engine, postgres_id: str, query: str) -> list[list[str]]:
    out = engine.run([*engine.docker, "exec", postgres_id, "psql", "-U", "knowngood", "-d", "knowngood", "-AtF|",
                      "-c", query]).stdout
    return [line.split("|") for line in out.splitlines() if line]


def _stop_and_resume(engine: dockerengine.Engine, compose: list[str], env: dict[str, str],
                     timings: dict[str, float]) -> None:
    """issue 16: `docker stop` on a runner container stops it within the grace period with no finished case lost,
    and starting the same container again resumes the run."""
    pg = engine.run([*compose, "ps", "-q", "postgres"], env=env).stdout.strip()
    cases = ("SELECT c.id, c.model, c.run_id, c.status FROM \"case\" c JOIN run r ON r.id = c.run_id "
             "WHERE r.spec_name = 'stack-stop' ORDER BY c.id")
    engine.run([*compose, "up", "-d", "--no-build", "--no-deps", "runner-stop"], env=env, timeout=120)
    cid = engine.run([*compose, "ps", "-q", "runner-stop"], env=env).stdout.strip()
    deadline = time.monotonic() + 180
    while not (before := _sql(engine, pg, cases)):
        state = engine.run([*engine.docker, "inspect", "-f", "{{.State.Status}}", cid]).stdout.strip()
        assert state == "running" and time.monotonic() < deadline, \
            engine.run([*engine.docker, "logs", cid], check=False).stderr[-5000:]
        time.sleep(0.3)
    # knowngood itself is PID 1 (sh exec'd it) and catches SIGTERM (bit 15 of SigCgt), so the signal reaches it.
    status = engine.run([*engine.docker, "exec", cid, "cat", "/proc/1/status", "/proc/1/cmdline"]).stdout
    assert "knowngood" in status and "run" in status, status
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    assert caught & (1 << (15 - 1)), status
    assert len(before) < 4  # the next case is running: each takes 3 s

    started = time.monotonic()
    engine.run([*engine.docker, "stop", "-t", str(STOP_GRACE + 10), cid], timeout=STOP_GRACE + 60)
    took = time.monotonic() - started
    timings["docker stop"] = round(took, 1)
    state = json.loads(engine.run([*engine.docker, "inspect", "-f", "{{json .State}}", cid]).stdout)
    logs = engine.run([*engine.docker, "logs", cid], check=False)
    assert state["ExitCode"] == 143, (state, logs.stderr[-5000:])  # 128 + SIGTERM, as knowngood --help says
    assert took < STOP_GRACE, (took, logs.stderr[-5000:])
    (run_id, run_status), = _sql(engine, pg, "SELECT id, status FROM run WHERE spec_name = 'stack-stop'")
    assert run_status == "interrupted"
    after = _sql(engine, pg, cases)
    assert after[:len(before)] == before  # nothing recorded before the signal is lost
    # The case running at the signal had 4 s of the grace period to finish its 3 s, and did; none started after.
    assert len(after) == len(before) + 1, (before, after, logs.stderr[-5000:])

    # The same command again (the same container): a new run that skips what is recorded and does the rest.
    engine.run([*engine.docker, "start", cid])
    code = engine.run([*engine.docker, "wait", cid], timeout=SHARD_DEADLINE).stdout.strip()
    logs = engine.run([*engine.docker, "logs", cid], check=False)
    assert code == "0", logs.stderr[-5000:]
    summary = json.loads(logs.stdout.strip().splitlines()[-1])
    assert summary["skipped_recorded"] == len(after), summary
    final = _sql(engine, pg, cases)
    assert final[:len(after)] == after  # not redone: the same rows, of the interrupted run
    assert sorted(model for _, model, _, _ in final) == ["nap_a", "nap_b", "nap_c", "nap_d"]
    assert {r for _, _, r, _ in final[len(after):]} != {run_id}
    statuses = dict(_sql(engine, pg, "SELECT id, status FROM run WHERE spec_name = 'stack-stop'"))
    assert statuses[run_id] == "interrupted" and sorted(statuses.values()) == ["finished", "interrupted"]
