"""Import frameworks in the given order and report resident memory: `python -I probe.py torch,tensorflow`.

Measures what a practitioner reports (memory doubling with both frameworks in one process) and catches
import-order crashes, which kill this process rather than a case.
"""

from __future__ import annotations

import importlib
import json
import sys
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    modules = [m for m in sys.argv[1].split(",") if m]
    started = time.perf_counter()
    loaded = []
    for name in modules:
        importlib.import_module(name)
        loaded.append(name)
    if "torch" in loaded:
        import torch

        torch.ones(64, 64) @ torch.ones(64, 64)  # touch the kernels a case would load
    if "tensorflow" in loaded:
        import tensorflow as tf

        tf.matmul(tf.ones((64, 64)), tf.ones((64, 64)))
    print(json.dumps({"modules": loaded, "rss": _status("VmRSS"), "peak_rss": _status("VmHWM"),
                      "seconds": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
