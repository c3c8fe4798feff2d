"""An environment's life: locate python → resolve (or reuse a stored resolution) → install (or reuse by
marker) → remove."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from matrix.expand import Environment
from runner import pythons, uv
from runner.errors import InterpreterNotFound, UvFailed
from store.db import as_utc
from store.locks import Lock, parse_lock
from store.models import Environment as EnvironmentRow

MARKER = ".knowngood-lock"


@dataclass(frozen=True)
class Resolved:
    env: Environment
    python_exe: Path | None
    python_full: str | None
    lock: Lock | None
    conflict: uv.Conflict | None = None
    missing_python: str | None = None
    reused: bool = False  # taken from the database instead of asking uv again
    # An overrides twin whose plain environment resolves: nothing to relax, so nothing is installed or run.
    unneeded: bool = False

    @property
    def status(self) -> str:
        if self.missing_python:
            return "no-interpreter"
        if self.unneeded:
            return "override-unneeded"
        return "conflict" if self.conflict else "resolved"


def resolve(
    env: Environment, stored: EnvironmentRow | None = None, *, ttl: float = 0, uv_path: str | None = None
) -> Resolved:
    """The environment's lock; a missing interpreter or a conflict is a result.

    `stored` is the newest stored resolution of the same request. A request with a cutoff resolves the same way
    forever, and one without resolves the same way for a while (`ttl` seconds): its lock or conflict is reused
    then, and uv is not asked."""
    try:
        exe, full = pythons.find(env.python, uv_path)
    except InterpreterNotFound as exc:
        return Resolved(env, None, None, None, missing_python=str(exc))
    if stored is not None and _fresh(env, stored, ttl):
        if stored.lock_text is not None:
            return Resolved(env, exe, full, Lock(stored.lock_text, parse_lock(stored.lock_text)), reused=True)
        if stored.status == "conflict":  # a conflict stays a conflict
            return Resolved(env, exe, full, None, conflict=uv.Conflict(stored.error or ""), reused=True)
    if env.overrides:
        # A twin with relaxed pins (issue 11) is measured only where the declared pins do not resolve; the
        # plain environment, planned beside it, records that conflict itself.
        plain = uv.compile(exe, env.all_requirements, excludes=env.excludes, cutoff=env.cutoff, uv_path=uv_path)
        if not isinstance(plain, uv.Conflict):
            return Resolved(env, exe, full, None, unneeded=True)
    result = uv.compile(exe, env.all_requirements, excludes=env.excludes, cutoff=env.cutoff,
                        overrides=env.overrides, uv_path=uv_path)
    if isinstance(result, uv.Conflict):
        return Resolved(env, exe, full, None, conflict=result)
    return Resolved(env, exe, full, result)


def _fresh(env: Environment, stored: EnvironmentRow, ttl: float) -> bool:
    if env.cutoff is not None:
        return True
    return (dt.datetime.now(dt.UTC) - as_utc(stored.resolved_at)).total_seconds() < ttl


def venv_path(env_root: Path, resolved: Resolved) -> Path:
    assert resolved.lock is not None
    return env_root / f"{resolved.env.python}-{resolved.lock.hash[:16]}"


def install(env_root: Path, resolved: Resolved, *, uv_path: str | None = None) -> tuple[Path, bool]:
    """Create the venv for a lock, or reuse it when its marker names the same lock and it is intact. Returns
    (path, built)."""
    assert resolved.lock is not None and resolved.python_exe is not None
    path = venv_path(env_root, resolved)
    marker = path / MARKER
    if marker.is_file() and marker.read_text().strip() == resolved.lock.hash and _intact(path, resolved.lock, uv_path):
        return path, False
    if path.exists():
        shutil.rmtree(path)  # a half-built venv from an interrupted run
    path.parent.mkdir(parents=True, exist_ok=True)
    uv.venv(path, resolved.python_exe, uv_path=uv_path)
    uv.sync(path, resolved.lock, uv_path=uv_path)
    marker.write_text(resolved.lock.hash + "\n")  # written last: its presence means complete
    return path, True


def _intact(path: Path, lock: Lock, uv_path: str | None) -> bool:
    """The interpreter runs and exactly the lock's distributions are installed. A venv that lost files to a
    cleaner (or to another process removing it) keeps its marker; it is rebuilt, not run."""
    if not (path / "bin" / "python").exists():  # exists() follows the symlink: a dangling one is False
        return False
    try:
        installed = uv.freeze(path, uv_path=uv_path)
    except UvFailed:
        return False
    return installed == {canonicalize_name(p.name): p.version for p in lock.pins}


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
