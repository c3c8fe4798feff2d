"""A spatial transformer network as it is written: F.affine_grid, then F.grid_sample (bilinear, align_corners=False).

The grid_sample* models write the affine grid out by hand, to measure grid_sample alone. A real STN (the
PyTorch tutorial, kornia, most papers' code) calls F.affine_grid, which the TorchScript exporter maps to
ONNX AffineGrid only from opset 20, and not at all on torch 2.0.1: that is what this model measures.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn
import torch.nn.functional as F

from . import Example, ModelSpec, generator, seeded

SEED = 3401
C, H, W = 3, 32, 32


class STN(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.loc = nn.Sequential(
            nn.Conv2d(C, 8, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 6)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        theta = self.fc(self.loc(x).mean(dim=(2, 3))).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size(), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = STN()
        with torch.no_grad():
            # theta near identity (a mild zoom, rotation and shift) plus seeded noise, as a trained STN has
            model.fc.weight.mul_(0.05)
            model.fc.bias.copy_(torch.tensor([0.9, 0.1, 0.05, -0.08, 0.85, -0.03]) + 0.02 * torch.randn(6))
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(1, C, H, W, generator=g),), "image 1x3x32x32, N(0,1)"),
        Example((torch.rand(1, C, H, W, generator=g) * 3.0 - 1.0,), "image 1x3x32x32, U(-1,2)"),
    ]


MODELS = {
    "spatial_transformer": ModelSpec(
        name="spatial_transformer",
        family="spatial_transformer",
        note="STN as written: F.affine_grid + F.grid_sample (bilinear, align_corners=False); "
             "TorchScript exports affine_grid only from opset 20",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 grid arithmetic moves sample points by ~1e-6 px; bilinear output moves proportionally",
        build=build,
        examples=examples,
    ),
}
