"""Check the model corpus in one case environment (stdlib + torch; onnx/onnxruntime optional).

Run from the repository root:  <venv>/bin/python tests/corpus_check.py [--no-export] [model ...]

For every registered model: builds twice and requires bit-identical outputs on every example; requires
identical shapes/dtypes across a model's examples, except along its declared dynamic axes, where they
must differ; requires the control-flow examples to cover both branches / >= 3 trip counts; a few
model-specific sanity checks. Then (informational, except parity for the models in PARITY_REQUIRED)
exports each available model through the worker's own export function (runner/worker/steps.py) with
the TorchScript exporter at opset 17, the dynamo and default exporters where onnxscript is importable,
and runs the file in onnxruntime at every example, so a dynamic axis is run at the other sizes.
Python 3.8 syntax; exits non-zero on any failed check.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import traceback
import warnings
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_DIR = os.path.join(ROOT, "matrix", "corpus")
# Must pass onnxruntime parity with the TorchScript exporter at opset 17 in the check's environment: the
# baselines, and the issue-10 families whose notes claim a failure elsewhere (converters, older torch), not here.
PARITY_REQUIRED = ("resnet", "transformer", "transformer_padding_mask", "batchnorm", "lstm", "mobilenet", "vit",
                   "interpolate", "dynamic_batch")
EXPORT_OPSET = 17

RESULTS = {"passed": 0, "failed": 0}  # type: Dict[str, int]
FAILURES = []  # type: List[str]


def check(ok, what):  # type: (bool, str) -> bool
    if ok:
        RESULTS["passed"] += 1
    else:
        RESULTS["failed"] += 1
        FAILURES.append(what)
        print("FAIL: %s" % what)
    return ok


def first_line(exc):  # type: (BaseException) -> str
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0]
    if "## Exception summary" in lines:  # the dynamo exporter's first line is generic: add the cause
        rest = lines[lines.index("## Exception summary") + 1:]
        if rest:
            line = line.split(". ")[0] + ". " + rest[0]
    return "%s: %s" % (type(exc).__name__, line[:240])


# --- checks that need no torch -----------------------------------------------------------------------

def check_syntax():  # type: () -> None
    for fname in sorted(os.listdir(CORPUS_DIR)):
        if not fname.endswith(".py"):
            continue
        path = os.path.join(CORPUS_DIR, fname)
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
        try:
            ast.parse(src, filename=path, feature_version=(3, 8))
            ok = True
        except SyntaxError as exc:
            ok = False
            print("  %s: %s" % (fname, exc))
        check(ok, "%s parses as Python 3.8" % fname)


NO_TORCH_SNIPPET = r"""
import sys
class _Block(object):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "numpy":
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, _Block())
sys.path.insert(0, sys.argv[1])
import os
import matrix.corpus as c
assert "torch" not in sys.modules
assert c.REGISTRY, "empty registry"
for name in c.REGISTRY:
    p = c.model_file(name)
    assert os.path.isabs(p) and os.path.isfile(p), p
try:
    c.load("no_such_model")
except KeyError as e:
    assert "resnet" in str(e), str(e)
else:
    raise AssertionError("load(unknown) did not raise KeyError")
