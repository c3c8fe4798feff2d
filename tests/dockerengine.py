"""A Docker engine for the stack test, and local stand-ins for the base images that docker/Dockerfile names.

The engine is the one already running when `docker info` answers; otherwise Debian's `docker.io` (installed with
apt-get when missing) is started by hand and stopped by its PID afterwards. The stand-ins exist because a
builder may reach package registries but no container registry: a debootstrapped bookworm is imported once, and
`python`, `uv` and `postgres` images are built from it under the names the Dockerfile and compose file use.
Images already present are used as they are, so later runs (and machines with the real images) skip all this.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parent.parent
STANDINS = ROOT / "docker" / "standins"
BASE_IMAGE = "knowngood-standin/debian:bookworm"
# Debian's engine (20.10) builds with BuildKit when asked; newer clients need the buildx plugin for that.
BUILDKIT_WITHOUT_BUILDX_BEFORE = 23


class EngineUnavailable(RuntimeError):
    """No engine answers and this process may not install or start one."""


@dataclass(frozen=True)
class Engine:
    """How to reach one engine: the client argv, the compose argv, and the environment both need."""

    docker: tuple[str, ...]
    compose: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def run(self, argv: Sequence[str], *, timeout: float = 600, check: bool = True,
            env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(argv), env={**self.env, **(env or {})}, timeout=timeout, text=True,
                              capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        return proc  # type: ignore[no-any-return]

    def has_image(self, ref: str) -> bool:
        return self.run([*self.docker, "image", "inspect", ref], check=False).returncode == 0


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise EngineUnavailable(f"need {', '.join(packages)} (apt-get install {' '.join(packages)}, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env, check=True,
                   capture_output=True)


def _client_major(docker: str) -> int:
    out = subprocess.run([docker, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"version (\d+)\.", out)
    return int(found.group(1)) if found else 0


def _build_client() -> str | None:
    """A docker client that can build with BuildKit: one with buildx, or an older one with BuildKit built in."""
    candidates = dict.fromkeys(p for p in (shutil.which("docker"), "/usr/bin/docker") if p and os.path.exists(p))
    for docker in candidates:
        if subprocess.run([docker, "buildx", "version"], capture_output=True, check=False).returncode == 0:
            return docker
    for docker in candidates:
        if 0 < _client_major(docker) < BUILDKIT_WITHOUT_BUILDX_BEFORE:
            return docker
    return None


def _compose(docker: str, env: dict[str, str]) -> tuple[str, ...]:
    if subprocess.run([docker, "compose", "version"], env=env, capture_output=True, check=False).returncode == 0:
        return (docker, "compose")
    if not shutil.which("docker-compose"):
        _apt_install("docker-compose")
    return (shutil.which("docker-compose") or "docker-compose",)


def _answers(docker: str, env: dict[str, str]) -> bool:
    return subprocess.run([docker, "info"], env=env, capture_output=True, timeout=60,
                          check=False).returncode == 0


def stop(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM the engine we started (it stops its containers and its containerd), SIGKILL after the grace."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def engine(log: Path) -> Iterator[Engine]:
    """The running engine, or Debian's started for the duration (and stopped by PID afterwards)."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    docker = _build_client()
    if docker and _answers(docker, env):
        yield Engine(docker=(docker,), compose=_compose(docker, env), env=env)
        return
    if docker is None or not shutil.which("dockerd"):
        _apt_install("docker.io")
        docker = _build_client()
        if docker is None:
            raise EngineUnavailable("no docker client able to build with BuildKit after installing docker.io")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting dockerd needs root")
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    with log.open("wb") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _answers(docker, env):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(f"dockerd did not come up (exit {proc.poll()}); see {log}:\n"
                                        f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield Engine(docker=(docker,), compose=_compose(docker, env), env=env)
    finally:
        stop(proc)


# --- stand-ins ------------------------------------------------------------------------------------------------


def dockerfile_default(name: str, dockerfile: Path = ROOT / "docker" / "Dockerfile") -> str:
    """The default of `ARG name=…` in the Dockerfile, so the stand-ins follow whatever it names."""
    found = re.search(rf"^ARG {name}=(\S+)", dockerfile.read_text(), re.M)
    if not found:
        raise ValueError(f"{dockerfile}: no ARG {name}=…")
    return found.group(1)


def _base(e: Engine) -> None:
    """A minimal bookworm (debootstrap --variant=minbase, from Debian's mirror), imported as BASE_IMAGE."""
    if e.has_image(BASE_IMAGE):
        return
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="knowngood-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], check=True,
                       capture_output=True, timeout=900)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for leftover in (rootfs / cache).glob("*"):
                if leftover.is_file():
                    leftover.unlink()
        with subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                              stdout=subprocess.PIPE) as tar:
            e.run([*e.docker, "import", "-", BASE_IMAGE], stdin=tar.stdout)
        if tar.returncode != 0:
            raise RuntimeError("tar of the debootstrapped root failed")


def _uv_context(tag: str, into: Path) -> None:
    """uv and uvx from uv's PyPI wheel, at the version the image tag names (`0.13` → uv>=0.13,<0.14)."""
    version = tag.rpartition(":")[2]
    # A full version is pinned; a shorter tag (`0.13`, `1`) means its newest release, as the upstream tags do.
    requirement = f"uv=={version}" if version.count(".") >= 2 else f"uv=={version}.*"
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to fetch the uv wheel for the stand-in (pip install uv)")
    target = into / "wheel"
    subprocess.run([uv, "pip", "install", "--quiet", "--no-deps", "--target", str(target), requirement],
                   check=True, capture_output=True)
    for name in ("uv", "uvx"):
        shutil.copy2(target / "bin" / name, into / name)
    shutil.copy2(STANDINS / "uv.Dockerfile", into / "Dockerfile")


def standins(e: Engine, postgres: str = "postgres:15-bookworm") -> dict[str, float]:
    """Build whichever of the Dockerfile's base images and `postgres` are missing; return seconds per build."""
    seconds: dict[str, float] = {}
    python, uv = dockerfile_default("PYTHON_IMAGE"), dockerfile_default("UV_IMAGE")
    for ref, dockerfile in ((python, "python.Dockerfile"), (postgres, "postgres.Dockerfile")):
        if e.has_image(ref):
            continue
        started = time.monotonic()
        _base(e)
        e.run([*e.docker, "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-f", str(STANDINS / dockerfile),
               "-t", ref, str(STANDINS)], timeout=900)
        seconds[ref] = round(time.monotonic() - started, 1)
    if not e.has_image(uv):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="knowngood-uv-") as tmp:
            _uv_context(uv, Path(tmp))
            e.run([*e.docker, "build", "-q", "-t", uv, tmp])
        seconds[uv] = round(time.monotonic() - started, 1)
    return seconds
