"""A custom operator, scaled_tanh(x, scale) = x * tanh(x) * scale, with and without an ONNX translation.

On torch with torch.library.custom_op (2.4+) it is a real dispatcher op with a fake (meta) kernel.
Before that it is a torch.autograd.Function (note: the TorchScript exporter inlines an autograd.Function
that has no `symbolic`, so on those releases `custom_op` can export where a real custom op would not).

`custom_op` uses knowngood::scaled_tanh, for which no translation is ever registered. `custom_op_onnx`
uses the same function defined as knowngood::scaled_tanh_onnx and supplies a translation: for the
TorchScript exporter torch.onnx.register_custom_op_symbolic (or the Function's `symbolic`), for the
dynamo exporter custom_translation_table (torch >= 2.6 with onnxscript). Two op names, because the
worker runs many cases in one process and a registered symbolic is process-global:
unregister_custom_op_symbolic leaves an empty entry behind that makes later exports of the op fail with
"min() arg is an empty sequence" instead of the unsupported-operator error.

No `from __future__ import annotations` here: torch.library.custom_op infers the schema from the
annotations, and some releases cannot resolve string annotations.
"""

import inspect
from typing import Dict, List, Optional

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 6607
NAMESPACE = "knowngood"
PLAIN = "scaled_tanh"  # never gets an ONNX translation
TRANSLATED = "scaled_tanh_onnx"  # gets one via export_kwargs
FEATURES = 16

HAS_CUSTOM_OP = getattr(getattr(torch, "library", None), "custom_op", None) is not None


def _reference(x, scale):  # type: (torch.Tensor, torch.Tensor) -> torch.Tensor
    return x * torch.tanh(x) * scale


def _lookup_op(name):  # type: (str) -> Optional[object]
    try:
        return getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return None


def _define_custom_op(name):  # type: (str) -> object
    """Define knowngood::<name> once per process; a second import of this file reuses it."""
    existing = _lookup_op(name)
    if existing is not None:
        return existing
    try:

        def scaled_tanh(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return _reference(x, scale)

        def _fake(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(x)

        op = torch.library.custom_op("%s::%s" % (NAMESPACE, name), scaled_tanh, mutates_args=())
        op.register_fake(_fake)
    except Exception:  # already registered (e.g. this file imported under another package name)
        existing = _lookup_op(name)
        if existing is None:
            raise
        return existing
    return _lookup_op(name)


class ScaledTanh(torch.autograd.Function):
    """The pre-2.4 stand-in: no `symbolic`, so no ONNX translation."""

    @staticmethod
    def forward(ctx, x, scale):  # type: ignore[override]
        return _reference(x, scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise NotImplementedError("inference only")


def _onnx_symbolic(g, x, scale):  # type: ignore[no-untyped-def]
    """TorchScript-exporter translation to standard ONNX ops: Mul(Mul(x, Tanh(x)), scale)."""
    return g.op("Mul", g.op("Mul", x, g.op("Tanh", x)), scale)


class ScaledTanhONNX(ScaledTanh):
    """The pre-2.4 stand-in with an ONNX translation."""

    @staticmethod
    def symbolic(g, x, scale):  # type: ignore[no-untyped-def]
        return _onnx_symbolic(g, x, scale)


if HAS_CUSTOM_OP:
    OP_PLAIN = _define_custom_op(PLAIN)  # type: Optional[object]
    OP_TRANSLATED = _define_custom_op(TRANSLATED)  # type: Optional[object]
else:
    OP_PLAIN = OP_TRANSLATED = None


class CustomOpNet(nn.Module):
    """linear -> scaled_tanh -> linear."""

    def __init__(self, translated):  # type: (bool) -> None
        super().__init__()
        self.translated = translated
        self.fc1 = nn.Linear(FEATURES, FEATURES)
        self.scale = nn.Parameter(torch.rand(FEATURES) + 0.5)
        self.fc2 = nn.Linear(FEATURES, 4)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        h = self.fc1(x)
        if self.translated:
            h = OP_TRANSLATED(h, self.scale) if OP_TRANSLATED is not None else ScaledTanhONNX.apply(h, self.scale)
        else:
            h = OP_PLAIN(h, self.scale) if OP_PLAIN is not None else ScaledTanh.apply(h, self.scale)
        return self.fc2(h)


def _builder(translated):  # type: (bool) -> object
    def build():  # type: () -> nn.Module
        with seeded(SEED):  # same weights for both variants
            model = CustomOpNet(translated)
        return model.eval()

    return build


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(2, FEATURES, generator=g),), "batch of 2, N(0,1)"),
        Example((torch.randn(2, FEATURES, generator=g) * 3.0,), "batch of 2, N(0,9): tanh saturates"),
    ]


def _accepts_translation_table():  # type: () -> bool
    try:
        return "custom_translation_table" in inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):
        return False


def _dynamo_translation(opset):  # type: (int) -> Dict[object, object]
    """{scaled_tanh_onnx.default: onnxscript function}, or {} when this torch/onnxscript cannot take one."""
    if OP_TRANSLATED is None or not _accepts_translation_table():
        return {}
    try:
        import onnxscript
    except ImportError:
        return {}
    op = getattr(onnxscript, "opset%d" % opset, None) or getattr(onnxscript, "opset18")

    # A plain function, run by the exporter in onnxscript's trace mode (the form torch >= 2.6 documents).
    # Not @onnxscript.script: that parses this source, resolves names only from module globals, and
    # without type annotations declares no output ("'tuple' object has no attribute 'shape'").
    def scaled_tanh_onnx(x, scale):  # type: ignore[no-untyped-def]
        return op.Mul(op.Mul(x, op.Tanh(x)), scale)

    return {"custom_translation_table": {OP_TRANSLATED.default: scaled_tanh_onnx}}


def export_kwargs_translated(exporter, opset):  # type: (str, int) -> dict
    if exporter == "torchscript":
        register = getattr(torch.onnx, "register_custom_op_symbolic", None)
        if OP_TRANSLATED is not None and register is not None:
            # the autograd.Function stand-in (torch < 2.4) carries its own `symbolic` instead
            register("%s::%s" % (NAMESPACE, TRANSLATED), _onnx_symbolic, opset)
        return {}
    if exporter == "dynamo":
        return _dynamo_translation(opset)
    return {}


_TOL = dict(atol=1e-5, rtol=1e-4, tolerance_reason="two small Linear layers and one tanh in float32, ~1e-7 typical")

MODELS = {
    "custom_op": ModelSpec(
        name="custom_op",
        family="custom_op",
        note="custom operator (knowngood::scaled_tanh) with no ONNX translation: 'unsupported operator' at export",
        build=_builder(False),
        examples=examples,
        **_TOL
    ),
    "custom_op_onnx": ModelSpec(
        name="custom_op_onnx",
        family="custom_op",
        note="the same custom operator with an ONNX translation supplied (register_custom_op_symbolic / custom_translation_table)",
        build=_builder(True),
        examples=examples,
        export_kwargs=export_kwargs_translated,
        **_TOL
    ),
}
