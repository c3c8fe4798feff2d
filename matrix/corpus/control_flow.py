"""Data-dependent control flow: a Python `if` on a tensor value, a loop whose trip count depends on the
input, and the same `if` written with torch.cond and with torch.jit.script.

A tracing exporter records only the path examples()[0] takes; the other examples take the other path,
so a graph that baked one branch (or one trip count) fails parity on them.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 4409
LOOP_SEED = 4419
FEATURES = 8
BATCH = 2


# --- if -------------------------------------------------------------------------------------------

def _branch(x):  # type: (torch.Tensor) -> str
    return "then" if bool(x.sum() > 0) else "else"


class IfNet(nn.Module):
    """if sum(x) > 0: 2*lin(x) + 1, else: -lin(x) - 1."""

    def __init__(self):  # type: () -> None
        super().__init__()
        self.lin = nn.Linear(FEATURES, FEATURES)

    def forward(self, x):
        h = self.lin(x)
        if bool(x.sum() > 0):
            return h * 2.0 + 1.0
        else:
            return -h - 1.0


def _then(h):  # type: (torch.Tensor) -> torch.Tensor
    return h * 2.0 + 1.0


def _else(h):  # type: (torch.Tensor) -> torch.Tensor
    return -h - 1.0


class CondNet(IfNet):
    """The same as IfNet, with torch.cond instead of a Python if."""

    def forward(self, x):
        h = self.lin(x)
        return torch.cond(x.sum() > 0, _then, _else, (h,))


def build_if():  # type: () -> nn.Module
    with seeded(SEED):
        model = IfNet()
    return model.eval()


def build_cond():  # type: () -> nn.Module
    with seeded(SEED):  # same seed: same weights and outputs as control_flow
        model = CondNet()
    return model.eval()


def build_script():  # type: () -> nn.Module
    return torch.jit.script(build_if()).eval()


def examples_if():  # type: () -> List[Example]
    g = generator(SEED + 1)
    shape = (BATCH, FEATURES)
    xs = [
        torch.randn(*shape, generator=g) + 1.0,
        torch.randn(*shape, generator=g) - 1.0,
        torch.rand(*shape, generator=g) * 0.5,
        -torch.rand(*shape, generator=g) * 0.5,
    ]
    return [Example((x,), "branch=%s" % _branch(x)) for x in xs]


def expected_if(args):  # type: (tuple) -> str
    return _branch(args[0])


_COND_PROBE = []  # type: List[Optional[str]]


def unavailable_cond():  # type: () -> Optional[str]
    cond = getattr(torch, "cond", None)
    if cond is None:
        return "torch %s has no torch.cond" % torch.__version__
    if not _COND_PROBE:
        # Eager torch.cond goes through torch.compile on some releases, which some Pythons lack
        # (e.g. 3.12 before torch 2.4): then the reference itself cannot run. Probe once per process.
        try:
            with torch.no_grad():
                cond(torch.ones(2).sum() > 0, _then, _else, (torch.ones(2),))
            _COND_PROBE.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure means: not expressible here
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            _COND_PROBE.append("torch.cond cannot run eagerly on torch %s / Python %s: %s"
                               % (torch.__version__, sys.version.split()[0], first))
    return _COND_PROBE[0]


def unavailable_script():  # type: () -> Optional[str]
    if getattr(getattr(torch, "jit", None), "script", None) is None:
        return "torch %s has no torch.jit.script" % torch.__version__
    return None


# --- loop -----------------------------------------------------------------------------------------

MAX_TRIPS = 5


def trips(x):  # type: (torch.Tensor) -> int
    return int(x.abs().max().item()) % MAX_TRIPS + 1


class LoopNet(nn.Module):
    """Apply a residual layer trips(x) times, trips(x) = int(max|x|) % 5 + 1."""

    def __init__(self):  # type: () -> None
        super().__init__()
        self.lin = nn.Linear(FEATURES, FEATURES)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        h = x
        for _ in range(trips(x)):
            h = h + torch.tanh(self.lin(h))
        return h


def build_loop():  # type: () -> nn.Module
    with seeded(LOOP_SEED):
        model = LoopNet()
    return model.eval()


def examples_loop():  # type: () -> List[Example]
    g = generator(LOOP_SEED + 1)
    out = []
    for peak in (0.5, 2.5, 1.5, 3.5):  # max|x| = peak -> trips 1, 3, 2, 4
        x = torch.randn(BATCH, FEATURES, generator=g)
        x = x / x.abs().max() * peak
        out.append(Example((x,), "trips=%d" % trips(x)))
    return out


def expected_loop(args):  # type: (tuple) -> str
    return "trips=%d" % trips(args[0])


_IF_TOL = dict(atol=1e-5, rtol=1e-4,
               tolerance_reason="one Linear layer and elementwise ops in float32; a wrong branch is off by >1")

MODELS = {
    "control_flow": ModelSpec(
        name="control_flow",
        family="control_flow",
        note="Python `if` on a tensor value: tracing bakes in the branch of the export example",
        build=build_if,
        examples=examples_if,
        expected=expected_if,
        **_IF_TOL
    ),
    "control_flow_loop": ModelSpec(
        name="control_flow_loop",
        family="control_flow",
        note="loop whose trip count depends on input values: tracing unrolls the export example's count",
        atol=1e-5,
        rtol=1e-4,
        tolerance_reason="at most 5 small Linear+tanh steps in float32; a wrong trip count is off by >0.1",
        build=build_loop,
        examples=examples_loop,
        expected=expected_loop,
    ),
    "control_flow_cond": ModelSpec(
        name="control_flow_cond",
        family="control_flow",
        note="the control_flow `if` written with torch.cond, the export-friendly form (dynamo can emit ONNX If)",
        build=build_cond,
        examples=examples_if,
        unavailable=unavailable_cond,
        expected=expected_if,
        **_IF_TOL
    ),
    "control_flow_script": ModelSpec(
        name="control_flow_script",
        family="control_flow",
        note="the control_flow `if` as a torch.jit.script module: the TorchScript exporter emits a real ONNX If",
        build=build_script,
        examples=examples_if,
        unavailable=unavailable_script,
        expected=expected_if,
        **_IF_TOL
    ),
}
