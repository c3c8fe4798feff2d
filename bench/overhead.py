"""The smoke environment's cases through the runner vs a bare script making the same framework calls.

Both run in the same venv; the runner adds the CLI, spec planning, the recorded-case lookup, a worker
process with per-step JSON lines, the time/memory watch and the database writes. Target: at most 1.15x.
Rounds alternate (runner, bare, three times each) on this shared machine. Run: uv run python bench/overhead.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench._env import ROOT, SMOKE, smoke_environment
from matrix import expand, spec
from runner.execute import worker_env

BARE = r"""
import importlib.util, os, sys
import numpy as np, onnx, onnxruntime as ort, torch
corpus_dir, work = sys.argv[1], sys.argv[2]
cases = [c.split(":") for c in sys.argv[3].split(",")]
spec = importlib.util.spec_from_file_location("kc", os.path.join(corpus_dir, "__init__.py"),
                                              submodule_search_locations=[corpus_dir])
corpus = importlib.util.module_from_spec(spec); sys.modules["kc"] = corpus; spec.loader.exec_module(corpus)
for model, route in cases:
    ms = corpus.load(model); examples = ms.examples(); args = tuple(examples[0].args)
    names = ["input_%d" % i for i in range(len(args))]
    path = os.path.join(work, model + route + ".onnx")
    torch.onnx.export(ms.build(), args, path, opset_version=17, input_names=names, dynamo=False)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    ref_model = ms.build()
    with torch.no_grad():
        refs = [[ref_model(*e.args).numpy()] for e in examples]
    try:
        if route == "onnxruntime":
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = [sess.run(None, dict(zip([i.name for i in sess.get_inputs()], [a.numpy() for a in e.args])))
                   for e in examples]
        else:
            import onnx2tf
            km = onnx2tf.convert(input_onnx_file_path=path, output_folder_path=os.path.join(work, "tf"),
                                 non_verbose=True, disable_model_save=True, keep_shape_absolutely_input_names=names)
            got = []
            for e in examples:
                arrays = [a.numpy() for a in e.args]
                got.append([np.asarray(km(arrays if len(arrays) > 1 else arrays[0], training=False))])
        for r, g in zip(refs, got):
            ref64, got64 = np.asarray(r[0], dtype=np.float64), np.asarray(g[0], dtype=np.float64)
            float(np.abs(ref64 - got64.reshape(ref64.shape)).max())
    except Exception as exc:
        print(model, route, type(exc).__name__)
"""


def main() -> None:
    venv, _ = smoke_environment()
    plan = expand.plan(spec.load(SMOKE))
    cases = ",".join(f"{c.model}:{c.route}" for c in plan.items[0][1])
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/bench.db"
        runner = [sys.executable, "-m", "knowngood", "run", str(SMOKE), "--db", db, "--force"]
        bare = [str(venv / "bin" / "python"), "-I", "-c", BARE, str(ROOT / "matrix" / "corpus"), tmp, cases]
        subprocess.run(runner, cwd=ROOT, capture_output=True, check=True)  # warm-up: DB, probes, page cache
        times: dict[str, list[float]] = {"runner": [], "bare": []}
        for _ in range(3):
            for label, argv, env in (("runner", runner, None), ("bare", bare, worker_env(venv, Path(tmp)))):
                started = time.perf_counter()
                subprocess.run(argv, cwd=ROOT, capture_output=True, check=True, env=env)
                times[label].append(time.perf_counter() - started)
    table = Table(title=f"{len(plan.items[0][1])} smoke cases: runner vs bare script, same venv")
    for col in ("", "round 1 s", "round 2 s", "round 3 s", "median s"):
        table.add_column(col, justify="right")
    for label, values in times.items():
        table.add_row(label, *(f"{v:.1f}" for v in values), f"{statistics.median(values):.1f}")
    ratio = statistics.median(times["runner"]) / statistics.median(times["bare"])
    table.add_row("ratio", *(f"{r / b:.2f}x" for r, b in zip(times["runner"], times["bare"], strict=True)),
                  f"{ratio:.2f}x")
    Console().print(table)
    print(f"overhead ratio (median): {ratio:.2f}x  target <= 1.15x: {'met' if ratio <= 1.15 else 'NOT met'}")


if __name__ == "__main__":
    main()
