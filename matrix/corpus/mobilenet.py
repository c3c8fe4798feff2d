"""A MobileNetV3-style network built in code: depthwise separable convs, hardswish, squeeze-excite.

The mobile classifier and detection backbone: depthwise convolution (group == channels), hardswish and
hardsigmoid (ONNX HardSwish from opset 14; before that a decomposition), and squeeze-excite's global pool
and channel-wise multiply, each a place where converters to TensorFlow/TFLite change layout or op.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 5209
NUM_CLASSES = 10


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation as MobileNetV3 uses it: ReLU, then hardsigmoid."""

    def __init__(self, channels, squeeze):  # type: (int, int) -> None
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (squeeze-excite) -> project 1x1, residual when shapes allow."""

    def __init__(self, cin, expand, cout, kernel, stride, se, hswish):
        # type: (int, int, int, int, int, bool, bool) -> None
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers = []  # type: List[nn.Module]
        if expand != cin:
            layers += [nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), act()]
        layers += [
            nn.Conv2d(expand, expand, kernel, stride=stride, padding=kernel // 2, groups=expand, bias=False),
            nn.BatchNorm2d(expand),
            act(),
        ]
        if se:
            layers.append(SqueezeExcite(expand, max(8, expand // 4)))
        layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        out = self.block(x)
        return out + x if self.residual else out


# MobileNetV3-Small's first blocks, narrowed: (in, expanded, out, kernel, stride, squeeze-excite, hardswish)
BLOCKS = [
    (16, 16, 16, 3, 2, True, False),
    (16, 48, 24, 3, 2, False, False),
    (24, 64, 24, 3, 1, False, False),
    (24, 72, 32, 5, 2, True, True),
    (32, 96, 32, 5, 1, True, True),
]


class MobileNetV3(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        self.blocks = nn.Sequential(*[InvertedResidual(*b) for b in BLOCKS])
        self.last = nn.Sequential(nn.Conv2d(32, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, NUM_CLASSES))

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        x = self.pool(self.last(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))


def _set_bn_stats(model, seed):  # type: (nn.Module, int) -> None
    """Non-default running statistics, as a trained network has (BN folded into conv must carry them)."""
    g = generator(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.0 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.6 + 0.7)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = MobileNetV3()
    _set_bn_stats(model, SEED + 1)
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 2)
    return [
        Example((torch.randn(1, 3, 64, 64, generator=g),), "image 1x3x64x64, N(0,1)"),
        Example((torch.rand(1, 3, 64, 64, generator=g) * 8.0 - 4.0,), "image 1x3x64x64, U(-4,4) (hardswish's ±3 knees)"),
    ]


MODELS = {
    "mobilenet": ModelSpec(
        name="mobilenet",
        family="mobilenet",
        note="MobileNetV3-style: depthwise separable conv, hardswish/hardsigmoid, squeeze-excite",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 conv accumulation and Conv+BN folding differ between runtimes (~1e-6 typical)",
        build=build,
        examples=examples,
    ),
}
