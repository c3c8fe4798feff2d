"""Graceful stops: a real SIGTERM or SIGINT during a real case; the run exits within its grace period, keeps every
case that finished, is marked interrupted, and a rerun resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from matrix import expand, spec
from runner.execute import Job, execute
from runner.stop import Stop, Stopped
from store import migrate
from store.db import make_engine, make_sessionmaker
from store.models import Case, Run

ROOT = Path(__file__).parents[1]
SLEEPY = ROOT / "tests" / "fixtures" / "corpus" / "sleepy.py"
FAULTS = ROOT / "tests" / "fixtures" / "corpus" / "faults.py"
GRACE = 14.0  # the current case may take 14 - STOP_RESERVE (8) = 6 s to finish
SPEC = f"""\
name = "sleepy"
models = ["nap1", "nap2", "long", "nap3"]
routes = ["onnxruntime"]
corpus = "{SLEEPY}"
exclude-newer = "2025-01-01"

[axes]
python = ["3.11"]
six = ["==1.16.0"]
"""


def _lines(work: Path) -> list[dict[str, object]]:
    """Every line the worker wrote so far, across attempts."""
    out = []
    for path in sorted(work.glob("*/steps-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return out


def _recorded(db: str) -> dict[str, str]:
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        rows = {m: sg for m, sg in s.execute(select(Case.model, Case.signature))}
        statuses = list(s.scalars(select(Run.status).order_by(Run.started_at)))
    engine.dispose()
    return {**rows, "_runs": ",".join(statuses)}


@pytest.mark.parametrize(
    ("sig", "during", "kept"),
    [
        # nap2 sleeps 2 s: it finishes within the 6 s the grace period leaves it, and is kept
        (signal.SIGTERM, "nap2", {"nap1", "nap2"}),
        # long sleeps 15 s, past those 6 s: given up, and nothing of it recorded
        (signal.SIGINT, "long", {"nap1", "nap2"}),
    ],
    ids=["sigterm-case-finishes", "sigint-case-abandoned"],
)
def test_a_signal_mid_case_stops_within_the_grace_period_and_a_rerun_resumes(
    tmp_path: Path, sig: signal.Signals, during: str, kept: set[str],
) -> None:
    path = tmp_path / "sleepy.toml"
    path.write_text(SPEC)
    db = f"sqlite:///{tmp_path / 'kg.db'}"
    migrate.upgrade(db)
    work = tmp_path / "work"
    env = {**os.environ, "KNOWNGOOD_ENV_ROOT": str(tmp_path / "envs"), "KNOWNGOOD_WORK_ROOT": str(work),
           "KNOWNGOOD_STOP_GRACE": str(GRACE)}
    argv = [sys.executable, "-m", "knowngood", "run", str(path), "--db", db]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not any(r.get("event") == "start" and str(r["case"]).startswith(during) for r in _lines(work)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    signalled = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=GRACE + 30)
    took = time.monotonic() - signalled
    print(f"{sig.name} during {during}: exited after {took:.1f} s (grace {GRACE:g} s)")
    assert proc.returncode == 128 + sig, err[-3000:]
    assert took < GRACE
    assert json.loads(out.strip().splitlines()[-1])["interrupted"] == sig.name

    finished = {str(r["case"]).split(".")[0] for r in _lines(work) if r.get("event") == "case_end"}
    got = _recorded(db)
    assert finished == kept and set(got) - {"_runs"} == kept  # nothing finished is lost, nothing cut short kept
    assert got["_runs"] == "interrupted"
    assert all(sig_ and sig_.startswith("RuntimeError(") for m, sig_ in got.items() if m != "_runs")
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(SLEEPY) in _cmdline(p)]

    resumed = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["skipped_recorded"] == len(kept) and summary["cases"] == {"fail": 4 - len(kept)}
    got = _recorded(db)
    assert set(got) - {"_runs"} == {"nap1", "nap2", "long", "nap3"}
    assert got["_runs"] == "interrupted,finished"
    planned = Counter(c.model for _, cases in expand.plan(spec.load(path)).items for c in cases)
    assert set(planned.values()) == {1}


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_execute_gives_up_a_case_past_the_stop_deadline_and_records_none_of_it(tmp_path: Path) -> None:
    stopping = Stop(grace=9.0)  # case deadline: 1 s after the request
    seen: list[str] = []
    job = Job(key="hang.onnxruntime.torchscript.op17", model="hang", route="onnxruntime", exporter="torchscript",
              opset=17)
    threading.Timer(1.0, stopping.request, args=(signal.SIGTERM,)).start()
    started = time.monotonic()
    with pytest.raises(Stopped, match="SIGTERM"):
        execute(Path(sys.prefix), [job], corpus=FAULTS, workdir=tmp_path, step_timeout=60, memory_limit=2**32,
                on_case=lambda key, steps: seen.append(key), stopping=stopping)
    assert seen == []
    assert time.monotonic() - started < 9.0
