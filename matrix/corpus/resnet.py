"""ResNet-18 topology (BasicBlock x [2, 2, 2, 2]) built in code, reduced width, non-default BN statistics.

Stands for the "ResNets usually export fine" baseline: if this fails, the environment itself is broken.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 1801
BASE = 16  # torchvision's resnet18 uses 64; 16 keeps export + conversion to a few seconds
NUM_CLASSES = 10


def _conv3x3(cin, cout, stride=1):  # type: (int, int, int) -> nn.Conv2d
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1):  # type: (int, int, int) -> None
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None  # type: Optional[nn.Module]
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, base=BASE, num_classes=NUM_CLASSES):  # type: (int, int) -> None
        super().__init__()
        # ImageNet-style stem, as in torchvision's resnet18
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers = []  # type: List[nn.Module]
        cin = base
        for i, blocks in enumerate([2, 2, 2, 2]):
            cout = base * (2 ** i)
            stride = 1 if i == 0 else 2
            stage = []  # type: List[nn.Module]
            for b in range(blocks):
                stage.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _set_bn_stats(model, seed):  # type: (nn.Module, int) -> None
    """Non-default running statistics and affine parameters, as a trained network would have."""
    g = generator(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.0 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.6 + 0.7)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.num_batches_tracked.fill_(100)


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = ResNet18()
    _set_bn_stats(model, SEED + 1)
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 2)
    return [
        Example((torch.randn(1, 3, 32, 32, generator=g),), "image 1x3x32x32, N(0,1)"),
        Example((torch.rand(1, 3, 32, 32, generator=g) * 2.0 - 0.5,), "image 1x3x32x32, U(-0.5,1.5)"),
    ]


MODELS = {
    "resnet": ModelSpec(
        name="resnet",
        family="resnet",
        note="ResNet-18 topology (conv/BN/ReLU/residual/maxpool/avgpool/linear): the baseline that should always convert",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 conv accumulation order and Conv+BN folding differ between runtimes (~1e-6 typical)",
        build=build,
        examples=examples,
    ),
}
