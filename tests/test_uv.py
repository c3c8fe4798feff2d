"""The uv seam for real: interpreters by absolute path, a real resolution, a real conflict, env passthrough."""

from __future__ import annotations

import py_compile
import shutil
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


def test_only_uv_py_spawns_uv() -> None:
    """The seam: no other runner module looks uv up or builds a uv command line; KNOWNGOOD_UV is read by Settings."""
    runner = Path(__file__).parents[1] / "runner"
    offenders = [p.name for p in runner.glob("*.py") if p.name != "uv.py"
                 and any(s in p.read_text() for s in ('which("uv")', '"python", "find"'))]
    offenders += [p.name for p in runner.glob("*.py") if 'environ.get("KNOWNGOOD_UV")' in p.read_text()]
    assert offenders == []


def test_configured_uv_is_the_one_that_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KNOWNGOOD_UV reaches Settings.uv, and that binary (a wrapper logging its argv, then the real uv) is run."""
    from store.settings import Settings

    log = tmp_path / "argv.log"
    wrapper = tmp_path / "uv-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {uv.uv_binary()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("KNOWNGOOD_UV", str(wrapper))
    settings = Settings()
    assert settings.uv == str(wrapper)
    assert uv.find_python("3.11", uv_path=settings.uv) is not None
    resolved = environments.resolve(Environment(python="3.11", requirements=("six",), cutoff="2025-01-01"),
                                    uv_path=settings.uv)
    assert resolved.lock is not None and resolved.lock.version("six") == "1.17.0"
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [["python", "find"], ["pip", "compile"]]


def test_a_configured_uv_that_is_not_there(tmp_path: Path) -> None:
    from runner.errors import UvNotFound

    missing = str(tmp_path / "no-uv")
    assert uv.find_python("3.11", uv_path=missing) is None  # the last place to look, not a requirement
    with pytest.raises(UvNotFound, match=r"KNOWNGOOD_UV: expected the path of a uv binary, got '.*no-uv'"):
        uv.compile(Path("/usr/bin/python3"), ["six"], uv_path=missing)


def _stored(lock_text: str | None, status: str, error: str | None = None, age: float = 0) -> object:
    import datetime as dt

    from store.models import Environment as EnvironmentRow

    return EnvironmentRow(lock_text=lock_text, status=status, error=error,
                          resolved_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age))


LOCK = "six==1.17.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"


@pytest.mark.parametrize(("cutoff", "age", "reused"),
                         [("2025-01-01", 10**6, True), (None, 5, True), (None, 700, False)])
def test_a_stored_resolution_is_reused_without_asking_uv(tmp_path: Path, cutoff: str | None, age: float,
                                                        reused: bool) -> None:
    """With a cutoff, or within the ttl, the stored lock or conflict is the answer; uv (absent here) is not asked."""
    from runner.errors import UvNotFound

    env = Environment(python="3.11", requirements=("six",), cutoff=cutoff)
    no_uv = str(tmp_path / "no-uv")
    for stored in (_stored(LOCK, "installed", age=age), _stored(None, "conflict", "no solution", age=age)):
        if not reused:
            with pytest.raises(UvNotFound):
                environments.resolve(env, stored, ttl=600, uv_path=no_uv)  # type: ignore[arg-type]
            continue
        got = environments.resolve(env, stored, ttl=600, uv_path=no_uv)  # type: ignore[arg-type]
        assert got.reused and got.python_exe is not None
        assert (got.lock.version("six") if got.lock else got.conflict) in ("1.17.0", uv.Conflict("no solution"))


@pytest.mark.parametrize("damage", ["interpreter", "distribution"])
def test_a_damaged_venv_with_its_marker_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """A venv whose marker still names its lock but which lost files (a cleaner, a concurrent rm) is rebuilt,
    not handed to a worker that would die on a missing interpreter or import."""
    exe, full = pythons.find("3.11")
    lock = uv.compile(exe, ["six"], cutoff="2025-01-01")
    assert isinstance(lock, Lock)
    resolved = environments.Resolved(Environment(python="3.11", requirements=("six",)), exe, full, lock)
    path, built = environments.install(tmp_path, resolved)
    assert built and environments.install(tmp_path, resolved) == (path, False)  # intact: reused
    if damage == "interpreter":
        (path / "bin" / "python").unlink()
    else:
        for p in (path / "lib").glob("python3.11/site-packages/six*"):
            p.unlink() if p.is_file() else shutil.rmtree(p)
    assert (path / environments.MARKER).is_file()
    assert environments.install(tmp_path, resolved) == (path, True)
    assert uv.freeze(path) == {"six": "1.17.0"}
