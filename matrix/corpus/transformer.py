"""nn.TransformerEncoder (2 layers, d_model 32, 4 heads, batch_first) with a key-padding mask, in eval mode.

Eval mode under no_grad is where torch takes the fused "fast path" (aten::_transformer_encoder_layer_fwd,
nested tensors for padded batches), which exporters have repeatedly failed to handle.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from . import Example, ModelSpec, generator, seeded

SEED = 2203
D_MODEL = 32
HEADS = 4
LAYERS = 2
BATCH = 2
SEQ = 8
PAD = 3  # padded positions at the end of sequence 1 in the padded example
NUM_OUT = 8


class Encoder(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=D_MODEL, nhead=HEADS, dim_feedforward=64, dropout=0.1, batch_first=True
        )
        # enable_nested_tensor=True (the default) is what turns a padded batch into a nested tensor
        self.encoder = nn.TransformerEncoder(layer, num_layers=LAYERS)
        self.head = nn.Linear(D_MODEL, NUM_OUT)

    def forward(self, x, mask):  # type: (torch.Tensor, torch.Tensor) -> torch.Tensor
        """x: (B, S, D) float; mask: (B, S) bool, True = padding. Returns (B, NUM_OUT)."""
        h = self.encoder(x, src_key_padding_mask=mask)
        # Padded positions are undefined (the fast path returns 0 there, the slow path real numbers):
        # mean-pool over the real positions only, with where() so even a NaN there cannot leak.
        pad = mask.unsqueeze(-1)
        h = torch.where(pad, torch.zeros_like(h), h)
        keep = (~mask).to(h.dtype).sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.head(h.sum(dim=1) / keep)


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = Encoder()
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    x0 = torch.randn(BATCH, SEQ, D_MODEL, generator=g)
    x1 = torch.randn(BATCH, SEQ, D_MODEL, generator=g)
    no_pad = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    padded = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    padded[1, SEQ - PAD:] = True
    return [
        Example((x0, no_pad), "batch of 2, no padding"),
        Example((x1, padded), "batch of 2, sequence 1 padded at its last %d positions" % PAD),
    ]


MODELS = {
    "transformer": ModelSpec(
        name="transformer",
        family="transformer",
        note="TransformerEncoder with src_key_padding_mask in eval mode: the fused fast path / nested tensors exporters choke on",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 softmax/LayerNorm/matmul reassociation (fused attention vs. decomposed ops), ~1e-6 typical",
        build=build,
        examples=examples,
    ),
}
