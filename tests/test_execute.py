"""Fault injection with real child processes: each fault is recorded against the right step and the run goes on."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from runner.execute import Job, execute

CORPUS = Path(__file__).parent / "fixtures" / "corpus" / "faults.py"
VENV = Path(sys.prefix)  # the test interpreter stands in for a case environment


def _job(model: str) -> Job:
    return Job(key=f"{model}.onnxruntime.torchscript.op17", model=model, route="onnxruntime",
               exporter="torchscript", opset=17)


def _run(tmp_path: Path, models: list[str], **kw: float) -> dict:
    outcome = execute(VENV, [_job(m) for m in models], corpus=CORPUS, workdir=tmp_path,
                      step_timeout=kw.get("timeout", 30), memory_limit=int(kw.get("memory", 4 * 2**30)))
    return {key.split(".")[0]: steps for key, steps in outcome.steps.items()} | {"_attempts": outcome.attempts}


def test_every_fault_is_pinned_to_its_step_and_the_run_goes_on(tmp_path: Path) -> None:
    started = time.monotonic()
    got = _run(tmp_path, ["segfault", "exit", "hang", "allocate", "broken", "unavailable", "child_hang"],
               timeout=3, memory=400 * 2**20)
    table = {m: (s[0].step, str(s[0].status)) for m, s in got.items() if m != "_attempts"}
    assert table == {
        "segfault": ("export", "crash"),
        "exit": ("export", "crash"),
        "hang": ("export", "timeout"),
        "allocate": ("export", "oom"),
        "broken": ("export", "fail"),
        "unavailable": ("export", "skip"),
        "child_hang": ("export", "timeout"),
    }
    assert "SIGSEGV" in got["segfault"][0].message
    assert "code 3" in got["exit"][0].message
    assert "400 MiB" in got["allocate"][0].message
    assert got["broken"][0].error_type == "RuntimeError"
    assert got["unavailable"][0].message == "this torch cannot express it"
    # every later step of a failed case is recorded as skipped, so each case has its full route
    for model, steps in got.items():
        if model != "_attempts":
            assert [s.step for s in steps] == ["export", "check", "reference", "runtime", "parity"]
            assert {str(s.status) for s in steps[1:]} == {"skip"}
    # a new worker after each death but the last: segfault, exit, hang, allocate (then child_hang ends it)
    assert got["_attempts"] == 5
    # the child that ignored SIGTERM went with its group
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).find("SIG_IGN") >= 0]
    assert leftovers == []
    assert time.monotonic() - started < 60


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_a_corpus_that_does_not_import_is_an_error_not_a_loop(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('no such thing')\n")
    outcome = execute(VENV, [_job("a"), _job("b")], corpus=bad, workdir=tmp_path / "w", step_timeout=30,
                      memory_limit=2**32)
    assert outcome.attempts == 1
    for steps in outcome.steps.values():
        assert steps[0].status == "error"
        assert "no such thing" in (steps[0].message or "")


@pytest.mark.parametrize("torn", ['{"event": "end", "case": "x"', ""])
def test_parse_lines_drops_a_torn_last_line(torn: str) -> None:
    from runner.results import parse_lines

    assert parse_lines(['{"event": "start"}', torn]) == [{"event": "start"}]


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("x = 1\n", "expected a module-level MODELS dict"),
        ("MODELS = {}\n", "expected a module-level MODELS dict"),
        ("class M:\n    build = examples = None\nMODELS = {'m': M()}\n", "MODELS['m'] is missing atol, rtol"),
    ],
)
def test_user_corpus_without_the_interface_says_what_is_missing(tmp_path: Path, source: str, fragment: str) -> None:
    user = tmp_path / "mine.py"
    user.write_text(source)
    outcome = execute(VENV, [_job("m")], corpus=user, workdir=tmp_path / "w", step_timeout=30, memory_limit=2**32)
    (step,) = outcome.steps[_job("m").key]
    assert step.status == "error" and step.error_type == "CorpusError"
    assert str(user) in (step.message or "") and fragment in (step.message or "")


def test_each_case_is_handed_over_as_its_end_line_arrives(tmp_path: Path) -> None:
    """A finished case must reach the database while the worker still runs: a kill then loses nothing done."""
    calls: list[tuple[str, float]] = []
    execute(VENV, [_job("broken"), _job("hang")], corpus=CORPUS, workdir=tmp_path, step_timeout=4,
            memory_limit=2**32, on_case=lambda key, steps: calls.append((key.split(".")[0], time.monotonic())))
    assert [model for model, _ in calls] == ["broken", "hang"]
    # `broken` ended at once; `hang` only when its step timed out four seconds later
    assert calls[1][1] - calls[0][1] > 2.5
