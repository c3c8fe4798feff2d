"""The steps of a case: export, check, reference, runtime, convert, tf_run, parity."""

from __future__ import annotations

import inspect
import os
import resource
import shutil
import sys

import deploy  # runner/worker/deploy.py: the worker's directory is on sys.path (main.py)


class Skip(Exception):
    """The step cannot apply here (e.g. the torch release cannot express the model)."""


class StepFailed(Exception):
    """The step ran and its result is wrong, with a type name the signature can group on."""

    def __init__(self, error_type: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.details = details or {}


def clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n…\n" + text[-limit // 2 :]


def reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each step gets its own high-water mark.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def to_numpy_list(outputs) -> list:  # type: ignore[no-untyped-def]
    """Flatten a model's output (tensor, tuple, list, dict) into a list of numpy arrays."""
    import numpy as np

    flat: list = []

    def walk(obj) -> None:  # type: ignore[no-untyped-def]
        if obj is None:
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for k in sorted(obj):
                walk(obj[k])
        elif hasattr(obj, "detach"):
            flat.append(obj.detach().cpu().numpy())
        elif hasattr(obj, "numpy"):
            flat.append(np.asarray(obj.numpy()))
        else:
            flat.append(np.asarray(obj))

    walk(outputs)
    return flat


class Context:
    """What the steps of one case share: the model, the exported file, and each side's outputs."""

    def __init__(self, corpus, case: dict, workdir: str) -> None:  # type: ignore[no-untyped-def]
        self.corpus = corpus
        self.case = case
        self.dir = os.path.join(workdir, case["key"])
        os.makedirs(self.dir, exist_ok=True)
        self.onnx_path = os.path.join(self.dir, "model.onnx")
        self.spec = None
        self.examples: list = []
        self.reference: list = []
        self.candidate: list = []
        self.candidate_from = ""
        self.tf_model = None
        # Deployment target (issue 11): what convert writes and tf_run loads; "" on routes without one.
        self.target = case.get("target") or ""
        self.options = dict(case.get("options") or {})
        self.artifact = ""

    def model_spec(self):  # type: ignore[no-untyped-def]
        if self.spec is None:
            load = getattr(self.corpus, "load", None)
            models = getattr(self.corpus, "MODELS", None)
            if models is not None:
                if self.case["model"] not in models:
                    raise KeyError("model %r is not in the corpus; it has %s" % (self.case["model"], sorted(models)))
                self.spec = models[self.case["model"]]
            else:
                self.spec = load(self.case["model"])
        return self.spec

    def close(self) -> None:
        self.tf_model = None
        shutil.rmtree(self.dir, ignore_errors=True)


class _Example:
    def __init__(self, args, note: str) -> None:  # type: ignore[no-untyped-def]
        self.args, self.note = args, note


def examples_of(spec) -> list:  # type: ignore[no-untyped-def]
    """The model's example inputs; a user corpus may give plain tuples or tensors instead of Example."""
    out = []
    for index, item in enumerate(spec.examples()):
        if hasattr(item, "args"):
            out.append(item)
        elif isinstance(item, (tuple, list)):
            out.append(_Example(tuple(item), "input %d" % index))
        else:
            out.append(_Example((item,), "input %d" % index))
    return out


def _accepts(func, name: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


# Case.opset sentinels, as in matrix/routes.py (OPSET_NONE, OPSET_HIGHEST); the worker receives plain ints.
OPSET_NONE = 0
OPSET_HIGHEST = -1


def _onnx_constants():  # type: ignore[no-untyped-def]
    from torch.onnx import _constants

    return _constants


def highest_opset(exporter: str) -> tuple:
    """(opset, where it came from): the highest opset `exporter` accepts in this torch, as torch declares it.

    Newer torch releases (2.15 has them) declare ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET for the TorchScript
    exporter beside ONNX_MAX_OPSET for the dynamo exporter; before, ONNX_MAX_OPSET was the one limit.
    """
    constants = _onnx_constants()
    if exporter == "torchscript" and hasattr(constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET"):
        return int(constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET"
    return int(constants.ONNX_MAX_OPSET), "ONNX_MAX_OPSET"


def default_exporter(export) -> str:  # type: ignore[no-untyped-def]
    """The exporter torch.onnx.export(model, args, f) picks in this torch: its `dynamo` default (True from 2.9)."""
    try:
        param = inspect.signature(export).parameters.get("dynamo")
    except (TypeError, ValueError):
        param = None
    return "dynamo" if param is not None and param.default is True else "torchscript"


def _dynamic_shapes(torch, dynamic_axes: dict, count: int):  # type: ignore[no-untyped-def]
    """dynamic_axes' input entries as torch.export's dynamic_shapes: one Dim per axis name, shared by name."""
    dims = {}  # type: dict
    shapes = []
    for index in range(count):
        axes = dynamic_axes.get("input_%d" % index) or {}
        entry = {}
        for axis, name in sorted(axes.items()):
            if name not in dims:
                dims[name] = torch.export.Dim(name)
            entry[int(axis)] = dims[name]
        shapes.append(entry or None)
    return tuple(shapes)


def export_model(spec, module, args: tuple, path: str, exporter: str, opset: int) -> dict:  # type: ignore[no-untyped-def]
    """Export `module` as `exporter` asks, and say how: which exporter ran, the opset requested and why."""
    import torch

    export = torch.onnx.export
    dynamic_axes = dict(getattr(spec, "dynamic_axes", None) or {})
    names = ["input_%d" % i for i in range(len(args))]
    # What the model's export_kwargs are asked for: the exporter that will really run, and its opset.
    runs = default_exporter(export) if exporter == "default" else exporter
    details = {"exporter_requested": exporter}  # type: dict
    if exporter == "default" and opset != OPSET_NONE:
        details["opset_ignored"] = opset  # the default call passes no opset; the plan never asks for one
        opset = OPSET_NONE
    if opset == OPSET_HIGHEST:
        opset, source = highest_opset(runs)
        details.update(opset_requested="highest", opset_highest=opset,
                       opset_highest_from="torch.onnx._constants." + source)
    elif opset == OPSET_NONE:
        details["opset_requested"] = None
    else:
        details["opset_requested"] = opset
    kwargs_opset = opset if opset > 0 else int(getattr(_onnx_constants(), "ONNX_DEFAULT_OPSET", 17))
    kwargs = dict(spec.export_kwargs(runs, kwargs_opset) or {}) if hasattr(spec, "export_kwargs") else {}
    if opset > 0 and exporter != "default":
        kwargs["opset_version"] = opset
    if exporter == "default":
        # As a user writes it: no dynamo=, no opset_version. A model with dynamic axes needs names for them,
        # and the classic dynamic_axes is what users pass (torch >= 2.9 converts it for dynamo).
        if dynamic_axes:
            kwargs.update(input_names=names, dynamic_axes=dynamic_axes,
                          output_names=sorted(k for k in dynamic_axes if k.startswith("output_")))
        result = export(module, args, path, **kwargs)
        how = "torch.onnx.export(model, args, f)"
        # The return value says which exporter ran: an ONNXProgram from dynamo, None from TorchScript.
        ran = "dynamo" if result is not None else "torchscript"
    elif exporter == "torchscript":
        if _accepts(export, "dynamo"):
            kwargs["dynamo"] = False  # torch >= 2.9 defaults to dynamo
        if dynamic_axes:
            kwargs.update(dynamic_axes=dynamic_axes,
                          output_names=sorted(k for k in dynamic_axes if k.startswith("output_")))
        export(module, args, path, input_names=names, **kwargs)
        how, ran = "torch.onnx.export(dynamo=False)", "torchscript"
    elif _accepts(export, "dynamo"):
        if dynamic_axes:
            kwargs["dynamic_shapes"] = _dynamic_shapes(torch, dynamic_axes, len(args))
        export(module, args, path, input_names=names, dynamo=True, **kwargs)
        how, ran = "torch.onnx.export(dynamo=True)", "dynamo"
    elif hasattr(torch.onnx, "dynamo_export"):
        # The releases before dynamo=True have only dynamo_export, which takes no opset.
        options = None
        if dynamic_axes:
            options = torch.onnx.ExportOptions(dynamic_shapes=True)
        kwargs.pop("opset_version", None)
        torch.onnx.dynamo_export(module, *args, export_options=options).save(path)
        how, ran = "torch.onnx.dynamo_export", "dynamo"
        if opset > 0:
            details["opset_ignored"] = opset
    else:
        raise Skip("this torch has no dynamo exporter")
    details.update(exporter_call=how, exporter_ran=ran)
    if dynamic_axes:
        details["dynamic_axes"] = {k: {str(a): n for a, n in v.items()} for k, v in dynamic_axes.items()}
    return details


def step_export(ctx: Context) -> dict:
    spec = ctx.model_spec()
    reason = spec.unavailable() if hasattr(spec, "unavailable") else None
    if reason:
        raise Skip(reason)
    module = spec.build()
    ctx.examples = examples_of(spec)
    args = tuple(ctx.examples[0].args)
    details = export_model(spec, module, args, ctx.onnx_path, ctx.case["exporter"], int(ctx.case["opset"]))
    if not os.path.exists(ctx.onnx_path):
        raise StepFailed("NoOutputFile", "the exporter returned but wrote no file")
    opset, ir_version = emitted_versions(ctx.onnx_path)
    details.update(opset_emitted=opset, ir_version=ir_version, bytes=file_bytes(ctx.onnx_path))
    return {"details": details}


def file_bytes(path: str) -> int:
    """The ONNX file plus its external data (the dynamo exporter of torch >= 2.9 writes weights beside it)."""
    folder = os.path.dirname(path)
    base = os.path.basename(path)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith(base))


def emitted_versions(path: str) -> tuple:
    """(default-domain opset, IR version) read back from the exported file."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    opset = None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    return opset, int(model.ir_version)


def emitted_opset(path: str) -> int | None:
    return emitted_versions(path)[0]


def step_check(ctx: Context) -> dict:
    import onnx

    model = onnx.load(ctx.onnx_path)
    onnx.checker.check_model(model, full_check=True)
    return {"details": {"ir_version": int(model.ir_version), "nodes": len(model.graph.node)}}


def step_reference(ctx: Context) -> dict:
    import torch

    spec = ctx.model_spec()
    if not ctx.examples:  # routes without an export step start here
        reason = spec.unavailable() if hasattr(spec, "unavailable") else None
        if reason:
            raise Skip(reason)
        ctx.examples = examples_of(spec)
    module = spec.build()  # a fresh build: the export must not leak state (e.g. BN stats) into the reference
    expected = getattr(spec, "expected", None)
    notes = []
    with torch.no_grad():
        for example in ctx.examples:
            ctx.reference.append(to_numpy_list(module(*example.args)))
            note = {"note": example.note}
            if expected is not None:
                note["takes"] = expected(tuple(example.args))
            notes.append(note)
    return {"details": {"inputs": notes}}


def _feeds(input_names: list, example) -> dict:  # type: ignore[no-untyped-def]
    arrays = [a.detach().cpu().numpy() for a in example.args]
    if len(input_names) != len(arrays):
        raise StepFailed(
            "InputCountMismatch",
            "the exported graph takes %d inputs, the model %d" % (len(input_names), len(arrays)),
        )
    return dict(zip(input_names, arrays))


def step_runtime(ctx: Context) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(ctx.onnx_path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    ctx.candidate = [session.run(None, _feeds(names, ex)) for ex in ctx.examples]
    ctx.candidate_from = "onnxruntime"
    return {}


ONNX2TF_OPTIONS = {
    # The in-memory Keras model (target keras): no SavedModel, no .tflite files, no h5.
    "disable_model_save": True,
    "non_verbose": True,
}
ONNX2TF_DEPLOY_OPTIONS = {
    # The files a user deploys (targets saved_model and tflite). Without output_signaturedefs the SavedModel
    # has no serving_default (onnx2tf's README: signatures are needed for serving, and are off because they
    # slow conversion); a user who serves passes it, and a release that still writes none fails tf_run.
    "disable_model_save": False,
    "output_signaturedefs": True,
    "non_verbose": True,
}
# The .tflite carries its own signature; asking for SavedModel signatures would only slow its conversion.
ONNX2TF_TFLITE_OPTIONS = {k: v for k, v in ONNX2TF_DEPLOY_OPTIONS.items() if k != "output_signaturedefs"}


# Set by the worker: whether any of its cases may load torch._dynamo (costs ~2 s to import, so only then).
DYNAMO_GUARD = True


def before_tensorflow() -> None:
    """Import torch's compiler stack before TensorFlow loads, once per worker.

    Loading torch._dynamo (triton's LLVM) after TensorFlow aborts the process with "LLVM ERROR:
    inconsistency in registered CommandLine options". Cases share a worker, so a case that loaded TF
    would otherwise take down a later dynamo export or custom op; a user's own process imports torch first.
    """
    if "tensorflow" in sys.modules or not DYNAMO_GUARD:
        return
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # an old or broken torch is recorded by the steps themselves
        pass


def step_convert(ctx: Context) -> dict:
    before_tensorflow()
    route = ctx.case["route"]
    target = ctx.target or "keras"
    try:
        if route == "onnx2tf":
            return _convert_onnx2tf(ctx, target)
        if route == "onnx-tf":
            return _convert_onnx_tf(ctx, target)
        if route == "nobuco":
            return _convert_nobuco(ctx, target)
        if route == "litert-torch":
            return _convert_litert_torch(ctx, target)
    except deploy.NotWritable as exc:
        raise Skip(str(exc)) from None
    except deploy.DeployFailed as exc:
        raise StepFailed(exc.error_type, str(exc), exc.details) from None
    raise Skip("route %s has no convert step" % route)


def graph_inputs(path: str) -> list:
    """The exported graph's input names (the default exporter names them itself: x, input.1, ...)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def _convert_onnx2tf(ctx: Context, target: str) -> dict:
    import onnx2tf

    try:
        # onnx2tf 2.x exports a lazy convert(*args, **kwargs); the keywords are on the implementation's signature.
        from onnx2tf.onnx2tf import convert as signature_of
    except ImportError:
        signature_of = onnx2tf.convert
    out_dir = os.path.join(ctx.dir, "tf")
    names = graph_inputs(ctx.onnx_path)
    kwargs = dict(
        input_onnx_file_path=ctx.onnx_path,
        output_folder_path=out_dir,
        # Keep torch's NCHW inputs as they are, so the same arrays feed every runtime.
        keep_shape_absolutely_input_names=names,
    )
    wanted = dict({"keras": ONNX2TF_OPTIONS, "tflite": ONNX2TF_TFLITE_OPTIONS}.get(target, ONNX2TF_DEPLOY_OPTIONS))
    backend = ctx.options.get("tflite_backend")
    if backend and not _accepts(signature_of, "tflite_backend"):
        # Before 2.0.6 onnx2tf has one backend, TensorFlow's converter: tf_converter is what it does anyway.
        if backend != "tf_converter":
            raise Skip("this onnx2tf has no tflite_backend: before 2.0.6 it converts through TensorFlow only")
        backend = None
    elif backend:
        kwargs["tflite_backend"] = backend
    if backend == "flatbuffer_direct" and target == "saved_model":
        # The direct backend writes no SavedModel unless asked; it then builds one from its IR through TF.
        if not _accepts(signature_of, "flatbuffer_direct_output_saved_model"):
            raise Skip("this onnx2tf's flatbuffer_direct backend cannot write a SavedModel")
        wanted["flatbuffer_direct_output_saved_model"] = True
    for key, value in wanted.items():
        if _accepts(signature_of, key):
            kwargs[key] = value
    model = onnx2tf.convert(**kwargs)
    options = sorted(k for k in kwargs if k in wanted or k == "tflite_backend")
    details = {"options": options, "keep_shape_absolutely_input_names": names}
    if backend:
        details["tflite_backend"] = backend
    if target == "keras":
        if model is None:
            if backend == "flatbuffer_direct":
                raise Skip("onnx2tf's flatbuffer_direct backend builds no in-memory Keras model")
            raise StepFailed("NoModel", "onnx2tf.convert returned no model")
        ctx.tf_model = model
        return {"details": details}
    if target == "saved_model":
        ctx.artifact = deploy.require_saved_model(out_dir)
    else:
        ctx.artifact = deploy.find_tflite(out_dir)
    details.update(deploy.artifact_details(target, ctx.artifact))
    return {"details": details}


def _convert_onnx_tf(ctx: Context, target: str) -> dict:
    import onnx
    from onnx_tf.backend import prepare

    rep = prepare(onnx.load(ctx.onnx_path))
    if target == "keras":
        ctx.tf_model = rep
        return {}
    saved = os.path.join(ctx.dir, "saved_model")
    rep.export_graph(saved)  # onnx-tf's documented way to a SavedModel
    ctx.artifact = deploy.require_saved_model(saved)
    how = "TensorflowRep.export_graph"
    if target == "tflite":
        ctx.artifact = deploy.tflite_from_saved_model(saved, os.path.join(ctx.dir, "model.tflite"))
        how += " + TFLiteConverter.from_saved_model"
    return {"details": dict(deploy.artifact_details(target, ctx.artifact), written_by=how)}


def _convert_nobuco(ctx: Context, target: str) -> dict:
    import nobuco
    from nobuco import ChannelOrder

    module = ctx.model_spec().build()
    model = nobuco.pytorch_to_keras(
        module,
        args=list(ctx.examples[0].args),
        # Keep torch's layout on both sides, so parity compares like with like.
        inputs_channel_order=ChannelOrder.PYTORCH,
        outputs_channel_order=ChannelOrder.PYTORCH,
    )
    if target == "keras":
        ctx.tf_model = model
        return {}
    if target == "saved_model":
        ctx.artifact = os.path.join(ctx.dir, "saved_model")
        how = deploy.keras_to_saved_model(model, ctx.artifact)
    else:
        ctx.artifact = os.path.join(ctx.dir, "model.tflite")
        deploy.keras_to_tflite(model, ctx.artifact)
        how = "TFLiteConverter.from_keras_model"
    return {"details": dict(deploy.artifact_details(target, ctx.artifact), written_by=how)}


def _convert_litert_torch(ctx: Context, target: str) -> dict:
    if target != "tflite":
        raise Skip("litert-torch writes only .tflite")
    try:
        import litert_torch as converter  # 0.8 and later

        name = "litert_torch"
    except ModuleNotFoundError as exc:
        # Only where the package is absent: a litert_torch that is there and fails to import (its torch too old
        # or too new) is that failure, not a missing ai_edge_torch.
        if exc.name != "litert_torch":
            raise
        import ai_edge_torch as converter  # the same converter before its rename

        name = "ai_edge_torch"
    module = ctx.model_spec().build().eval()
    ctx.artifact = os.path.join(ctx.dir, "model.tflite")
    converter.convert(module, tuple(ctx.examples[0].args)).export(ctx.artifact)
    if not os.path.isfile(ctx.artifact):
        raise StepFailed("NoTfliteFile", "%s.convert(...).export returned but wrote no file" % name)
    return {"details": dict(deploy.artifact_details(target, ctx.artifact),
                            written_by="%s.convert(module, sample_args).export" % name)}


def step_tf_run(ctx: Context) -> dict:
    route = ctx.case["route"]
    target = ctx.target or "keras"
    ctx.candidate_from = "%s:%s" % (route, target) if ctx.target else route
    try:
        if target == "saved_model":
            ctx.candidate, details = deploy.run_saved_model(ctx.artifact, ctx.examples)
            return {"details": details}
        if target == "tflite":
            ctx.candidate, details = deploy.run_tflite(ctx.artifact, ctx.examples)
            return {"details": details}
    except deploy.DeployFailed as exc:
        raise StepFailed(exc.error_type, str(exc), exc.details) from None
    results = []
    for example in ctx.examples:
        arrays = [a.detach().cpu().numpy() for a in example.args]
        if route in ("onnx2tf", "nobuco"):
            out = ctx.tf_model(arrays if len(arrays) > 1 else arrays[0], training=False)
        else:
            # onnx-tf returns onnx.backend's namedtupledict: a tuple in graph-output order.
            out = list(ctx.tf_model.run(arrays if len(arrays) > 1 else arrays[0]))
        results.append(to_numpy_list(out))
    ctx.candidate = results
    return {"details": {"target": target, "called": "the converter's in-memory model",
                        "inputs": "fed as torch gives them (NCHW)"}} if ctx.target else {}


def _align(ref, got):  # type: ignore[no-untyped-def]
    """onnx2tf emits channels-last tensors: put them back to torch's layout before comparing."""
    import numpy as np

    if got.shape == ref.shape:
        return got, None
    for perm in ((0, 3, 1, 2), (0, 2, 1), (0, 4, 1, 2, 3)):
        if got.ndim == len(perm):
            moved = np.transpose(got, perm)
            if moved.shape == ref.shape:
                return moved, list(perm)
    if got.size == ref.size and got.squeeze().shape == ref.squeeze().shape:
        return got.reshape(ref.shape), "reshape"
    raise StepFailed(
        "ShapeMismatch", "output shape %s, PyTorch gives %s" % (list(got.shape), list(ref.shape))
    )


def step_parity(ctx: Context) -> dict:
    import numpy as np

    spec = ctx.model_spec()
    atol, rtol = float(spec.atol), float(spec.rtol)
    per_input = []
    worst = 0.0
    first_bad = None
    for index, (ref_outs, got_outs) in enumerate(zip(ctx.reference, ctx.candidate)):
        if len(ref_outs) != len(got_outs):
            raise StepFailed(
                "OutputCountMismatch",
                "input %d: %d outputs, PyTorch gives %d" % (index, len(got_outs), len(ref_outs)),
            )
        max_abs = 0.0
        max_rel = 0.0
        ok = True
        layout = None
        per_output = []  # max abs diff of each output: which of several outputs (e.g. interpolate's) is off
        for ref, got in zip(ref_outs, got_outs):
            got, moved = _align(np.asarray(ref), np.asarray(got))
            layout = layout or moved
            ref64 = np.asarray(ref, dtype=np.float64)
            got64 = np.asarray(got, dtype=np.float64)
            if ref64.size == 0:
                continue
            diff = np.abs(ref64 - got64)
            if not np.all(np.isfinite(got64) == np.isfinite(ref64)):
                ok = False
                max_abs = float("inf")
                per_output.append(max_abs)
                continue
            diff = np.where(np.isfinite(diff), diff, 0.0)
            per_output.append(float(diff.max()))
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / (np.abs(ref64) + 1e-12)).max()))
            ok = ok and bool(np.all(diff <= atol + rtol * np.abs(ref64)))
        worst = max(worst, max_abs)
        entry = {"input": index, "note": ctx.examples[index].note, "max_abs": max_abs,
                 "max_rel": max_rel, "ok": ok}
        if layout is not None:
            entry["layout"] = layout
        if len(per_output) > 1:
            entry["outputs_max_abs"] = per_output
        per_input.append(entry)
        if not ok and first_bad is None:
            first_bad = index
    details = {"inputs": per_input, "atol": atol, "rtol": rtol, "against": ctx.candidate_from}
    if first_bad is not None:
        raise StepFailed(
            "ParityExceeded",
            "input %d (%s): max abs diff %.3g exceeds atol %.3g + rtol %.3g"
            % (first_bad, per_input[first_bad]["note"], per_input[first_bad]["max_abs"], atol, rtol),
            dict(details, max_abs_diff=worst, failed_input=first_bad),
        )
    return {"max_abs_diff": worst, "details": details}


# --- split chains: the export side stores an artifact, the runtime side starts from one (no torch) ----------


class _Held:
    """A stored input array behind the small part of torch.Tensor's API the runtime steps call
    (`a.detach().cpu().numpy()`), so they read an artifact's inputs as they read torch's."""

    def __init__(self, array) -> None:  # type: ignore[no-untyped-def]
        self.array = array

    def detach(self) -> _Held:
        return self

    def cpu(self) -> _Held:
        return self

    def numpy(self):  # type: ignore[no-untyped-def]
        return self.array


class _Tolerance:
    """The model's tolerance as the export side recorded it: the runtime side cannot build the model."""

    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol


def step_save(ctx: Context) -> dict:
    import artifact

    spec = ctx.model_spec()
    meta = {"model": ctx.case["model"], "exporter": ctx.case["exporter"], "opset": int(ctx.case["opset"]),
            "atol": float(spec.atol), "rtol": float(spec.rtol), "opset_emitted": emitted_opset(ctx.onnx_path)}
    import onnx

    meta["ir_version"] = int(onnx.load(ctx.onnx_path, load_external_data=False).ir_version)
    stored = artifact.save(ctx.case["artifact_root"], ctx.onnx_path, ctx.examples, ctx.reference, meta)
    return {"details": dict(stored, opset_emitted=meta["opset_emitted"], ir_version=meta["ir_version"])}


def step_load(ctx: Context) -> dict:
    import artifact

    held = artifact.Loaded(ctx.case["artifact"])
    ctx.onnx_path = held.onnx_path
    ctx.examples = [_Example(tuple(_Held(a) for a in args), note)
                    for args, note in zip(held.inputs, held.meta["notes"])]
    ctx.reference = held.reference
    ctx.spec = _Tolerance(held.meta["atol"], held.meta["rtol"])
    return {"details": {"key": held.meta["key"], "opset_emitted": held.meta.get("opset_emitted"),
                        "ir_version": held.meta.get("ir_version")}}