print("ok", len(c.REGISTRY))
"""


def check_import_without_torch():  # type: () -> None
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SNIPPET, ROOT],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:])
    check(proc.returncode == 0, "matrix.corpus imports, lists and hashes without torch")


# --- loading like the worker does ---------------------------------------------------------------------

def load_corpus_like_worker():  # type: ignore[no-untyped-def]
    init = os.path.join(CORPUS_DIR, "__init__.py")
    spec = importlib.util.spec_from_file_location("knowngood_corpus", init,
                                                  submodule_search_locations=[CORPUS_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def outputs(module, example):  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        out = module(*example.args)
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out)


def same_tensors(a, b):  # type: ignore[no-untyped-def]
    import torch

    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def signature(example, dynamic=None):  # type: ignore[no-untyped-def]
    """Shapes and dtypes of an example, with the declared dynamic axes blanked out."""
    dynamic = dynamic or {}
    out = []
    for i, a in enumerate(example.args):
        axes = dynamic.get("input_%d" % i) or {}
        out.append((tuple(None if d in axes else n for d, n in enumerate(a.shape)), str(a.dtype)))
    return out


def load_steps():  # type: ignore[no-untyped-def]
    """The worker's steps module, loaded by path as the worker loads it (stdlib-only at import)."""
    folder = os.path.join(ROOT, "runner", "worker")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as main.py does: steps imports its sibling deploy.py
    path = os.path.join(folder, "steps.py")
    spec = importlib.util.spec_from_file_location("knowngood_worker_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_model(corpus, name):  # type: ignore[no-untyped-def]
    """Returns (row, spec, available)."""
    import torch

    spec = corpus.load(name)
    check(spec.name == name and spec.family == corpus.REGISTRY[name] and spec.note and spec.tolerance_reason,
          "%s: name/family/note/tolerance_reason filled" % name)
    check(os.path.basename(corpus.model_file(name)) == spec.family + ".py", "%s: model_file" % name)
    reason = spec.unavailable()
    row = {"name": name, "family": spec.family, "examples": "-", "atol": spec.atol, "rtol": spec.rtol,
           "unavailable": reason or ""}
    if reason:
        check("\n" not in reason, "%s: unavailable() is one line" % name)
        return row, spec, False
    ex1, ex2 = spec.examples(), spec.examples()
    row["examples"] = len(ex1)
    check(len(ex1) >= 2, "%s: at least 2 examples" % name)
    check(all(same_tensors(list(a.args), list(b.args)) for a, b in zip(ex1, ex2)),
          "%s: examples() is deterministic" % name)
    dynamic = getattr(spec, "dynamic_axes", None) or {}
    check(all(signature(e, dynamic) == signature(ex1[0], dynamic) for e in ex1),
          "%s: all examples share shapes/dtypes %s" % (name, signature(ex1[0], dynamic)))
    if dynamic:
        row["dynamic"] = dynamic
        for key, axes in sorted(dynamic.items()):
            if not key.startswith("input_"):
                continue
            index = int(key.split("_")[1])
            for axis in axes:
                sizes = [int(e.args[index].shape[axis]) for e in ex1]
                others = set(sizes[1:]) - {sizes[0]}
                check(len(others) >= 2, "%s: %s axis %d runs >= 2 sizes other than the traced %d, got %s"
                      % (name, key, axis, sizes[0], sizes))
    m1, m2 = spec.build(), spec.build()
    want_train = name == "batchnorm_train"
    check(m1.training == want_train, "%s: build() returns %s mode" % (name, "train" if want_train else "eval"))
    for i, ex in enumerate(ex1):
        o1, o2 = outputs(m1, ex), outputs(m2, ex)
        check(same_tensors(o1, o2), "%s: two builds bit-identical on example %d (%s)" % (name, i, ex.note))
        check(all(bool(torch.isfinite(t).all()) for t in o1), "%s: finite outputs on example %d" % (name, i))
    kw = spec.export_kwargs("torchscript", EXPORT_OPSET)
    check(isinstance(kw, dict), "%s: export_kwargs returns a dict" % name)
    if spec.expected is not None:
        takes = [spec.expected(tuple(e.args)) for e in ex1]
        row["takes"] = takes
        if name == "control_flow_loop":
            check(len(set(takes)) >= 3, "%s: >= 3 distinct trip counts, got %s" % (name, takes))
        else:
            check({"then", "else"} <= set(takes), "%s: both branches taken, got %s" % (name, takes))
        check(takes[0] != takes[-1] or len(set(takes)) > 1, "%s: examples disagree" % name)
    elif spec.family == "control_flow":
        check(False, "%s: control-flow model without expected()" % name)
    return row, spec, True


# --- model-specific sanity ----------------------------------------------------------------------------

def sanity(corpus, available):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F

    def first(name):  # type: ignore[no-untyped-def]
        spec = corpus.load(name)
        return spec, spec.build(), spec.examples()

    # control_flow / cond / script: same weights, same outputs
    spec, base, exs = first("control_flow")
    ref = [outputs(base, e) for e in exs]
    for other in ("control_flow_cond", "control_flow_script"):
        if other in available:
            o_spec, o_model, _ = first(other)
            check(all(same_tensors(r, outputs(o_model, e)) for r, e in zip(ref, exs)),
                  "%s gives exactly control_flow's outputs" % other)
    # the wrong branch is far off: then(h) - else(h) = 3h + 2
    for e, r in zip(exs, ref):
        h = base.lin(e.args[0]).detach()
        other = (-h - 1.0) if spec.expected(tuple(e.args)) == "then" else (h * 2.0 + 1.0)
        check(float((other - r[0]).abs().max()) > 100 * spec.atol, "control_flow: wrong branch is detectable")

    # loop: a wrong trip count is detectable
    spec, loop, exs = first("control_flow_loop")
    for e in exs:
        x = e.args[0]
        right = outputs(loop, e)[0]
        with torch.no_grad():
            h = x + torch.tanh(loop.lin(x))  # one trip, what a trace of trips=1 would give
        if spec.expected(tuple(e.args)) != "trips=1":
            check(float((h - right).abs().max()) > 100 * spec.atol,
                  "control_flow_loop: %s differs from trips=1" % e.note)

    # grid_sample: the written-out grid equals F.affine_grid; nearest sample points avoid rounding ties
    gs = sys.modules[type(corpus.load("grid_sample").build()).__module__]
    for name in ("grid_sample", "grid_sample_nearest", "grid_sample_align", "grid_sample_nearest_align"):
        spec, model, exs = first(name)
        for e in exs:
            x = e.args[0]
            with torch.no_grad():
                theta = model.theta(x)
                ours = model.grid(theta)
                theirs = F.affine_grid(theta, list(x.shape), align_corners=model.align_corners)
            check(torch.allclose(ours, theirs, atol=1e-6, rtol=0), "%s: grid == F.affine_grid" % name)
            if model.mode == "nearest":
                margin = gs.tie_margin(model, x)
                check(margin >= gs.TIE_MARGIN, "%s: nearest sample points >= %g px from ties (%.2g) on %s"
                      % (name, gs.TIE_MARGIN, margin, e.note))
            with torch.no_grad():
                moved = (theta - torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])).abs().max()
            check(0.01 < float(moved) < 0.5, "%s: theta near identity but not identity (%.3f)" % (name, moved))

    # transformer_padding_mask: padded positions do not influence the output
    spec, model, exs = first("transformer_padding_mask")
    x, mask = exs[1].args
    check(bool(mask.any()) and not bool(exs[0].args[1].any()),
          "transformer_padding_mask: example 0 unpadded, 1 padded")
    x2 = torch.where(mask.unsqueeze(-1), torch.full_like(x, 7.0), x)
    with torch.no_grad():
        a, b = model(x, mask), model(x2, mask)
    with torch.enable_grad():  # grad enabled: torch skips the fused fast path
        c = model(x, mask).detach()
    check(float((a - b).abs().max()) < 1e-5, "transformer_padding_mask: padded content does not change the output")
    check(float((a - c).abs().max()) < spec.atol, "transformer_padding_mask: fast path == slow path within atol "
          "(%.2g)" % float((a - c).abs().max()))
    # transformer: the same weights without a mask; it equals the masked model on an unpadded batch
    p_spec, plain, p_exs = first("transformer")
    x0, no_pad = exs[0].args
    with torch.no_grad():
        d = float((plain(x0) - model(x0, no_pad)).abs().max())
    check(d < 1e-5, "transformer == transformer_padding_mask on an unpadded batch (%.2g)" % d)
    check(len(p_exs[0].args) == 1, "transformer: takes no mask")
    with torch.enable_grad():
        d = float((plain(p_exs[0].args[0]).detach() - outputs(plain, p_exs[0])[0]).abs().max())
    check(d < p_spec.atol, "transformer: fast path == slow path within atol (%.2g)" % d)

    # spatial_transformer: theta near identity but not identity, and the output is F.affine_grid's resampling
    spec, model, exs = first("spatial_transformer")
    for e in exs:
        x = e.args[0]
        with torch.no_grad():
            theta = model.fc(model.loc(x).mean(dim=(2, 3))).view(-1, 2, 3)
            moved = float((theta - torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])).abs().max())
            base = gs.base_grid(x.shape[2], x.shape[3], False)
            by_hand = torch.matmul(base, theta.transpose(1, 2)).view(1, x.shape[2], x.shape[3], 2)
            want = F.grid_sample(x, by_hand, mode="bilinear", padding_mode="zeros", align_corners=False)
        check(0.01 < moved < 0.5, "spatial_transformer: theta near identity but not identity (%.3f)" % moved)
        check(torch.allclose(outputs(model, e)[0], want, atol=1e-5, rtol=0),
              "spatial_transformer: F.affine_grid + grid_sample == the hand-written grid (%s)" % e.note)

    # lstm: a gate-order mix-up (i,f,g,o read as i,o,f,g) is far outside the tolerance
    import copy

    spec, model, exs = first("lstm")
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in swapped.lstm.named_parameters():
            i, f, g, o = p.chunk(4, 0)
            p.copy_(torch.cat([i, o, f, g], 0))
    for e in exs:
        d = float((outputs(model, e)[0] - outputs(swapped, e)[0]).abs().max())
        check(d > 100 * spec.atol, "lstm: a gate-order mix-up is detectable on %s (%.3g)" % (e.note, d))

    # mobilenet: depthwise convs, hardswish, hardsigmoid and squeeze-excite are really there
    spec, model, exs = first("mobilenet")
    kinds = [type(m).__name__ for m in model.modules()]
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    check(bool(depthwise) and "Hardswish" in kinds and "Hardsigmoid" in kinds and "SqueezeExcite" in kinds,
          "mobilenet: depthwise conv, Hardswish, Hardsigmoid and SqueezeExcite present")

    # vit: exact GELU, a class token, scaled_dot_product_attention
    spec, model, exs = first("vit")
    gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    check(bool(gelus) and all(getattr(m, "approximate", "none") == "none" for m in gelus), "vit: exact (erf) GELU")
    check(tuple(model.cls_token.shape) == (1, 1, model.pos_embed.shape[-1]), "vit: one class token")

    # interpolate: six outputs; the nearest ones copy values of the map they resize
    spec, model, exs = first("interpolate")
    for e in exs:
        outs = outputs(model, e)
        check(len(outs) == 6, "interpolate: six outputs")
        with torch.no_grad():
            h = model.conv(e.args[0])
        values = set(h.flatten().tolist())
        check(all(set(outs[i].flatten().tolist()) <= values for i in (2, 5)),
              "interpolate: nearest outputs copy input values (%s)" % e.note)
        check(float((outs[0] - outs[1]).abs().max()) > 100 * spec.atol,
              "interpolate: align_corners True and False differ (%s)" % e.note)

    # dynamic_batch: each sample's output does not depend on the batch it is in
    spec, model, exs = first("dynamic_batch")
    for e in exs:
        x = e.args[0]
        whole = outputs(model, e)[0]
        with torch.no_grad():
            alone = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
        check(torch.allclose(whole, alone, atol=1e-6, rtol=0), "dynamic_batch: per-sample outputs (%s)" % e.note)

    # batchnorm: stats are non-default, and train mode is observably different
    spec, model, exs = first("batchnorm")
    check(abs(model.bn2d.momentum - 0.3) < 1e-9 and abs(model.bn2d.eps - 1e-3) < 1e-12
          and float(model.bn2d.running_mean.abs().max()) > 0.1
          and float((model.bn1d.running_var - 1).abs().max()) > 0.1,
          "batchnorm: non-default momentum/eps/running stats")
    _, train_model, _ = first("batchnorm_train")
    for e in exs:
        d = float((outputs(model, e)[0] - outputs(train_model, e)[0]).abs().max())
        check(d > 100 * spec.atol, "batchnorm_train differs from batchnorm on %s (%.3g)" % (e.note, d))

    # custom_op: importing the family module a second time (another package name) reuses the op
    import matrix.corpus as second  # noqa: E402  (ROOT is on sys.path)

    s1, s2 = corpus.load("custom_op"), second.load("custom_op")
    check(s1 is not s2, "custom_op: module imported twice under two package names")
    exs = s1.examples()
    check(same_tensors(outputs(s1.build(), exs[0]), outputs(s2.build(), exs[0])),
          "custom_op: both imports give the same outputs")


