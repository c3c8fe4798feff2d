"""knowngood: measured compatibility of PyTorch, ONNX, ONNX Runtime, TensorFlow and converters.

The entry points live here (cli, report, docs); nothing below imports them.
"""

from store import __version__

__all__ = ["__version__"]
