"""F.interpolate as decoders and FPNs use it: bilinear and nearest, align_corners both ways, an integer scale
factor and a non-integer output size, as six outputs of one model.

ONNX Resize encodes each combination in coordinate_transformation_mode / nearest_mode / scales-or-sizes;
exporters have picked the wrong mode (half_pixel vs pytorch_half_pixel, round vs floor) and converters to
TensorFlow map them onto tf.image.resize, whose conventions differ again. Which output is wrong is in the
parity step's per-output figures.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from . import Example, ModelSpec, generator, seeded

SEED = 7411
C, H, W = 4, 12, 16
# 23/12 and 27/16: non-integer ratios, and each output size coprime with its input size, so nearest's source
# coordinate dst * in / out is an integer only at dst = 0 and otherwise >= 1/27 px from one: float32 noise
# in the scale cannot move it across floor() in one runtime and not the other.
SIZE = (23, 27)


class Upsample(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.conv = nn.Conv2d(3, C, kernel_size=3, padding=1)

    def forward(self, x):  # type: (torch.Tensor) -> Tuple[torch.Tensor, ...]
        h = self.conv(x)
        return (
            F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False),
            F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=True),
            F.interpolate(h, scale_factor=2.0, mode="nearest"),
            F.interpolate(h, size=SIZE, mode="bilinear", align_corners=False),
            F.interpolate(h, size=SIZE, mode="bilinear", align_corners=True),
            F.interpolate(h, size=SIZE, mode="nearest"),
        )


OUTPUTS = [
    "bilinear x2 align_corners=False", "bilinear x2 align_corners=True", "nearest x2",
    "bilinear to %dx%d align_corners=False" % SIZE, "bilinear to %dx%d align_corners=True" % SIZE,
    "nearest to %dx%d" % SIZE,
]


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = Upsample()
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(1, 3, H, W, generator=g),), "feature map 1x3x12x16, N(0,1)"),
        Example((torch.rand(1, 3, H, W, generator=g) * 4.0 - 1.0,), "feature map 1x3x12x16, U(-1,3)"),
    ]


MODELS = {
    "interpolate": ModelSpec(
        name="interpolate",
        family="interpolate",
        note="F.interpolate bilinear (align_corners False/True) and nearest, x2 and to a non-integer size: six Resize modes",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="bilinear weights in float32 (~1e-6); nearest copies values, so a wrong mode is off by O(1)",
        build=build,
        examples=examples,
    ),
}
