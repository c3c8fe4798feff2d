"""A custom operator, knowngood::scaled_tanh(x, scale) = x * tanh(x) * scale, with and without an ONNX
translation.

On torch with torch.library.custom_op (2.4+) it is a real dispatcher op with a fake (meta) kernel.
Before that it is a torch.autograd.Function (note: the TorchScript exporter inlines an autograd.Function
that has no `symbolic`, so on those releases `custom_op` can export where a real custom op would not).

`custom_op_onnx` adds a translation: for the TorchScript exporter register_custom_op_symbolic (or the
Function's `symbolic`), for the dynamo exporter custom_translation_table (torch >= 2.6 with onnxscript).
`custom_op` unregisters the TorchScript symbolic, so a symbolic registered by an earlier case in the
same process cannot leak into it.

No `from __future__ import annotations` here: torch.library.custom_op infers the schema from the
annotations, and some releases cannot resolve string annotations.
"""

import inspect
from typing import Dict, List, Optional

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 6607
OP_NAME = "knowngood::scaled_tanh"
FEATURES = 16

HAS_CUSTOM_OP = getattr(getattr(torch, "library", None), "custom_op", None) is not None


def _reference(x, scale):  # type: (torch.Tensor, torch.Tensor) -> torch.Tensor
    return x * torch.tanh(x) * scale


def _define_custom_op():  # type: () -> object
    """Define knowngood::scaled_tanh once per process; a second import of this file reuses it."""
    existing = _lookup_op()
    if existing is not None:
        return existing
    try:

        @torch.library.custom_op(OP_NAME, mutates_args=())
        def scaled_tanh(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return _reference(x, scale)

        def _fake(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(x)

        scaled_tanh.register_fake(_fake)
    except Exception:  # already registered (e.g. this file imported under another package name)
        existing = _lookup_op()
        if existing is None:
            raise
        return existing
    return _lookup_op()


def _lookup_op():  # type: () -> Optional[object]
    try:
        return torch.ops.knowngood.scaled_tanh
    except (AttributeError, RuntimeError):
        return None


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


OP = _define_custom_op() if HAS_CUSTOM_OP else None


class CustomOpNet(nn.Module):
    """linear -> scaled_tanh -> linear."""

    def __init__(self, with_symbolic):  # type: (bool) -> None
        super().__init__()
        self.with_symbolic = with_symbolic
        self.fc1 = nn.Linear(FEATURES, FEATURES)
        self.scale = nn.Parameter(torch.rand(FEATURES) + 0.5)
        self.fc2 = nn.Linear(FEATURES, 4)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        h = self.fc1(x)
        if OP is not None:
            h = OP(h, self.scale)
        elif self.with_symbolic:
            h = ScaledTanhONNX.apply(h, self.scale)
        else:
            h = ScaledTanh.apply(h, self.scale)
        return self.fc2(h)


def _builder(with_symbolic):  # type: (bool) -> object
    def build():  # type: () -> nn.Module
        with seeded(SEED):  # same weights for both variants
            model = CustomOpNet(with_symbolic)
        return model.eval()

    return build


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(2, FEATURES, generator=g),), "batch of 2, N(0,1)"),
        Example((torch.randn(2, FEATURES, generator=g) * 3.0,), "batch of 2, N(0,9): tanh saturates"),
    ]


# --- TorchScript exporter registration --------------------------------------------------------------

_REGISTERED_OPSETS = set()  # type: set


def _register_symbolic(opset):  # type: (int) -> None
    register = getattr(torch.onnx, "register_custom_op_symbolic", None)
    if register is None:
        return
    register(OP_NAME, _onnx_symbolic, opset)
    _REGISTERED_OPSETS.add(opset)


def _unregister_symbolics():  # type: () -> None
    unregister = getattr(torch.onnx, "unregister_custom_op_symbolic", None)
    if unregister is None:
        return
    for opset in sorted(_REGISTERED_OPSETS):
        try:
            unregister(OP_NAME, opset)
        except Exception:
            pass
    _REGISTERED_OPSETS.clear()


def _accepts_translation_table():  # type: () -> bool
    try:
        return "custom_translation_table" in inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):
        return False


def _dynamo_translation(opset):  # type: (int) -> Dict[object, object]
    """{scaled_tanh.default: onnxscript function}, or {} when this torch/onnxscript cannot take one."""
    if OP is None or not _accepts_translation_table():
        return {}
    try:
        import onnxscript
    except ImportError:
        return {}
    op = getattr(onnxscript, "opset%d" % opset, None) or getattr(onnxscript, "opset18")

    @onnxscript.script(opset=op)
    def scaled_tanh_onnx(x, scale):  # type: ignore[no-untyped-def]
        return op.Mul(op.Mul(x, op.Tanh(x)), scale)

    return {"custom_translation_table": {torch.ops.knowngood.scaled_tanh.default: scaled_tanh_onnx}}


def export_kwargs_plain(exporter, opset):  # type: (str, int) -> dict
    if exporter == "torchscript":
        _unregister_symbolics()
    return {}


def export_kwargs_onnx(exporter, opset):  # type: (str, int) -> dict
    if exporter == "torchscript":
        if OP is not None:  # the autograd.Function stand-in carries its own `symbolic`
            _register_symbolic(opset)
        return {}
    if exporter == "dynamo":
        return _dynamo_translation(opset)
    return {}


MODELS = {
    "custom_op": ModelSpec(
        name="custom_op",
        family="custom_op",
        note="custom operator with no ONNX translation registered: 'Unsupported operator knowngood::scaled_tanh'",
        atol=1e-5,
        rtol=1e-4,
        tolerance_reason="two small Linear layers and one tanh in float32, ~1e-7 typical",
        build=_builder(False),
        examples=examples,
        export_kwargs=export_kwargs_plain,
    ),
    "custom_op_onnx": ModelSpec(
        name="custom_op_onnx",
        family="custom_op",
        note="the same custom operator with an ONNX translation (symbolic / custom_translation_table) supplied",
        atol=1e-5,
        rtol=1e-4,
        tolerance_reason="two small Linear layers and one tanh in float32, ~1e-7 typical",
        build=_builder(True),
        examples=examples,
        export_kwargs=export_kwargs_onnx,
    ),
}
