"""onnx2tf with its default outputs vs only what tf_run reads (`disable_model_save`), in the smoke environment.

Conversion dominates a case's time, and by default onnx2tf also writes a SavedModel and float32/float16
.tflite files that knowngood never reads. Both settings must give the same TF outputs (so nothing
measured changes); the figure is the convert-time ratio. Prints a table. Run: uv run python bench/onnx2tf_settings.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench._env import ROOT, smoke_environment
from runner.execute import worker_env

INNER = r"""
import importlib.util, json, os, shutil, sys, time
import numpy as np, torch, onnx2tf
corpus_dir = sys.argv[1]; work = sys.argv[2]; models = sys.argv[3].split(",")
spec = importlib.util.spec_from_file_location("kc", os.path.join(corpus_dir, "__init__.py"),
                                              submodule_search_locations=[corpus_dir])
corpus = importlib.util.module_from_spec(spec); sys.modules["kc"] = corpus; spec.loader.exec_module(corpus)
rows = []
# Warm-up (not counted): the first conversion in a process pays TF's own start-up, whichever setting runs it.
_w = corpus.load("control_flow"); _p = os.path.join(work, "warmup.onnx")
torch.onnx.export(_w.build(), tuple(_w.examples()[0].args), _p, opset_version=17, input_names=["input_0"],
                  dynamo=False)
onnx2tf.convert(input_onnx_file_path=_p, output_folder_path=os.path.join(work, "w"), non_verbose=True,
                disable_model_save=True)
for index, name in enumerate(models):
    ms = corpus.load(name); module = ms.build(); examples = ms.examples()
    args = tuple(examples[0].args); names = ["input_%d" % i for i in range(len(args))]
    path = os.path.join(work, name + ".onnx")
    torch.onnx.export(module, args, path, opset_version=17, input_names=names, dynamo=False)
    outs = {}
    settings = [("default", {}), ("knowngood", {"disable_model_save": True})]
    for label, extra in (settings if index % 2 == 0 else settings[::-1]):  # alternate who goes first
        out_dir = os.path.join(work, name + "-" + label)
        t = time.perf_counter()
        model = onnx2tf.convert(input_onnx_file_path=path, output_folder_path=out_dir, non_verbose=True,
                                keep_shape_absolutely_input_names=names, **extra)
        seconds = time.perf_counter() - t
        written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs) \
            if os.path.isdir(out_dir) else 0
        arrays = [a.numpy() for a in args]
        y = model(arrays if len(arrays) > 1 else arrays[0], training=False)
        outs[label] = np.asarray(y)
        rows.append({"model": name, "setting": label, "seconds": seconds, "bytes_written": written})
        shutil.rmtree(out_dir, ignore_errors=True)
    rows.append({"model": name, "same_outputs": bool(np.array_equal(outs["default"], outs["knowngood"]))})
print("RESULT " + json.dumps(rows))
"""


def main() -> None:
    venv, _ = smoke_environment()
    models = ["resnet", "grid_sample", "batchnorm", "control_flow"]
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-I", "-c", INNER, str(ROOT / "matrix" / "corpus"), work, ",".join(models)],
            capture_output=True, text=True, env=worker_env(venv, Path(work)), check=False,
        )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"inner script failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(line.removeprefix("RESULT "))
    table = Table(title="onnx2tf.convert: default outputs vs disable_model_save (smoke environment)")
    for col in ("model", "default s", "knowngood s", "ratio", "default writes", "same outputs"):
        table.add_column(col, justify="right")
    total = {"default": 0.0, "knowngood": 0.0}
    for model in models:
        d = next(r for r in rows if r.get("model") == model and r.get("setting") == "default")
        k = next(r for r in rows if r.get("model") == model and r.get("setting") == "knowngood")
        same = next(r for r in rows if r.get("model") == model and "same_outputs" in r)["same_outputs"]
        total["default"] += d["seconds"]
        total["knowngood"] += k["seconds"]
        table.add_row(model, f"{d['seconds']:.2f}", f"{k['seconds']:.2f}", f"{d['seconds'] / k['seconds']:.2f}x",
                      f"{d['bytes_written'] / 2**20:.1f} MiB", str(same))
    table.add_row("all", f"{total['default']:.2f}", f"{total['knowngood']:.2f}",
                  f"{total['default'] / total['knowngood']:.2f}x", "", "")
    Console().print(table)


if __name__ == "__main__":
    main()
