"""nn.TransformerEncoder (2 layers, d_model 32, 4 heads, batch_first) in eval mode: plain, and with a padding mask.

`transformer` is the encoder as most users write it (no mask). `transformer_padding_mask` passes a
key-padding mask: eval mode under no_grad is where torch takes the fused "fast path"
(aten::_transformer_encoder_layer_fwd, nested tensors for padded batches), which exporters have
repeatedly failed to handle. Before issue 10 the masked model was called `transformer`; rows measured
under that name are relabelled (store/relabel.py), so a failure of masked attention no longer reads as
"transformers don't convert".
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


class PlainEncoder(Encoder):
    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        """x: (B, S, D) float. Returns (B, NUM_OUT): mean-pooled encoder output through a linear head."""
        return self.head(self.encoder(x).mean(dim=1))


class MaskedEncoder(Encoder):
    def forward(self, x, mask):  # type: (torch.Tensor, torch.Tensor) -> torch.Tensor
        """x: (B, S, D) float; mask: (B, S) bool, True = padding. Returns (B, NUM_OUT)."""
        h = self.encoder(x, src_key_padding_mask=mask)
        # Padded positions are undefined (the fast path returns 0 there, the slow path real numbers):
        # mean-pool over the real positions only, with where() so even a NaN there cannot leak.
        pad = mask.unsqueeze(-1)
        h = torch.where(pad, torch.zeros_like(h), h)
        keep = (~mask).to(h.dtype).sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.head(h.sum(dim=1) / keep)


def build_masked():  # type: () -> nn.Module
    with seeded(SEED):
        model = MaskedEncoder()
    return model.eval()


def build_plain():  # type: () -> nn.Module
    # The same seed as the masked model: the two share weights, so they differ only in the mask.
    with seeded(SEED):
        model = PlainEncoder()
    return model.eval()


def examples_masked():  # type: () -> List[Example]
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


def examples_plain():  # type: () -> List[Example]
    g = generator(SEED + 2)
    return [
        Example((torch.randn(BATCH, SEQ, D_MODEL, generator=g),), "batch of 2, 8 tokens, N(0,1)"),
        Example((torch.rand(BATCH, SEQ, D_MODEL, generator=g) * 4.0 - 2.0,), "batch of 2, 8 tokens, U(-2,2)"),
    ]


_TOL = dict(
    atol=1e-4,
    rtol=1e-3,
    tolerance_reason="float32 softmax/LayerNorm/matmul reassociation (fused attention vs. decomposed ops), ~1e-6 typical",
)

MODELS = {
    "transformer": ModelSpec(
        name="transformer",
        family="transformer",
        note="plain TransformerEncoder (batch_first, eval, no mask): the encoder as most users write it",
        build=build_plain,
        examples=examples_plain,
        **_TOL
    ),
    "transformer_padding_mask": ModelSpec(
        name="transformer_padding_mask",
        family="transformer",
        note="TransformerEncoder with src_key_padding_mask in eval mode: the fused fast path / nested tensors exporters choke on",
        build=build_masked,
        examples=examples_masked,
        **_TOL
    ),
}
