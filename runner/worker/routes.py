"""Routes and the steps each runs, in order. Stdlib only: imported by the worker and the service."""

EXPORTERS = ("torchscript", "dynamo")

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