# --- export (informational) + onnxruntime parity ------------------------------------------------------

def run_ort(path, examples):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = []
    for e in examples:
        arrays = [a.detach().cpu().numpy() for a in e.args]
        if len(names) != len(arrays):
            raise RuntimeError("graph takes %d inputs, model %d" % (len(names), len(arrays)))
        out.append(session.run(None, dict(zip(names, arrays))))
    return out


def parity(spec, reference, got):  # type: ignore[no-untyped-def]
    import numpy as np

    worst, ok = 0.0, True
    per = []
    for ref, cand in zip(reference, got):
        ex_ok = len(ref) == len(cand)
        ex_worst = 0.0
        for r, c in zip(ref, cand):
            r = r.detach().numpy().astype(np.float64)
            c = np.asarray(c, dtype=np.float64)
            if r.shape != c.shape:
                ex_ok, ex_worst = False, float("inf")
                continue
            d = np.abs(r - c)
            ex_worst = max(ex_worst, float(d.max()) if d.size else 0.0)
            ex_ok = ex_ok and bool(np.all(d <= spec.atol + spec.rtol * np.abs(r)))
        per.append("ok" if ex_ok else "BAD")
        worst = max(worst, ex_worst)
        ok = ok and ex_ok
    return ok, worst, per


@contextlib.contextmanager
def quiet_stderr():  # type: ignore[no-untyped-def]
    """Exporters dump graphs and progress lines on stdout/stderr: keep them out of the table."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def try_export(spec, exporter, opset, tmp):  # type: ignore[no-untyped-def]
    model = spec.build()
    exs = spec.examples()
    path = os.path.join(tmp, "%s-%s-%d" % (spec.name, exporter, opset), "model.onnx")
    os.makedirs(os.path.dirname(path))
    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore")
        details = STEPS.export_model(spec, model, tuple(exs[0].args), path, exporter, opset)
    reference = [outputs(spec.build(), e) for e in exs]
    return path, reference, exs, details


def export_all(corpus, available):  # type: ignore[no-untyped-def]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnxruntime = None
    import torch

    try:
        import onnxscript  # noqa: F401
        exporters = ["torchscript", "dynamo", "default"]
    except ImportError:
        exporters = ["torchscript"]
        if STEPS.default_exporter(torch.onnx.export) == "torchscript":
            exporters.append("default")
        print("(onnxscript not importable: dynamo exporter skipped)")
    jobs = [(n, e, STEPS.OPSET_NONE if e == "default" else EXPORT_OPSET) for e in exporters for n in available]
    jobs += [("grid_sample", "torchscript", 15), ("grid_sample", "torchscript", 16)]
    if "spatial_transformer" in available:  # F.affine_grid: TorchScript from opset 20, i.e. at "highest" today
        jobs += [("spatial_transformer", "torchscript", STEPS.OPSET_HIGHEST)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, exporter, opset in jobs:
            spec = corpus.load(name)
            label = "%s [%s opset %s]" % (name, exporter, {STEPS.OPSET_NONE: "-", STEPS.OPSET_HIGHEST: "highest"}
                                          .get(opset, str(opset)))
            try:
                path, reference, exs, details = try_export(spec, exporter, opset, tmp)
            except Exception as exc:  # noqa: BLE001 - informational
                results.append((label, "export FAILED", first_line(exc)))
                continue
            emitted, ir_version = STEPS.emitted_versions(path)
            label += " -> %s opset %s IR %s" % (details["exporter_ran"], emitted, ir_version)
            if onnxruntime is None:
                results.append((label, "exported", "(no onnxruntime)"))
                continue
            try:
                got = run_ort(path, exs)
            except Exception as exc:  # noqa: BLE001
                results.append((label, "exported", "ORT FAILED " + first_line(exc)))
                if name in PARITY_REQUIRED and exporter == "torchscript":
                    check(False, "%s: runs in onnxruntime" % label)
                continue
            ok, worst, per = parity(spec, reference, got)
            takes = ""
            if spec.expected is not None:
                takes = " takes=" + ",".join(spec.expected(tuple(e.args)) for e in exs)
            results.append((label, "exported", "ORT parity %s max|diff| %.3g per-input %s%s"
                            % ("ok" if ok else "EXCEEDED", worst, "/".join(per), takes)))
            if name in PARITY_REQUIRED and exporter == "torchscript":
                check(ok, "%s: onnxruntime parity within atol %g rtol %g (max %.3g)"
                      % (label, spec.atol, spec.rtol, worst))

    if getattr(torch.library, "custom_op", None) is not None:
        # custom_op_onnx registered its symbolic before: it must not leak into custom_op
        plain = [r for r in results if r[0].startswith("custom_op [torchscript opset %d]" % EXPORT_OPSET)]
        check(bool(plain) and plain[0][1] == "export FAILED" and "min() arg" not in plain[0][2],
              "custom_op still fails (unsupported operator) after custom_op_onnx registered its symbolic")
    print("\nExports (informational; torch %s):" % torch.__version__)
    for label, what, detail in results:
        print("  %-72s %-14s %s" % (label, what, detail))


STEPS = load_steps()


def main(argv):  # type: (List[str]) -> int
    do_export = "--no-export" not in argv
    only = [a for a in argv if not a.startswith("--")]
    sys.path.insert(0, ROOT)
    check_syntax()
    check_import_without_torch()
    import torch

    corpus = load_corpus_like_worker()
    rows = []
    available = []
    for name in corpus.REGISTRY:
        if only and name not in only:
            continue
        try:
            row, spec, ok = check_model(corpus, name)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            check(False, "%s: %s" % (name, first_line(exc)))
            continue
        rows.append(row)
        if ok:
            available.append(name)
    if not only:
        try:
            sanity(corpus, available)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            check(False, "sanity checks: %s" % first_line(exc))

    print("\ntorch %s, python %s" % (torch.__version__, sys.version.split()[0]))
    print("%-26s | %-13s | %-8s | %-8s | %-8s | %s" % ("name", "family", "examples", "atol", "rtol",
                                                       "unavailable"))
    print("-" * 90)
    for r in rows:
        extra = (" takes=" + ",".join(r["takes"])) if "takes" in r else ""
        print("%-26s | %-13s | %-8s | %-8g | %-8g | %s%s" % (r["name"], r["family"], r["examples"], r["atol"],
                                                            r["rtol"], r["unavailable"] or "-", extra))
    if do_export:
        export_all(corpus, available)
    print("")
    for f in FAILURES:
        print("FAILED: " + f)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
