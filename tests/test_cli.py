"""The command line answers bad input with one line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from knowngood import cli

SPEC = """\
name = "t"
models = ["resnet"]
routes = ["onnxruntime"]

[axes]
python = ["3.11"]
torch = ["==2.0.1"]
"""


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of the command; argparse's own exits count as exit codes."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


def _one_line(err: str) -> str:
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty SQLite database."""
    shutil.copy(sqlite_template, tmp_path / "kg.db")
    return f"sqlite:///{tmp_path / 'kg.db'}"


def test_negative_jobs_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = _fails(capsys, ["run", "spec.toml", "--jobs", "-1"])
    assert code == 2 and "--jobs: expected a whole number of at least 1, got '-1'" in err


def test_jobs_from_the_environment_is_checked_too(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, db: str) -> None:
    monkeypatch.setenv("KNOWNGOOD_JOBS", "-1")
    code, err = _fails(capsys, ["db", "upgrade", "--db", db])
    assert code == 2
    assert _one_line(err) == "error: KNOWNGOOD_JOBS: Input should be greater than or equal to 1, got '-1'"


def test_a_url_that_is_not_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fails(capsys, ["chains", "--models", "resnet", "--route", "onnxruntime", "--db", "notaurl"])
    assert code == 2
    assert _one_line(err) == ("error: --db: expected a database URL such as sqlite:///store.db or "
                              "postgresql://user@host/db, got 'notaurl'")


def test_sqlite_file_in_a_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nope' / 'kg.db'}"
    code, err = _fails(capsys, ["run", "spec.toml", "--db", url])
    assert code == cli.EXIT_DATABASE == 6
    assert _one_line(err) == f"error: cannot open database {url}: directory {tmp_path / 'nope'} does not exist"
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("argv", [["chains", "--models", "resnet", "--route", "onnxruntime"],
                                  ["lock", "--models", "resnet", "--route", "onnxruntime"], ["report"],
                                  ["docs", "--out", "docs-out"]])
def test_reading_a_database_that_holds_nothing_says_what_to_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_template: Path, argv: list[str],
) -> None:
    """A new user's first `knowngood chains` in a fresh clone: no store.db yet. Then one that exists without a
    schema, then one at an older migration. Each is one line with the command that fixes it."""
    import sqlite3

    from store import migrate

    missing = tmp_path / "store.db"
    code, err = _fails(capsys, [*argv, "--db", f"sqlite:///{missing}"])
    assert code == cli.EXIT_DATABASE
    assert _one_line(err) == (f"error: database sqlite:///{missing} does not exist: load the measurements that ship "
                              "with knowngood (`knowngood snapshot import data/snapshot.json.gz`) or record your "
                              "own (`knowngood run SPEC`)")
    assert not missing.exists()  # asking did not create it
    sqlite3.connect(missing).close()
    code, err = _fails(capsys, [*argv, "--db", f"sqlite:///{missing}"])
    assert code == cli.EXIT_DATABASE and "holds no knowngood data: load the measurements" in _one_line(err)
    older = tmp_path / "older.db"
    shutil.copy(sqlite_template, older)
    with sqlite3.connect(older) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0009'")
    code, err = _fails(capsys, [*argv, "--db", f"sqlite:///{older}"])
    assert code == cli.EXIT_DATABASE
    assert _one_line(err).endswith(f"is at migration 0009, this knowngood reads {migrate.head()}: run "
                                   "`knowngood db upgrade` first")


def test_unreachable_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://someone:secret@127.0.0.1:1/kg"
    code, err = _fails(capsys, ["db", "upgrade", "--db", url])
    assert code == cli.EXIT_DATABASE
    assert _one_line(err).startswith("error: cannot open database postgresql://someone:***@127.0.0.1:1/kg: ")
    assert "secret" not in err


def test_snapshot_export_into_a_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  db: str) -> None:
    target = tmp_path / "nope" / "snap.json"
    code, err = _fails(capsys, ["snapshot", "export", str(target), "--db", db])
    assert code == cli.EXIT_OUTPUT == 7
    assert _one_line(err) == f"error: {target}: cannot write here: directory {tmp_path / 'nope'} does not exist"


def test_docs_into_a_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path, db: str) -> None:
    target = tmp_path / "nope" / "docs"
    code, err = _fails(capsys, ["docs", "--out", str(target), "--db", db])
    assert code == cli.EXIT_OUTPUT
    assert _one_line(err) == f"error: --out {target}: cannot write here: directory {tmp_path / 'nope'} does not exist"
    assert not target.parent.exists()


def test_docs_creates_its_own_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path, db: str) -> None:
    assert cli.main(["docs", "--out", str(tmp_path / "docs"), "--db", db]) == 0
    assert (tmp_path / "docs" / "matrix.md").is_file()


def test_chains_with_an_unknown_route(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, err = _fails(capsys, ["chains", "--models", "resnet", "--route", "badroute", "--db", db])
    assert code == 2
    assert _one_line(err).startswith("error: --route: expected one of onnxruntime, ")
    assert err.endswith("got 'badroute'")


@pytest.mark.parametrize("command", ["chains", "lock"])
def test_chains_with_an_unknown_model(capsys: pytest.CaptureFixture[str], db: str, command: str) -> None:
    code, err = _fails(capsys, [command, "--models", "nosuch", "--route", "onnxruntime", "--db", db])
    assert code == 2
    assert _one_line(err) == "error: --models: no results recorded for ['nosuch']; known: []"


def test_no_chain_says_so(capsys: pytest.CaptureFixture[str], db_url: str, make_environment: object,
                          make_run: object, make_case: object) -> None:
    run = make_run()  # type: ignore[operator]
    env = make_environment({"torch": "2.0.1"})  # type: ignore[operator]
    make_case(run, env, "resnet", "onnxruntime", status="fail")  # type: ignore[operator]
    code, err = _fails(capsys, ["chains", "--models", "resnet", "--route", "onnxruntime", "--db", db_url])
    assert code == 1
    assert _one_line(err) == "no known-good chain for that query"


def test_spec_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = _fails(capsys, ["plan", str(tmp_path)])
    assert code == 2 and _one_line(err) == f"error: {tmp_path}: expected a TOML spec file, got a directory"


def test_exit_codes_are_documented() -> None:
    text = cli.parser().format_help()
    for code in (0, 1, 2, 3, 4, 5, 6, 7):
        assert f"\n  {code} " in text


def test_sigterm_before_a_run_has_started_exits_143() -> None:
    """In a container knowngood is PID 1, which ignores a signal it does not handle: the CLI handles SIGTERM from
    its first line, so `docker stop` during start-up (here: a command still busy) ends it at once with 143, where
    the default action would have given -15 here and nothing at all as PID 1."""
    script = ("import time\nfrom knowngood import cli\n"
              "def busy(args):\n    print('ready', flush=True)\n    time.sleep(30)\n    return 0\n"
              "cli.cmd_plan = busy\nraise SystemExit(cli.main(['plan', 'spec.toml']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert time.monotonic() - started < 5
