"""`"3.11"` → absolute path of a real interpreter (never a pyenv shim), or InterpreterNotFound."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

from packaging.version import Version

from runner import uv
from runner.errors import InterpreterNotFound


def _is_shim(path: Path) -> bool:
    return "shims" in path.parts


def _reports(path: Path, version: str) -> str | None:
    """The interpreter's full version if it is really `version`, else None."""
    try:
        out = subprocess.run(
            [str(path), "-I", "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out if out == version or out.startswith(version + ".") else None


@functools.cache
def find(version: str, uv_path: str | None = None) -> tuple[Path, str]:
    """Locate Python `version` ("3.11"): pyenv installs, then PATH (shims skipped), then uv's own list."""
    looked: list[str] = []
    candidates: list[Path] = []
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    versions_dir = pyenv_root / "versions"
    looked.append(str(versions_dir))
    if versions_dir.is_dir():
        found = [d for d in versions_dir.iterdir() if re.fullmatch(re.escape(version) + r"\.\d+", d.name)]
        for d in sorted(found, key=lambda d: Version(d.name), reverse=True):
            candidates.append(d / "bin" / f"python{version}")
    looked.append("PATH")
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        exe = Path(directory) / f"python{version}"
        if exe.is_file() and not _is_shim(exe):
            candidates.append(exe)
    for exe in candidates:
        if exe.is_file() and (full := _reports(exe, version)):
            return exe.resolve(), full
    looked.append("uv python find")
    managed = uv.find_python(version, uv_path=uv_path)  # finds uv-managed interpreters too (Docker)
    if managed is not None and not _is_shim(managed) and (full := _reports(managed, version)):
        return managed.resolve(), full
    raise InterpreterNotFound(version, looked)
