"""The only module that spawns uv: compile → Lock | Conflict, venv, sync, freeze, python find.

Every function takes `uv_path`, the configured binary (Settings.uv, KNOWNGOOD_UV); None means `uv` on PATH."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from runner.errors import UvFailed, UvNotFound
from store.locks import Lock, parse_lock

log = logging.getLogger(__name__)

# Dropped so that nothing of the caller's own environment leaks into uv's choice of interpreter or venv.
_DROPPED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PYTHON", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT")
# These decide what a resolution can return, so they are part of an environment's identity.
INDEX_VARIABLES = (
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_INDEX_STRATEGY",
    "UV_PRERELEASE",
)


def uv_binary(uv_path: str | None = None) -> str:
    """The uv to run: the configured one (Settings.uv), else `uv` on PATH."""
    exe = shutil.which(uv_path or "uv")
    if not exe:
        raise UvNotFound(uv_path)
    return exe


def uv_env() -> dict[str, str]:
    """uv's environment: UV_* index, mirror and cache settings pass through untouched."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env["UV_NO_CONFIG"] = "1"  # a stray uv.toml must not change what we measure
    env["UV_PYTHON_DOWNLOADS"] = "never"  # we pass interpreters by absolute path
    env.setdefault("UV_HTTP_TIMEOUT", "300")
    return env


def index_settings() -> dict[str, str]:
    return {k: os.environ[k] for k in INDEX_VARIABLES if os.environ.get(k)}


def _run(
    args: Sequence[str], *, uv_path: str | None, input: str | None = None, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    cmd = [uv_binary(uv_path), *args]
    log.debug("+ %s", shlex.join(cmd))
    # A session of its own, as the worker has: a terminal's Ctrl-C reaches only the runner, which stops at the next
    # boundary (runner/stop.py), instead of killing uv half-way and reading its exit as the combination's answer.
    return subprocess.run(
        cmd, input=input, capture_output=True, text=True, env=uv_env(), timeout=timeout, check=False,
        start_new_session=True,
    )


@dataclass(frozen=True)
class Conflict:
    """uv could not resolve the request; `reason` is uv's own explanation."""

    reason: str


# Failures that say nothing about the combination, only about the network: the run stops instead.
_TRANSIENT = ("error sending request", "Failed to fetch", "operation timed out", "dns error", "Connection reset")
# Environments are made of wheels: building sdists would measure compilers, not compatibility.
NO_BUILD = ("--no-build",)

def compile(
    python: Path,
    requirements: Sequence[str],
    *,
    excludes: Sequence[str] = (),
    cutoff: str | None = None,
    uv_path: str | None = None,
    overrides: Sequence[str] = (),
) -> Lock | Conflict:
    """Resolve `requirements` for `python`; a conflict is a result, not an exception.

    `overrides` replace every declared requirement on the packages they name (uv's --overrides), as a user
    does when a converter's exact pins make an environment unresolvable.
    """
    with tempfile.TemporaryDirectory(prefix="knowngood-compile-") as tmp:
        args = [
            "pip", "compile", "-", "--python", str(python), "--generate-hashes",
            "--no-header", "--no-annotate", "--quiet", "--color", "never", *NO_BUILD,
        ]
        if excludes:
            exclude_file = Path(tmp) / "excludes.txt"
            exclude_file.write_text("\n".join(excludes) + "\n")
            args += ["--excludes", str(exclude_file)]
        if overrides:
            override_file = Path(tmp) / "overrides.txt"
            override_file.write_text("\n".join(overrides) + "\n")
            args += ["--overrides", str(override_file)]
        if cutoff:
            args += ["--exclude-newer", cutoff]
        proc = _run(args, input="\n".join(requirements) + "\n", uv_path=uv_path)
    if proc.returncode != 0:
        reason = proc.stderr.strip()
        if any(marker in reason for marker in _TRANSIENT):
            raise UvFailed(f"uv pip compile could not reach the index (exit {proc.returncode}):\n{reason}")
        # No solution, no wheel for this Python, a placeholder sdist: all are answers about this combination.
        return Conflict(reason)
    return Lock(text=proc.stdout, pins=parse_lock(proc.stdout))


def venv(path: Path, python: Path, *, uv_path: str | None = None) -> None:
    proc = _run(["venv", "--quiet", "--python", str(python), "--no-project", "--allow-existing", str(path)],
                uv_path=uv_path)
    if proc.returncode != 0:
        raise UvFailed(f"uv venv {path} failed:\n{proc.stderr.strip()}")


def sync(path: Path, lock: Lock, *, uv_path: str | None = None) -> None:
    """Install exactly the lock into the venv at `path`, hashes checked, from uv's shared cache."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="knowngood-lock-", delete=False) as fh:
        fh.write(lock.text)
    try:
        proc = _run(["pip", "sync", fh.name, "--python", str(path / "bin" / "python"), "--require-hashes",
                     "--quiet", "--color", "never", *NO_BUILD], uv_path=uv_path)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise UvFailed(f"uv pip sync into {path} failed:\n{proc.stderr.strip()}")


def freeze(path: Path, *, uv_path: str | None = None) -> dict[str, str]:
    proc = _run(["pip", "freeze", "--python", str(path / "bin" / "python")], uv_path=uv_path)
    if proc.returncode != 0:
        raise UvFailed(f"uv pip freeze failed:\n{proc.stderr.strip()}")
    return {canonicalize_name(a): b for a, _, b in (ln.partition("==") for ln in proc.stdout.split()) if b}


def find_python(version: str, *, uv_path: str | None = None) -> Path | None:
    """`uv python find`: the interpreter uv would pick for `version`, uv-managed ones included (Docker), or None.

    None also when uv itself is missing: this is the last place the runner looks, not a requirement."""
    try:
        proc = _run(["python", "find", "--no-config", version], uv_path=uv_path, timeout=60)
    except UvNotFound:
        return None
    path = proc.stdout.strip()
    return Path(path) if proc.returncode == 0 and path else None


def cache_clean(packages: Sequence[str], *, uv_path: str | None = None) -> None:
    """Remove these packages (every version) from uv's shared cache; venvs linked from it keep their files."""
    if not packages:
        return
    # --force: an enclosing `uv run knowngood ...` holds a shared lock on the cache for its whole life, and a
    # plain clean waits for an exclusive one forever. Nothing else reads these builds at this point: the export
    # environments of this torch release are done, and runtime environments never hold torch.
    proc = _run(["cache", "clean", "--force", *packages], uv_path=uv_path, timeout=600)
    if proc.returncode != 0:
        raise UvFailed(f"uv cache clean failed: {proc.stderr.strip()[-2000:]}")


class CacheLock:
    """Installs share uv's cache; a `cache clean` of a package must not run under an install of this process
    linking from it. Many installs at once, or one clean: a readers-writer lock, with waiting cleans first.

    Only this process's threads (--jobs) are kept apart; processes sharing one cache directory are not."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.installs = 0
        self.cleaning = False
        self.waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: not self.cleaning and not self.waiting)
            self.installs += 1
        try:
            yield
        finally:
            with self.cond:
                self.installs -= 1
                self.cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.cond:
            self.waiting += 1
            self.cond.wait_for(lambda: not self.cleaning and not self.installs)
            self.waiting -= 1
            self.cleaning = True
        try:
            yield
        finally:
            with self.cond:
                self.cleaning = False
                self.cond.notify_all()
