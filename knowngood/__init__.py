"""knowngood: measured compatibility of PyTorch, ONNX, ONNX Runtime, TensorFlow and converters."""

__version__ = "0.1.0"
