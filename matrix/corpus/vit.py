"""A small Vision Transformer as timm writes it: patch embedding, class token, positional embedding,
pre-norm blocks with LayerNorm, exact (erf) GELU and scaled_dot_product_attention.

The transformer production vision models are: LayerNorm and exact GELU (ONNX Gelu only from opset 20,
before that an Erf decomposition; converters to TFLite have swapped in the tanh approximation), the class
token's expand + concat, and F.scaled_dot_product_attention (timm's fused path since torch 2.0).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn
import torch.nn.functional as F

from . import Example, ModelSpec, generator, seeded

SEED = 6311
IMAGE, PATCH = 32, 4
DIM, HEADS, DEPTH = 32, 4, 2
NUM_CLASSES = 10


class Attention(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.qkv = nn.Linear(DIM, DIM * 3)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=1e-6)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(DIM, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(DIM, DIM * 4), nn.GELU(), nn.Linear(DIM * 4, DIM))

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self):  # type: () -> None
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, kernel_size=PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (IMAGE // PATCH) ** 2 + 1, DIM) * 0.02)
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.head = nn.Linear(DIM, NUM_CLASSES)

    def forward(self, x):  # type: (torch.Tensor) -> torch.Tensor
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, DIM)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build():  # type: () -> nn.Module
    with seeded(SEED):
        model = ViT()
        with torch.no_grad():
            # Trained LayerNorms are not identity: give them seeded scales and shifts.
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(torch.rand(DIM) * 0.6 + 0.7)
                    m.bias.copy_(torch.randn(DIM) * 0.1)
    return model.eval()


def examples():  # type: () -> List[Example]
    g = generator(SEED + 1)
    return [
        Example((torch.randn(1, 3, IMAGE, IMAGE, generator=g),), "image 1x3x32x32, N(0,1)"),
        Example((torch.rand(1, 3, IMAGE, IMAGE, generator=g) * 4.0 - 2.0,), "image 1x3x32x32, U(-2,2)"),
    ]


MODELS = {
    "vit": ModelSpec(
        name="vit",
        family="vit",
        note="ViT: patch embedding, class token, positional embedding, LayerNorm, erf GELU, scaled_dot_product_attention",
        atol=1e-4,
        rtol=1e-3,
        tolerance_reason="float32 softmax/LayerNorm/matmul reassociation; erf GELU is exact in every runtime (~1e-6 typical)",
        build=build,
        examples=examples,
    ),
}
