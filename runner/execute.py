"""The only module that spawns the worker: one process per environment, watched for time and memory.

A crash, a step over its timeout or a worker over its memory limit is recorded against the step that was
running (the worker wrote its `start` line first), and a new worker takes the cases that are left.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matrix.routes import ROUTES, SPLIT_ROUTES
from runner.results import StepResult, StepStatus, parse_lines
from runner.stop import Stop, Stopped

log = logging.getLogger(__name__)

WORKER = Path(__file__).parent / "worker" / "main.py"
PROBE = Path(__file__).parent / "worker" / "probe.py"
PROBES = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "torch_then_tensorflow": "torch,tensorflow",
    "tensorflow_then_torch": "tensorflow,torch",
}
POLL_SECONDS = 0.25
GRACE_SECONDS = 5.0
_PASSED_THROUGH = ("HOME", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                   "MKL_NUM_THREADS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@dataclass(frozen=True)
class Job:
    """A case as the worker receives it."""

    key: str
    model: str
    route: str
    exporter: str
    opset: int
    target: str = ""  # saved_model | tflite | keras on TF routes (issue 11)
    options: dict[str, str] = field(default_factory=dict)  # converter keyword -> value, e.g. tflite_backend
    artifact_root: str | None = None  # split chains, export side: where the worker stores the artifact
    artifact: str | None = None  # split chains, runtime side: the artifact folder the case starts from

    @property
    def steps(self) -> tuple[str, ...]:
        split = self.artifact_root is not None or self.artifact is not None
        return SPLIT_ROUTES[self.route] if split else ROUTES[self.route]


@dataclass
class Outcome:
    """What came back for one environment: step results per case key, worker attempts and peak memory."""

    steps: dict[str, list[StepResult]] = field(default_factory=dict)
    attempts: int = 0
    peak_rss: int = 0


def worker_env(venv: Path, tmp: Path) -> dict[str, str]:
    """A minimal environment, as if the venv were activated: its bin first on PATH."""
    env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
    env.update(
        # onnx2tf simplifies the graph by running the `onnxsim` command by name (three passes) and only warns
        # when that fails: without the venv's bin first it would convert the unsimplified graph, or simplify with
        # whatever onnxsim the host has, and the result would not be the environment's.
        PATH=os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
        VIRTUAL_ENV=str(venv),
        TMPDIR=str(tmp),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",  # CPU only: results must not depend on which host had a GPU
        PYTHONHASHSEED="0",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("LANG", "C.UTF-8")
    return env


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills the worker if the runner dies (even by SIGKILL)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _tree_rss(pid: int) -> int:
    """Resident memory of the worker and every descendant (converters spawn children)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
            # Closed by `with` even when a process exits mid-walk and reading its children raises.
            with os.scandir(f"/proc/{current}/task") as tasks:
                for task in tasks:
                    with open(f"{task.path}/children", "rb") as fh:
                        todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def stop(proc: subprocess.Popen[bytes], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the whole process group, wait a grace period, then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Children still in the group (one that ignored SIGTERM outlives its parent): SIGKILL is
    # delivered asynchronously, so wait until none is left running before the next worker starts.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10.0
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_alive(pgid: int) -> list[int]:
    """Pids of the group's members that are not yet dead (zombies awaiting their reaper do not count)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def probe_memory(venv: Path, tmp: Path, timeout: float = 300) -> dict[str, object]:
    """Peak RSS with PyTorch alone, TensorFlow alone and both in one process, in each import order."""
    tmp.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {}
    for label, modules in PROBES.items():
        argv = [str(venv / "bin" / "python"), "-I", str(PROBE), modules]
        log.debug("+ %s", shlex.join(argv))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=worker_env(venv, tmp), start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            figures[label] = {"status": "timeout"}
            continue
        if proc.returncode == 0:
            figures[label] = {"status": "ok", **json.loads(out.decode().strip().splitlines()[-1])}
        elif proc.returncode < 0:
            figures[label] = {"status": "crash", "signal": signal.Signals(-proc.returncode).name}
        else:
            last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
            figures[label] = {"status": "fail", "message": last[:500]}
    return figures


def execute(
    venv: Path,
    jobs: Sequence[Job],
    *,
    corpus: Path,
    workdir: Path,
    step_timeout: float,
    memory_limit: int,
    on_case: Callable[[str, list[StepResult]], None] | None = None,
    stopping: Stop | None = None,
) -> Outcome:
    """Run every job in the venv; restart the worker after a crash until each job has its steps.

    `on_case` gets each case as soon as its `case_end` line arrives, while the worker goes on: a runner
    killed later loses only the case that was running. On a stop request (`stopping`) the current case may
    finish until the stop's case deadline; then the worker is stopped, the case it was in is left unrecorded
    (a resumed run takes it again) and `Stopped` is raised."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    outcome = Outcome()
    remaining = list(jobs)
    by_key = {j.key: j for j in jobs}
    while remaining:
        if stopping:
            stopping.check()
        outcome.attempts += 1
        attempt = outcome.attempts
        cases_file = workdir / f"cases-{attempt}.json"
        out_file = workdir / f"steps-{attempt}.jsonl"
        log_file = workdir / f"worker-{attempt}.log"
        cases_file.write_text(json.dumps({
            "corpus": str(corpus),
            "workdir": str(workdir / "cases"),
            "cases": [j.__dict__ for j in remaining],
        }))
        out_file.touch()
        argv = [str(venv / "bin" / "python"), "-I", str(WORKER), "--cases", str(cases_file), "--out", str(out_file)]
        log.debug("+ %s", shlex.join(argv))
        collector = _Collector(by_key, outcome, on_case)
        with open(log_file, "wb") as log_fh:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                env=worker_env(venv, workdir / "tmp"), cwd=workdir, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            try:
                killed_for = _watch(proc, out_file, step_timeout, memory_limit, outcome, collector.feed, stopping)
            except BaseException:
                stop(proc)  # `on_case` failed (e.g. the database went away) while the worker ran: take it down too
                raise
        if killed_for == "stop":
            # Not a result: the case was cut short by us, not by its environment. Keep nothing of it.
            raise Stopped(stopping.name if stopping else "stop")
        records = collector.finish()
        tail = log_file.read_text(errors="replace")[-3000:]
        progressed = collector.progressed
        started = _interrupted(records, by_key, outcome)
        if started is not None:
            key, step_name, ordinal = started
            status, message = _death(proc.returncode, killed_for, step_timeout, memory_limit)
            steps = outcome.steps.setdefault(key, [])
            steps.append(StepResult(
                case=key, step=step_name, ordinal=ordinal, status=status, error_type=status.title(),
                message=message, details={"worker_log_tail": tail},
            ))
            for later, name in enumerate(by_key[key].steps[ordinal + 1 :], start=ordinal + 1):
                steps.append(StepResult(case=key, step=name, ordinal=later, status=StepStatus.skip,
                                        message=f"{step_name}: {status}"))
            if on_case:
                on_case(key, steps)
            progressed = True
        remaining = [j for j in remaining if j.key not in outcome.steps]
        if remaining and not progressed:
            # The worker died before any case started (e.g. the corpus does not import): say so once.
            corpus_error = next((str(r["message"]) for r in records if r.get("event") == "corpus_error"), None)
            reason = corpus_error or f"worker exited with code {proc.returncode} before starting a case:\n{tail}"
            for job in remaining:
                outcome.steps[job.key] = [StepResult(
                    case=job.key, step=job.steps[0], ordinal=0, status=StepStatus.error,
                    error_type="CorpusError" if corpus_error else "WorkerFailed", message=reason,
                )]
                if on_case:
                    on_case(job.key, outcome.steps[job.key])
            remaining = []
    return outcome


def _watch(
    proc: subprocess.Popen[bytes], out_file: Path, step_timeout: float, memory_limit: int, outcome: Outcome,
    on_record: Callable[[dict[str, object]], None], stopping: Stop | None = None,
) -> str | None:
    """Poll until the worker exits, passing on each complete line; kill it on a step timeout, past the
    memory limit, or on a stop request once the current case ended or its stop deadline passed."""
    current_start: float | None = None
    killed_for: str | None = None
    in_case = ended_on_stop = False
    reader = _LineReader(out_file)
    while proc.poll() is None:
        time.sleep(POLL_SECONDS)
        for rec in reader.read():
            event = rec.get("event")
            if event == "start":
                current_start = time.monotonic()
            elif event in ("end", "case_end"):
                current_start = None
            in_case = event in ("start", "end") or (in_case and event != "case_end")
            # A case that ended after the stop came is the one we waited for: the worker has already begun the
            # next by the time we read this line, and that one is given up at once. (A line read after the stop
            # may have been written before it: the worker's clock says which.)
            ended_on_stop = ended_on_stop or bool(
                stopping and stopping.requested and event == "case_end"
                and float(rec.get("t") or 0) >= stopping.requested_wall)  # type: ignore[arg-type]
            on_record(rec)
        if stopping and stopping.requested and (
                not in_case or ended_on_stop or time.monotonic() > stopping.case_deadline()):
            # The worker's own SIGTERM grace comes out of what is left of the stop's grace period.
            stop(proc, grace=min(GRACE_SECONDS, max(0.5, stopping.deadline() - time.monotonic() - 2.0)))
            killed_for = "stop"
            break
        rss = _tree_rss(proc.pid)
        outcome.peak_rss = max(outcome.peak_rss, rss)
        if rss > memory_limit:
            stop(proc)
            killed_for = "memory"
            break
        if current_start is not None and time.monotonic() - current_start > step_timeout:
            stop(proc)
            killed_for = "timeout"
            break
    else:
        stop(proc)  # reap children the worker left behind
    for rec in reader.read(final=True):  # what the worker wrote between the last poll and its exit
        on_record(rec)
    return killed_for


class _LineReader:
    """The worker's JSON lines, read as they are appended; a line is taken only once its newline is there."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.buffer = path, 0, b""

    def read(self, *, final: bool = False) -> list[dict[str, object]]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        if final and self.buffer:  # a last line without its newline: whole, or torn by the worker's death
            lines.append(self.buffer)
            self.buffer = b""
        return parse_lines([line.decode("utf-8", errors="replace") for line in lines])


class _Collector:
    """One worker attempt's lines → step results per case, handed to `on_case` at each `case_end`."""

    def __init__(self, by_key: dict[str, Job], outcome: Outcome,
                 on_case: Callable[[str, list[StepResult]], None] | None) -> None:
        self.by_key, self.outcome, self.on_case = by_key, outcome, on_case
        self.records: list[dict[str, object]] = []
        self.pending: dict[str, list[StepResult]] = {}
        self.progressed = False

    def feed(self, rec: dict[str, object]) -> None:
        self.records.append(rec)
        event = rec.get("event")
        if event == "end":
            result = StepResult.model_validate(rec)
            self.pending.setdefault(result.case, []).append(result)
        elif event == "case_end":
            key = str(rec["case"])
            if key in self.by_key:
                self.outcome.steps[key] = self.pending.pop(key, [])
                if self.on_case:
                    self.on_case(key, self.outcome.steps[key])
                self.progressed = True

    def finish(self) -> list[dict[str, object]]:
        """Keep the steps of the case that was running when the worker died; return every line read."""
        for key, steps in self.pending.items():
            self.outcome.steps.setdefault(key, []).extend(steps)
        self.pending = {}
        return self.records


def _interrupted(
    records: list[dict[str, object]], by_key: dict[str, Job], outcome: Outcome
) -> tuple[str, str, int] | None:
    """The (case, step, ordinal) the worker was in when it died: an open start line, or the step
    after the last one it finished when it died between two steps of a case."""
    open_step: tuple[str, str, int] | None = None
    last_case: str | None = None
    for rec in records:
        if rec.get("event") == "start":
            open_step = (str(rec["case"]), str(rec["step"]), int(rec["ordinal"]))  # type: ignore[call-overload]
            last_case = open_step[0]
        elif rec.get("event") == "end" and open_step and rec.get("case") == open_step[0] \
                and rec.get("step") == open_step[1]:
            open_step = None
        elif rec.get("event") == "case_end":
            last_case = None
    if open_step is not None:
        return open_step
    if last_case is not None and last_case in by_key:
        done = len(outcome.steps.get(last_case, []))
        names = by_key[last_case].steps
        if done < len(names):
            return last_case, names[done], done
    return None


def _death(
    returncode: int | None, killed_for: str | None, step_timeout: float, memory_limit: int
) -> tuple[StepStatus, str]:
    if killed_for == "timeout":
        return StepStatus.timeout, f"step exceeded {step_timeout:g} s; process group stopped"
    if killed_for == "memory":
        return StepStatus.oom, f"worker RSS passed the limit of {memory_limit // 2**20} MiB; process group killed"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        if name == "SIGKILL":
            return StepStatus.oom, "worker killed by SIGKILL (likely the kernel's OOM killer)"
        return StepStatus.crash, f"worker died from {name}"
    return StepStatus.crash, f"worker exited with code {returncode} in the middle of the step"
