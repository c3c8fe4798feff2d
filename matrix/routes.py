"""Routes, exporters, targets and framework names: the one table every layer reads (stdlib only, Python 3.8 syntax).

The worker loads this file by path under each environment's interpreter; the service imports it as
`matrix.routes`. Keep it pure data so both can.
"""

# torchscript: torch.onnx.export(dynamo=False); dynamo: dynamo=True (torch.onnx.dynamo_export before 2.5);
# default: torch.onnx.export(model, args, f) as a user writes it, no dynamo= and no opset: TorchScript up to
# torch 2.8, dynamo from 2.9. The export step records which one ran and the opset and IR version it emitted.
EXPORTERS = ("torchscript", "dynamo", "default")

# Case.opset values that are not an opset number.
OPSET_NONE = 0  # no opset argument: the default exporter, or a route that never exports
OPSET_HIGHEST = -1  # the highest opset the exporter accepts in that torch; the worker finds it and records it

ROUTES = {
    # torch -> ONNX -> ONNX Runtime
    "onnxruntime": ("export", "check", "reference", "runtime", "parity"),
    # torch -> ONNX -> TensorFlow through onnx2tf
    "onnx2tf": ("export", "check", "reference", "convert", "tf_run", "parity"),
    # torch -> ONNX -> TensorFlow through the legacy onnx-tensorflow
    "onnx-tf": ("export", "check", "reference", "convert", "tf_run", "parity"),
    # torch -> Keras directly (no ONNX) through nobuco, the maintained direct converter
    "nobuco": ("reference", "convert", "tf_run", "parity"),
    # torch -> .tflite directly (no ONNX) through litert-torch (ai-edge-torch before 0.8), run in LiteRT
    "litert-torch": ("reference", "convert", "tf_run", "parity"),
}

# Which distribution must be in the environment for a route to make sense.
ROUTE_PACKAGES = {
    "onnxruntime": ("onnxruntime",),
    "onnx2tf": ("onnx2tf",),
    "onnx-tf": ("onnx-tf",),
    "nobuco": ("nobuco",),
    "litert-torch": ("litert-torch", "ai-edge-torch"),
}

# What is deployed and checked on each route (issue 11): the artifact a user ships, each its own case.
# `saved_model`: written to disk, reloaded with tf.saved_model.load, called through signatures["serving_default"]
# (what TF Serving calls). `tflite`: the float32 .tflite, run in the LiteRT interpreter. `keras`: the converter's
# in-memory model, called directly (diagnostic: nothing deploys it; onnx-tf's is its TensorflowRep). Routes
# absent here (onnxruntime) have one case with target "".
TARGETS = {
    "onnx2tf": ("saved_model", "tflite", "keras"),
    "onnx-tf": ("saved_model", "tflite", "keras"),
    "nobuco": ("saved_model", "tflite", "keras"),
    "litert-torch": ("tflite",),
}
# Converter options that are a spec axis: axis name -> (package, keyword of the converter's call, values).
# onnx2tf 2.x writes .tflite either straight from its own IR (flatbuffer_direct, the default from 2.4.0, no
# TensorFlow needed) or through Keras and TFLiteConverter (tf_converter, the only path in 1.x). The option is
# part of the environment's identity (same lock, same venv), like an index setting.
CONVERTER_OPTIONS = {
    "onnx2tf-backend": ("onnx2tf", "tflite_backend", ("flatbuffer_direct", "tf_converter")),
}

# The frameworks and converters a report names, in the order a person reads a chain.
FRAMEWORKS = ("torch", "onnx", "onnxruntime", "tensorflow", "tensorflow-cpu", "onnx2tf", "onnx-tf", "litert-torch",
              "ai-edge-torch")
# The packages a user pins by hand: the frameworks, plus numpy and protobuf, whose moves break chains.
KEY_PACKAGES = (*FRAMEWORKS, "numpy", "protobuf")
# Versions the worker reports from inside an environment (importlib.metadata), beside the lock.
# ai-edge-litert (the LiteRT interpreter) is reported, not ranked: onnx2tf 1.28 already pulls it in.
WORKER_REPORTED = (*FRAMEWORKS, "numpy", "ai-edge-litert")
# To a user these are one framework: a filter on either matches both.
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "tensorflow-cpu": ("tensorflow", "tensorflow-cpu")}

# Split chains: an export environment runs the `export` route once per (model, exporter, opset) and stores an
# artifact; each runtime environment (no torch) starts from the artifact. Routes that need torch on the
# conversion side (nobuco, torch → Keras) exist only in joint environments.
SPLIT_ROUTES = {
    "export": ("export", "check", "reference", "save"),
    "onnxruntime": ("load", "runtime", "parity"),
    "onnx2tf": ("load", "convert", "tf_run", "parity"),
    "onnx-tf": ("load", "convert", "tf_run", "parity"),
}
# Environment kinds (ARCHITECTURE.md): joint holds both sides; a split chain is an export and a runtime environment.
KINDS = ("joint", "export", "runtime")
# Distributions that belong to the export side of a split chain; everything else is the runtime side's.
# onnx goes to both: torch.onnx needs it to export, and the converters read the file with it.
EXPORT_SIDE = ("torch", "onnxscript", "torchvision")
BOTH_SIDES = ("onnx",)
