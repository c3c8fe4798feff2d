"""The uv seam for real: interpreters by absolute path, a real resolution, a real conflict, env passthrough."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from matrix.expand import Environment
from runner import environments, pythons, uv
from runner.errors import InterpreterNotFound
from store.locks import Lock, Pin, parse_lock

# The worker and the table it loads by path run under every case environment's Python, 3.8 included.
WORKER_FILES = [*sorted((Path(__file__).parents[1] / "runner" / "worker").glob("*.py")),
                Path(__file__).parents[1] / "matrix" / "routes.py"]


def test_finds_real_interpreters_not_shims() -> None:
    exe, full = pythons.find("3.11")
    assert exe.is_absolute() and "shims" not in exe.parts
    assert full.startswith("3.11.")


def test_missing_interpreter_is_a_clear_error() -> None:
    with pytest.raises(InterpreterNotFound, match=r"no Python 3\.99 interpreter found; looked in"):
        pythons.find("3.99")


def test_missing_interpreter_is_a_recorded_result() -> None:
    resolved = environments.resolve(Environment(python="3.99", requirements=("six",)))
    assert resolved.status == "no-interpreter" and resolved.lock is None


@pytest.mark.parametrize("path", WORKER_FILES, ids=lambda p: p.name)
def test_worker_is_python38_syntax(path: Path, tmp_path: Path) -> None:
    """The worker runs in case environments from Python 3.8 up; compile it with the real 3.8."""
    import subprocess

    exe, _ = pythons.find("3.8")
    subprocess.run([str(exe), "-m", "py_compile", str(path)], check=True, capture_output=True)
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_compile_pins_with_hashes_under_a_cutoff() -> None:
    exe, _ = pythons.find("3.11")
    lock = uv.compile(exe, ["six", "packaging<25"], cutoff="2025-01-01")
    assert isinstance(lock, Lock)
    assert lock.version("six") == "1.17.0"  # the newest six before the cutoff
    assert lock.version("packaging") == "24.2"
    assert all(p.hashes and p.hashes[0].startswith("sha256:") for p in lock.pins)
    again = uv.compile(exe, ["packaging<25", "six"], cutoff="2025-01-01")
    assert isinstance(again, Lock) and again.hash == lock.hash


def test_unresolvable_request_is_a_conflict_with_uvs_reason() -> None:
    from runner.signatures import normalise

    exe, _ = pythons.find("3.11")
    result = uv.compile(exe, ["protobuf==3.19.6", "onnx==1.17.0"], cutoff="2025-06-01")
    assert isinstance(result, uv.Conflict)
    assert "protobuf" in result.reason
    assert normalise("ResolutionConflict", result.reason) == "ResolutionConflict(protobuf)"


def test_uv_env_passes_index_settings_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UV_DEFAULT_INDEX", "https://mirror.example/simple")
    monkeypatch.setenv("UV_FIND_LINKS", "/somewhere/wheels")
    monkeypatch.setenv("VIRTUAL_ENV", "/elsewhere")
    monkeypatch.setenv("UV_PYTHON", "3.7")
    env = uv.uv_env()
    assert env["UV_DEFAULT_INDEX"] == "https://mirror.example/simple"
    assert env["UV_FIND_LINKS"] == "/somewhere/wheels"
    assert "VIRTUAL_ENV" not in env and "UV_PYTHON" not in env
    assert env["UV_NO_CONFIG"] == "1" and env["UV_PYTHON_DOWNLOADS"] == "never"
    assert uv.index_settings() == {"UV_DEFAULT_INDEX": "https://mirror.example/simple",
                                   "UV_FIND_LINKS": "/somewhere/wheels"}
    # index settings are part of an environment's identity
    a = Environment(python="3.11", requirements=("six",))
    b = Environment(python="3.11", requirements=("six",), index=tuple(uv.index_settings().items()))
    assert a.hash != b.hash and a.id == b.id
    assert b.index_url == "https://mirror.example/simple"


def test_parse_lock_reads_continuation_lines() -> None:
    text = "six==1.17.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n# comment\nTyping_Extensions==4.12.2 \\\n" \
           "    --hash=sha256:cc\n"
    pins = parse_lock(text)
    assert pins == (Pin("six", "1.17.0", ("sha256:aa", "sha256:bb")),
                    Pin("typing-extensions", "4.12.2", ("sha256:cc",)))
