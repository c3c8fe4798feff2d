"""Routes, exporters and framework names: the one table every layer reads (stdlib only, Python 3.8 syntax).

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
}

# Which distribution must be in the environment for a route to make sense.
ROUTE_PACKAGES = {
    "onnxruntime": ("onnxruntime",),
    "onnx2tf": ("onnx2tf",),
    "onnx-tf": ("onnx-tf",),
    "nobuco": ("nobuco",),
}

# The frameworks and converters a report names, in the order a person reads a chain.
FRAMEWORKS = ("torch", "onnx", "onnxruntime", "tensorflow", "tensorflow-cpu", "onnx2tf", "onnx-tf")
# The packages a user pins by hand: the frameworks, plus numpy and protobuf, whose moves break chains.
KEY_PACKAGES = (*FRAMEWORKS, "numpy", "protobuf")
# Versions the worker reports from inside an environment (importlib.metadata), beside the lock.
WORKER_REPORTED = (*FRAMEWORKS, "numpy")
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
# Distributions that belong to the export side of a split chain; everything else is the runtime side's.
# onnx goes to both: torch.onnx needs it to export, and the converters read the file with it.
EXPORT_SIDE = ("torch", "onnxscript", "torchvision")
BOTH_SIDES = ("onnx",)
