"""The worker: runs cases inside one environment and appends one JSON line per step event.

Run by path under the environment's interpreter: `python -I runner/worker/main.py --cases F --out F`.
It imports only the standard library, the frameworks of its environment and the corpus, and writes a
`start` line before every step, so whatever kills it is pinned on the step that was running.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import steps as steps_mod  # noqa: E402


def _load_file(name, path):  # type: ignore[no-untyped-def]
    """Import one file by path: the route table lives in matrix/, which is not (and must not be) on sys.path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TABLES = _load_file("knowngood_routes", os.path.join(ROOT, "matrix", "routes.py"))
ROUTES = _TABLES.ROUTES
SPLIT_ROUTES = _TABLES.SPLIT_ROUTES
FRAMEWORKS = _TABLES.WORKER_REPORTED


class Out:
    """Line-buffered JSON lines; each write reaches the kernel before the step it announces runs."""

    def __init__(self, path: str) -> None:
        self.fh = open(path, "a", buffering=1, encoding="utf-8")

    def emit(self, **record: object) -> None:
        self.fh.write(json.dumps(record, default=str) + "\n")
        self.fh.flush()


BUILTIN_CORPUS = os.path.join(ROOT, "matrix", "corpus")
REQUIRED = ("build", "examples", "atol", "rtol")


class CorpusError(Exception):
    """A user corpus that does not follow the interface; the message says what is missing."""


def _import_package(name: str, folder: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Captured:
    """Send the step's stdout and stderr (fds 1 and 2, so C libraries too) to a file; keep its tail."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> Captured:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, saved in zip((1, 2), self.saved):
            os.dup2(saved, target)
            os.close(saved)

    def tail(self, lines: int = 25) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                text = self.ANSI.sub("", fh.read())
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def load_corpus(path: str):  # type: ignore[no-untyped-def]
    """Import the corpus: the built-in package folder, or a user's single file with MODELS.

    A user file may `from knowngood_corpus import ModelSpec, Example, seeded, generator`.
    """
    if os.path.isdir(path):
        return _import_package("knowngood_corpus", path)
    _import_package("knowngood_corpus", BUILTIN_CORPUS)
    spec = importlib.util.spec_from_file_location("knowngood_user_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    models = getattr(module, "MODELS", None)
    if not isinstance(models, dict) or not models:
        raise CorpusError("%s: expected a module-level MODELS dict mapping model names to model specs "
                          "(objects with build, examples, atol, rtol); found %s"
                          % (path, type(models).__name__ if models is not None else "no MODELS"))
    for name, model in models.items():
        missing = [attr for attr in REQUIRED if not hasattr(model, attr)]
        if missing:
            raise CorpusError("%s: MODELS[%r] is missing %s (a model spec needs build(), examples(), atol, "
                              "rtol; optional: unavailable(), export_kwargs(exporter, opset), expected(args), "
                              "dynamic_axes)"
                              % (path, name, ", ".join(missing)))
    return module


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in FRAMEWORKS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with open(args.cases, encoding="utf-8") as fh:
        job = json.load(fh)
    out = Out(args.out)
    out.emit(
        event="worker",
        pid=os.getpid(),
        python=platform.python_version(),
        versions=versions(),
        t=time.time(),
    )
    try:
        corpus = load_corpus(job["corpus"])
    except CorpusError as exc:
        out.emit(event="corpus_error", message=str(exc))
        sys.stderr.write(str(exc) + "\n")
        return 2
    workdir = job["workdir"]
    # A corpus that does not say which of its models load torch._dynamo is assumed to (user files).
    loads_dynamo = getattr(corpus, "LOADS_DYNAMO", None)
    steps_mod.DYNAMO_GUARD = any(
        # `default` is the dynamo exporter from torch 2.9
        case["exporter"] in ("dynamo", "default") or loads_dynamo is None or case["model"] in loads_dynamo
        or case["route"] == "litert-torch"  # torch.export underneath, and LiteRT may bring TensorFlow
        for case in job["cases"]
    )
    for case in job["cases"]:
        run_case(out, corpus, workdir, case)
    out.emit(event="done", t=time.time())
    return 0


def run_case(out: Out, corpus, workdir: str, case: dict) -> None:  # type: ignore[no-untyped-def]
    key = case["key"]
    # A split case names its side: the export side stores an artifact, the runtime side starts from one.
    split = case.get("artifact_root") or case.get("artifact")
    names = SPLIT_ROUTES[case["route"]] if split else ROUTES[case["route"]]
    ctx = steps_mod.Context(corpus=corpus, case=case, workdir=workdir)
    blocked = None  # (status, message) once a step did not pass: the rest are skipped
    for ordinal, name in enumerate(names):
        if blocked is not None:
            out.emit(event="end", case=key, step=name, ordinal=ordinal, status="skip",
                     seconds=0.0, peak_rss=None, message=blocked)
            continue
        out.emit(event="start", case=key, step=name, ordinal=ordinal, t=time.time())
        steps_mod.reset_peak_rss()
        started = time.perf_counter()
        result = {"status": "ok"}
        capture = Captured(os.path.join(ctx.dir, "step-output.txt"))
        try:
            with capture:
                result.update(getattr(steps_mod, "step_" + name)(ctx) or {})
        except SystemExit as exc:
            # onnx2tf reports a node it cannot convert by printing why and calling sys.exit(1).
            tail = capture.tail()
            result = {"status": "fail", "error_type": "ConverterExit",
                      "message": steps_mod.clip("exit(%s) during %s:\n%s" % (exc.code, name, tail)),
                      "details": {"output_tail": tail}}
        except steps_mod.Skip as exc:
            result = {"status": "skip", "message": str(exc)}
        except steps_mod.StepFailed as exc:
            result = {"status": "fail", "error_type": exc.error_type, "message": str(exc),
                      "details": exc.details, "max_abs_diff": exc.details.get("max_abs_diff")}
        except Exception as exc:  # any framework error is a result, recorded verbatim
            status = "error" if name == "reference" else "fail"
            result = {"status": status, "error_type": type(exc).__name__,
                      "message": steps_mod.clip(str(exc) or repr(exc)),
                      "details": {"traceback": steps_mod.clip(traceback.format_exc(), 6000),
                                  "output_tail": capture.tail()}}
        result["seconds"] = round(time.perf_counter() - started, 4)
        result["peak_rss"] = steps_mod.peak_rss()
        out.emit(event="end", case=key, step=name, ordinal=ordinal, **result)
        if result["status"] != "ok":
            blocked = "%s: %s" % (name, result["status"])
    ctx.close()
    out.emit(event="case_end", case=key, t=time.time())


if __name__ == "__main__":
    sys.exit(main())
