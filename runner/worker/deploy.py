"""Deployment targets (issue 11): write the artifact a user ships, load it the way production does, run it.

`saved_model` is reloaded with tf.saved_model.load and called through signatures["serving_default"] (what TF
Serving calls); `tflite` is the float32 .tflite run in the LiteRT interpreter (ai_edge_litert, else the
tf.lite.Interpreter the environment has); `keras` is the converter's in-memory model (diagnostic). Each run
records the layout the artifact expects and what the runner did to feed and compare it.
Runs inside case environments: standard library and the environment's frameworks only, Python 3.8 syntax.
"""

from __future__ import annotations

import glob
import os
import re


class NotWritable(Exception):
    """This converter release cannot write the target: the case is a skip, with the reason."""


class DeployFailed(Exception):
    """The artifact is missing or unusable the way a user would use it; `error_type` names the failure."""

    def __init__(self, error_type: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.details = details or {}


def _natural(name: str) -> list:  # type: ignore[type-arg]
    # output_2 before output_10; "Identity" before "Identity_1".
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _bytes_of(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def artifact_details(target: str, path: str) -> dict:
    return {"target": target, "artifact": os.path.basename(path.rstrip("/")), "bytes": _bytes_of(path)}


# --- writing -------------------------------------------------------------------------------------------------

def find_tflite(folder: str) -> str:
    """The float32 .tflite a converter wrote (onnx2tf: <name>_float32.tflite beside a float16 one)."""
    found = sorted(glob.glob(os.path.join(folder, "*_float32.tflite"))) or sorted(
        p for p in glob.glob(os.path.join(folder, "*.tflite")) if "float16" not in p and "quant" not in p)
    if not found:
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise DeployFailed("NoTfliteFile", "the converter returned but wrote no float32 .tflite in %s (found %s)"
                           % (os.path.basename(folder), present[:20]))
    return found[0]


def require_saved_model(folder: str) -> str:
    if not os.path.isfile(os.path.join(folder, "saved_model.pb")):
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise DeployFailed("NoSavedModel", "the converter returned but wrote no saved_model.pb in %s (found %s)"
                           % (os.path.basename(folder), present[:20]))
    return folder


def tflite_from_saved_model(saved_model: str, path: str) -> str:
    """What onnx-tf's users do for LiteRT: TFLiteConverter on the SavedModel it exported (float32, no quantization)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    with open(path, "wb") as fh:
        fh.write(converter.convert())
    return path


def keras_to_saved_model(model, folder: str) -> str:  # type: ignore[no-untyped-def]
    """A Keras model as a servable SavedModel: Model.export (Keras >= 2.13 writes serving_default), else
    tf.saved_model.save, which traces the call signature from the model's inputs."""
    import tensorflow as tf

    if hasattr(model, "export"):
        model.export(folder)
        return "Model.export"
    tf.saved_model.save(model, folder)
    return "tf.saved_model.save"


def keras_to_tflite(model, path: str) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with open(path, "wb") as fh:
        fh.write(converter.convert())


# --- layout --------------------------------------------------------------------------------------------------

NCHW_TO_NHWC = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


def fit_layout(array, expected_shape):  # type: ignore[no-untyped-def]
    """Feed torch's array in the layout the artifact declares: (array, layout, what was done)."""
    import numpy as np

    shape = [None if (d is None or d < 0) else int(d) for d in expected_shape] if expected_shape is not None else None
    if shape is None or len(shape) != array.ndim or _fits(shape, array.shape):
        return array, "NCHW (torch's)" if array.ndim >= 3 else "as torch", "fed as torch gives it"
    perm = NCHW_TO_NHWC.get(array.ndim)
    if perm is not None:
        moved = np.ascontiguousarray(np.transpose(array, perm))
        if _fits(shape, moved.shape):
            return moved, "NHWC", "transposed NCHW→NHWC %s" % (list(perm),)
    raise DeployFailed("InputShapeMismatch", "the artifact declares input shape %s, torch gives %s"
                       % (shape, list(array.shape)))


def _fits(declared, actual) -> bool:  # type: ignore[no-untyped-def]
    return len(declared) == len(actual) and all(d is None or d == a for d, a in zip(declared, actual))


# --- running -------------------------------------------------------------------------------------------------

def run_saved_model(folder: str, examples: list) -> tuple:  # type: ignore[type-arg]
    """Reload the SavedModel and call serving_default on every example: (outputs per example, details)."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(folder)
    signatures = sorted(getattr(loaded, "signatures", {}) or {})
    if "serving_default" not in signatures:
        raise DeployFailed(
            "NoServingSignature",
            "the SavedModel has %s: TF Serving and signatures['serving_default'] cannot call it"
            % ("signatures %s but no serving_default" % signatures if signatures else "no signatures at all"),
            {"signatures": signatures},
        )
    fn = loaded.signatures["serving_default"]
    _, specs = fn.structured_input_signature
    names = sorted(specs, key=_natural)
    first = [a.detach().cpu().numpy() for a in examples[0].args]
    if len(names) != len(first):
        raise DeployFailed("InputCountMismatch", "serving_default takes %d inputs (%s), the model %d"
                           % (len(names), names, len(first)))
    by_name = ["input_%d" % i for i in range(len(first))]
    order = by_name if set(by_name) == set(names) else names
    inputs = []
    results = []
    for example in examples:
        feed = {}
        for name, array in zip(order, [a.detach().cpu().numpy() for a in example.args]):
            spec = specs[name]
            fed, layout, done = fit_layout(array, spec.shape.as_list() if spec.shape.rank is not None else None)
            feed[name] = tf.constant(fed, dtype=spec.dtype)
            if len(inputs) < len(order):
                inputs.append({"name": name, "declared": _shape(spec.shape.as_list()), "layout": layout,
                               "fed": done})
        out = fn(**feed)
        keys = sorted(out, key=_natural)
        results.append([np.asarray(out[k].numpy()) for k in keys])
    details = {"called": "tf.saved_model.load(...).signatures['serving_default']",
               "matched_inputs": "by name input_N" if order is by_name else "by position, names sorted",
               "inputs": inputs, "outputs": _outputs(keys, results[0]),
               "tensorflow": _dist_version("tensorflow") or _dist_version("tensorflow-cpu")}
    return results, details


def _outputs(names: list, arrays: list) -> list:  # type: ignore[type-arg]
    """Each output's name and shape as the artifact gives it; parity records any transposition back to torch's."""
    return [{"name": str(n), "shape": [int(d) for d in a.shape]} for n, a in zip(names, arrays)]


def _shape(dims) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [None if d is None else int(d) for d in dims]


def interpreter(path: str) -> tuple:  # type: ignore[type-arg]
    """The LiteRT interpreter a user has: ai_edge_litert's, else the one inside TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=path), "ai_edge_litert.interpreter.Interpreter %s" % _dist_version(
            "ai-edge-litert")
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter(model_path=path), "tf.lite.Interpreter %s" % (
            _dist_version("tensorflow") or _dist_version("tensorflow-cpu"))


def run_tflite(path: str, examples: list) -> tuple:  # type: ignore[type-arg]
    """Run the .tflite in LiteRT on every example: (outputs per example, details).

    Inputs and outputs are matched through the model's signature where it has one (the names a user calls),
    else through the tensor list in order.
    """
    import numpy as np

    interp, which = interpreter(path)
    signatures = interp.get_signature_list() if hasattr(interp, "get_signature_list") else {}
    first = [a.detach().cpu().numpy() for a in examples[0].args]
    inputs: list = []
    results = []
    if signatures:
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        runner = interp.get_signature_runner(key)
        in_details = runner.get_input_details()
        names = sorted(in_details, key=_natural)
        if len(names) != len(first):
            raise DeployFailed("InputCountMismatch", "signature %s takes %d inputs (%s), the model %d"
                               % (key, len(names), names, len(first)))
        by_name = ["input_%d" % i for i in range(len(first))]
        order = by_name if set(by_name) == set(names) else names
        for example in examples:
            feed = {}
            for name, array in zip(order, [a.detach().cpu().numpy() for a in example.args]):
                detail = in_details[name]
                fed, layout, done = fit_layout(array, list(detail.get("shape_signature", detail["shape"])))
                feed[name] = fed.astype(detail["dtype"], copy=False)
                if len(inputs) < len(order):
                    inputs.append({"name": name, "declared": [int(d) for d in detail["shape"]], "layout": layout,
                                   "fed": done})
            out = runner(**feed)
            keys = sorted(out, key=_natural)
            results.append([np.asarray(out[k]) for k in keys])
        how = "signature runner %r" % key
    else:
        in_details = interp.get_input_details()
        out_details = interp.get_output_details()
        keys = [d["name"] for d in out_details]
        for example in examples:
            arrays = [a.detach().cpu().numpy() for a in example.args]
            if len(arrays) != len(in_details):
                raise DeployFailed("InputCountMismatch", "the .tflite takes %d inputs, the model %d"
                                   % (len(in_details), len(arrays)))
            fed_all = []
            for detail, array in zip(in_details, arrays):
                fed, layout, done = fit_layout(array, list(detail.get("shape_signature", detail["shape"])))
                fed_all.append((detail, fed))
                if len(inputs) < len(in_details):
                    inputs.append({"name": detail["name"], "declared": [int(d) for d in detail["shape"]],
                                   "layout": layout, "fed": done})
            for detail, fed in fed_all:
                if list(detail["shape"]) != list(fed.shape):
                    interp.resize_tensor_input(detail["index"], list(fed.shape))
            interp.allocate_tensors()
            for detail, fed in fed_all:
                interp.set_tensor(detail["index"], fed.astype(detail["dtype"], copy=False))
            interp.invoke()
            results.append([np.array(interp.get_tensor(d["index"])) for d in out_details])
        how = "tensor list (the model has no signature)"
    details = {"called": which, "matched": how, "inputs": inputs, "outputs": _outputs(keys, results[0])}
    return results, details
