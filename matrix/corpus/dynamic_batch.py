"""A small conv classifier exported with a dynamic batch axis and run at batch sizes other than the traced one.

What serving needs: one file for every batch size. The model reads the batch size the way user code does
(x.view(x.size(0), ...), a learned token expanded to the batch, x.shape[0] in a reshape); a trace that
baked the traced size into a Reshape or Expand fails at batch 1 and 5 although it passes at 2. The export
declares the axis (ModelSpec.dynamic_axes: dynamic_axes for TorchScript, dynamic_shapes for dynamo).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 8513
C, H, W = 3, 16, 16
WIDTH = 16
NUM_OUT = 6
TRACED = 2  # not 1: torch.export specialises a size-1 dimension, which would refuse the dynamic axis


class BatchAgnostic(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(C, WIDTH, 3, stride=2, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU())
        self.token = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.mix = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, NUM_OUT)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        h = self.conv(x)
        tokens = h.view(x.size(0), WIDTH, -1).transpose(1, 2)  # (B, HW/4, WIDTH)
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), tokens], dim=1)
        weights = torch.softmax(self.mix(tokens).sum(dim=-1), dim=1).reshape(x.shape[0], -1, 1)
        return self.head((weights * tokens).sum(dim=1))


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = BatchAgnostic()
        with torch.no_grad():
            model.conv[1].running_mean.copy_(torch.randn(WIDTH) * 0.2)
            model.conv[1].running_var.copy_(torch.rand(WIDTH) + 0.5)
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(TRACED, C, H, W, generator=g),), "batch of %d (the traced size)" % TRACED),
        Example((torch.randn(1, C, H, W, generator=g),), "batch of 1"),
        Example((torch.rand(5, C, H, W, generator=g) * 2.0 - 0.5,), "batch of 5, U(-0.5,1.5)"),
    ]


MODELS = {
    "dynamic_batch": ModelSpec(
        name="dynamic_batch",
        family="dynamic_batch",
        note="exported with a dynamic batch axis (traced at 2), run at batch 1 and 5: sizes baked into Reshape/Expand",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 conv, softmax and linear layers (~1e-6 typical)",
        build=build,
        examples=examples,
        dynamic_axes={"input_0": {0: "batch"}, "output_0": {0: "batch"}},
    ),
}
