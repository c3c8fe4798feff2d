"""A 2-layer batch_first nn.LSTM with a linear head on the last time step: the sequence model in production.

Exporters emit ONNX LSTM (gates in i, o, f, c order against torch's i, f, g, o) with a time-major layout,
so batch_first needs transposes; converters to TensorFlow rebuild the recurrence from that op, and either
step is where gate order, layout or initial states go wrong.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 4107
FEATURES = 16
HIDDEN = 32
BATCH, SEQ = 2, 10
NUM_OUT = 5


class LSTMHead(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, NUM_OUT)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        """x: (B, T, F). Returns (B, NUM_OUT) from the last time step of the top layer."""
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = LSTMHead()
        with torch.no_grad():
            # Non-zero forget-gate bias, as trained LSTMs have: a swapped gate order then shows in the output.
            for name, p in model.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    p[HIDDEN:2 * HIDDEN].add_(1.0)
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(BATCH, SEQ, FEATURES, generator=g),), "batch of 2, 10 steps, N(0,1)"),
        Example((torch.rand(BATCH, SEQ, FEATURES, generator=g) * 6.0 - 3.0,), "batch of 2, 10 steps, U(-3,3) (saturating)"),
    ]


MODELS = {
    "lstm": ModelSpec(
        name="lstm",
        family="lstm",
        note="2-layer batch_first LSTM + linear head: gate order, time-major layout and states in ONNX LSTM",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 gate matmuls over 10 recurrent steps (sigmoid/tanh), ~1e-6 typical",
        build=build,
        examples=examples,
    ),
}
