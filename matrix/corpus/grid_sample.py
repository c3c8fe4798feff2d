"""A spatial transformer: a small localisation net predicts theta (near identity), then grid_sample.

The affine grid is written out with plain ops (the same arithmetic as F.affine_grid), because the
TorchScript exporter supports aten::affine_grid_generator only from opset 20, which would hide what this
model measures: grid_sample itself (ONNX GridSample exists from opset 16).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn
import torch.nn.functional as F

from . import Example, ModelSpec, generator, seeded

SEED = 3307
C, H, W = 3, 32, 32


def _linspace_from_neg_one(steps, align_corners):  # type: (int, bool) -> torch.Tensor
    """As ATen's affine_grid_generator computes it."""
    if steps <= 1:
        return torch.zeros(1)
    r = torch.linspace(-1.0, 1.0, steps)
    if not align_corners:
        r = r * (steps - 1) / steps
    return r


def base_grid(h, w, align_corners):  # type: (int, int, bool) -> torch.Tensor
    """(H*W, 3) rows of (x, y, 1), x fastest."""
    xs = _linspace_from_neg_one(w, align_corners)
    ys = _linspace_from_neg_one(h, align_corners)
    grid = torch.ones(h, w, 3)
    grid[:, :, 0] = xs.view(1, w).expand(h, w)
    grid[:, :, 1] = ys.view(h, 1).expand(h, w)
    return grid.view(h * w, 3)


class SpatialTransformer(nn.Module):
    def __init__(self, mode, align_corners):  # type: (str, bool) -> None
        super().__init__()
        self.mode = mode
        self.align_corners = align_corners
        self.loc = nn.Sequential(
            nn.Conv2d(C, 8, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 6)
        self.register_buffer("grid_base", base_grid(H, W, align_corners))

    def theta(self, x):  # type: (torch.Tensor) -> torch.Tensor
        return self.fc(self.loc(x).mean(dim=(2, 3))).view(x.shape[0], 2, 3)

    def grid(self, theta):  # type: (torch.Tensor) -> torch.Tensor
        # == F.affine_grid(theta, [n, C, H, W], align_corners): (H*W, 3) @ (n, 3, 2) -> (n, H*W, 2)
        return torch.matmul(self.grid_base, theta.transpose(1, 2)).view(theta.shape[0], H, W, 2)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        grid = self.grid(self.theta(x))
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=self.align_corners)


# Nearest sampling rounds each sample point to a pixel: a point within float32 noise (~1e-5 px) of a
# rounding tie (.5) can land on either neighbour in another runtime, a spurious mismatch. The nearest
# variants' examples are drawn (deterministically) until every sample point is >= TIE_MARGIN px from a tie.
TIE_MARGIN = 2e-4


def tie_margin(model, x):  # type: (SpatialTransformer, torch.Tensor) -> float
    """Smallest distance (in pixels) of a sample point of `x` from a nearest-rounding tie."""
    with torch.no_grad():
        g = model.grid(model.theta(x)).double()
    size = torch.tensor([float(W), float(H)], dtype=torch.float64)
    if model.align_corners:
        pix = (g + 1) / 2 * (size - 1)
    else:
        pix = ((g + 1) * size - 1) / 2
    return float((pix - pix.floor() - 0.5).abs().min())


def _builder(mode, align_corners, seed):  # type: (str, bool, int) -> object
    def build():  # type: () -> nn.Module
        with seeded(seed):
            model = SpatialTransformer(mode, align_corners)
            with torch.no_grad():
                # theta near identity (a mild zoom, rotation and shift) plus seeded noise
                model.fc.weight.mul_(0.05)
                model.fc.bias.copy_(
                    torch.tensor([0.9, 0.1, 0.05, -0.08, 0.85, -0.03]) + 0.02 * torch.randn(6)
                )
        return model.eval()

    return build


def _examples_for(seed, build, mode):  # type: (int, object, str) -> object
    def examples():  # type: () -> List[Example]
        g = generator(seed)
        model = build() if mode == "nearest" else None
        draws = [
            (lambda: torch.randn(1, C, H, W, generator=g), "image 1x3x32x32, N(0,1)"),
            (lambda: torch.rand(1, C, H, W, generator=g) * 3.0 - 1.0, "image 1x3x32x32, U(-1,2)"),
        ]
        out = []
        for draw, note in draws:
            x = draw()
            for _ in range(100):
                if model is None or tie_margin(model, x) >= TIE_MARGIN:
                    break
                x = draw()
            out.append(Example((x,), note))
        return out

    return examples


_VARIANTS = [
    # name, mode, align_corners, note
    ("grid_sample", "bilinear", False,
     "grid_sample bilinear, align_corners=False (spatial transformer): 'Unsupported operator aten::grid_sampler_2d' below opset 16"),
    ("grid_sample_nearest", "nearest", False,
     "grid_sample nearest, align_corners=False: nearest rounding conventions differ between runtimes"),
    ("grid_sample_align", "bilinear", True,
     "grid_sample bilinear, align_corners=True: a flag converters drop or invert"),
    ("grid_sample_nearest_align", "nearest", True,
     "grid_sample nearest, align_corners=True: both flags at once"),
]

MODELS = {}
for _i, (_name, _mode, _align, _note) in enumerate(_VARIANTS):
    _seed = SEED + 10 * _i
    _build = _builder(_mode, _align, _seed)
    MODELS[_name] = ModelSpec(
        name=_name,
        family="grid_sample",
        note=_note,
        atol=1e-4 if _mode == "bilinear" else 1e-5,
        rtol=1e-3 if _mode == "bilinear" else 1e-4,
        tolerance_reason=(
            "float32 grid arithmetic moves sample points by ~1e-6 px; bilinear output moves proportionally"
            if _mode == "bilinear"
            else "nearest copies input pixels exactly; examples keep every sample point >=2e-4 px from a "
                 "rounding tie, so any difference is a real mismatch"
        ),
        build=_build,
        examples=_examples_for(_seed + 1, _build, _mode),
    )
