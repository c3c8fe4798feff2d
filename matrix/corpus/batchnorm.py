"""BatchNorm1d + BatchNorm2d with non-default momentum/eps and running statistics from seeded training.

`batchnorm` is exported in eval mode, as it should be. `batchnorm_train` is the same network left in
train() mode: PyTorch then normalises with the batch's statistics while exporters (the TorchScript one
exports in eval mode by default) bake in the running statistics - the "92% became 67%" trap.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 5503
MOMENTUM = 0.3  # PyTorch's default is 0.1 (and TF's convention is 1 - momentum)
EPS = 1e-3  # PyTorch's default is 1e-5
TRAIN_STEPS = 6
BATCH = 4


class BNNet(nn.Module):
    """conv -> bn2d -> relu -> global average pool -> linear -> bn1d -> relu -> linear."""

    def __init__(self):  # type: () -> None
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
        self.bn2d = nn.BatchNorm2d(8, eps=EPS, momentum=MOMENTUM)
        self.fc1 = nn.Linear(8, 16, bias=False)
        self.bn1d = nn.BatchNorm1d(16, eps=EPS, momentum=MOMENTUM)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        h = torch.relu(self.bn2d(self.conv(x)))
        h = h.mean(dim=(2, 3))
        h = torch.relu(self.bn1d(self.fc1(h)))
        return self.fc2(h)


def _trained():  # type: () -> nn.Module
    with seeded(SEED):
        model = BNNet()
    with torch.no_grad():
        # non-default affine parameters too
        g = generator(SEED + 1)
        for bn in (model.bn2d, model.bn1d):
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
        # running statistics from a few seeded train-mode passes on data with mean 2 and scale 3
        model.train()
        for _ in range(TRAIN_STEPS):
            model(torch.randn(8, 3, 16, 16, generator=g) * 3.0 + 2.0)
    return model


def build():  # type: () -> nn.Module
    return _trained().eval()


def build_train():  # type: () -> nn.Module
    return _trained().train()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 2)
    return [
        Example((torch.randn(BATCH, 3, 16, 16, generator=g) * 3.0 + 2.0,),
                "batch of %d, like the training data (mean 2, scale 3)" % BATCH),
        Example((torch.randn(BATCH, 3, 16, 16, generator=g),),
                "batch of %d, N(0,1): far from the running statistics" % BATCH),
    ]


MODELS = {
    "batchnorm": ModelSpec(
        name="batchnorm",
        family="batchnorm",
        note="BatchNorm1d/2d, momentum 0.3, eps 1e-3, trained running stats, eval mode: stats/eps/momentum must survive conversion",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 conv + BN folding (eps 1e-3 inside rsqrt) in another order, ~1e-6 typical",
        build=build,
        examples=examples,
    ),
    "batchnorm_train": ModelSpec(
        name="batchnorm_train",
        family="batchnorm",
        note="the batchnorm net left in train() mode at export: PyTorch uses batch stats, exported graphs usually running stats",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="same arithmetic as batchnorm; batch-vs-running statistics differ by >0.1",
        build=build_train,
        examples=examples,
    ),
}
