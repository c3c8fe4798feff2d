"""The model corpus: small canonical models that stand for real-world export/conversion failures.

This file must stay importable without torch: the service side imports it to read REGISTRY and to hash
the family files (model_file). Family modules (resnet.py, ...) import torch and are loaded lazily by
load(). Everything here and in the family modules is Python 3.8 syntax and imports only the standard
library, torch and numpy, because it runs inside the case environments (torch 2.0 ... newest).

A family module defines MODELS: dict name -> ModelSpec. Weights are seeded in build() (global RNG forked,
so the caller's RNG state is untouched), inputs are seeded with a torch.Generator: two builds give
bit-identical outputs on the same inputs. All examples of one model share shapes and dtypes, because the
export is traced from examples()[0] with static shapes, except along the axes a model declares dynamic
(ModelSpec.dynamic_axes): there its examples may, and should, differ from the traced one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["REGISTRY", "Example", "ModelSpec", "load", "model_file", "names", "seeded", "generator"]

# model name -> family module in this package
REGISTRY = {
    "resnet": "resnet",
    "transformer": "transformer",
    "transformer_padding_mask": "transformer",
    "vit": "vit",
    "lstm": "lstm",
    "mobilenet": "mobilenet",
    "spatial_transformer": "spatial_transformer",
    "interpolate": "interpolate",
    "dynamic_batch": "dynamic_batch",
    "grid_sample": "grid_sample",
    "grid_sample_nearest": "grid_sample",
    "grid_sample_align": "grid_sample",
    "grid_sample_nearest_align": "grid_sample",
    "control_flow": "control_flow",
    "control_flow_loop": "control_flow",
    "control_flow_cond": "control_flow",
    "control_flow_script": "control_flow",
    "batchnorm": "batchnorm",
    "batchnorm_train": "batchnorm",
    "custom_op": "custom_op",
    "custom_op_onnx": "custom_op",
}  # type: Dict[str, str]

# Models whose build or export loads torch._dynamo (torch.library ops, torch.cond). The worker imports it
# before TensorFlow only when one of these (or a dynamo export) is among its cases: loaded after TF, it aborts.
LOADS_DYNAMO = frozenset(["custom_op", "custom_op_onnx", "control_flow_cond"])

_HERE = os.path.dirname(os.path.abspath(__file__))


class Example(object):
    """One example input: model(*args). note says what it exercises."""

    __slots__ = ("args", "note")

    def __init__(self, args, note=""):  # type: (Tuple[Any, ...], str) -> None
        self.args = tuple(args)
        self.note = note

    def __repr__(self):  # type: () -> str
        return "Example(%s, shapes=%s)" % (
            self.note, [tuple(getattr(a, "shape", ())) for a in self.args])


def _no_kwargs(exporter, opset):  # type: (str, int) -> dict
    return {}


def _available():  # type: () -> Optional[str]
    return None


class ModelSpec(object):
    """What the worker needs to build, feed, export and judge one model."""

    def __init__(
        self,
        name,  # type: str
        family,  # type: str
        note,  # type: str
        atol,  # type: float
        rtol,  # type: float
        tolerance_reason,  # type: str
        build,  # type: Callable[[], Any]
        examples,  # type: Callable[[], List[Example]]
        unavailable=None,  # type: Optional[Callable[[], Optional[str]]]
        export_kwargs=None,  # type: Optional[Callable[[str, int], dict]]
        expected=None,  # type: Optional[Callable[[tuple], str]]
        dynamic_axes=None,  # type: Optional[Dict[str, Dict[int, str]]]
    ):  # type: (...) -> None
        self.name = name
        self.family = family
        self.note = note
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.tolerance_reason = tolerance_reason
        self.build = build
        self.examples = examples
        self.unavailable = unavailable if unavailable is not None else _available
        self.export_kwargs = export_kwargs if export_kwargs is not None else _no_kwargs
        self.expected = expected
        # torch.onnx's own form, on the names the worker gives: {"input_0": {0: "batch"}, "output_0": {0: "batch"}}.
        # The worker passes it as dynamic_axes to the TorchScript exporter and turns the input entries into
        # dynamic_shapes (one torch.export.Dim per name) for the dynamo exporter.
        self.dynamic_axes = dict(dynamic_axes or {})

    def __repr__(self):  # type: () -> str
        return "ModelSpec(%r, family=%r)" % (self.name, self.family)


def names():  # type: () -> List[str]
    return list(REGISTRY)


def _unknown(name):  # type: (str) -> KeyError
    return KeyError("unknown model %r; known models: %s" % (name, ", ".join(sorted(REGISTRY))))


def load(name):  # type: (str) -> ModelSpec
    """Import the family module of `name` (lazily, relative to this package) and return its spec."""
    if name not in REGISTRY:
        raise _unknown(name)
    package = __package__ or __name__
    module = importlib.import_module("." + REGISTRY[name], package)
    try:
        return module.MODELS[name]
    except KeyError:
        raise _unknown(name) from None


def model_file(name):  # type: (str) -> str
    """Absolute path of the family source file of `name` (no torch import)."""
    if name not in REGISTRY:
        raise _unknown(name)
    return os.path.join(_HERE, REGISTRY[name] + ".py")


@contextlib.contextmanager
def seeded(seed):  # type: (int) -> Any
    """Run a block with torch's global CPU RNG seeded, restoring the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def generator(seed):  # type: (int) -> Any
    """A seeded CPU torch.Generator for example inputs."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g
