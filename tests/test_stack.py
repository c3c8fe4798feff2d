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
    for path in (spec_dir, *spec_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the image runs as uid 10001
    planned = {env.id for env in expand.plan(spec.load(spec_dir / "tiny.toml")).environments}
    assert len(planned) == 4
    override = tmp_path / "compose.override.yaml"
    override.write_text(json.dumps({"services": {
        name: {"environment": runner_env, "volumes": [f"{spec_dir}:/spec:ro", "runner-data:/var/lib/knowngood"]}
        for name in ("runner-1", "runner-2")
    }}))

    port = free_port()
    project = f"kgstack{os.getpid()}"
    env = {"COMPOSE_PROJECT_NAME": project, "KNOWNGOOD_IMAGE": IMAGE, "POSTGRES_IMAGE": POSTGRES,
           "KNOWNGOOD_BIND": "127.0.0.1", "KNOWNGOOD_PORT": str(port)}
    compose = [*engine.compose, "-f", str(COMPOSE), "-f", str(override), "--profile", "runner"]
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
    except BaseException:
        logs_out = engine.run([*compose, "logs", "--no-color"], env=env, check=False)
        print(logs_out.stdout[-20000:], logs_out.stderr[-5000:])
        raise
    finally:
        started = time.monotonic()
        engine.run([*compose, "down", "-v", "--remove-orphans", "-t", "10"], env=env, timeout=300, check=False)
        timed("down -v", started)
        print("stack timings (s):", json.dumps(timings))
