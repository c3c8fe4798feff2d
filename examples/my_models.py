"""An example user corpus: run your own models through a knowngood matrix.

    uv run knowngood run matrix/specs/smoke.toml --corpus examples/my_models.py   # models named in the spec
    # or in a spec: corpus = "../../examples/my_models.py" and models = ["tiny_mlp", "gelu_head"]

The file runs inside each case environment (Python 3.8+, that environment's torch and numpy): import only
the standard library, torch, numpy and `knowngood_corpus` (the helpers below). It needs one thing, MODELS:
a dict of name -> ModelSpec with build() (a torch.nn.Module ready to export), examples() (inputs that all
share shapes; each Example's args are passed as model(*args)), and a tolerance (atol, rtol).
"""

import torch
from knowngood_corpus import Example, ModelSpec, generator, seeded


def build_mlp():
    with seeded(7):  # seeded weights: two builds give identical outputs
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model.eval()


def mlp_examples():
    g = generator(8)
    return [Example((torch.randn(2, 16, generator=g),), "batch of 2"),
            Example((torch.randn(2, 16, generator=g) * 10,), "large inputs")]


def build_gelu():
    with seeded(9):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(approximate="tanh"))
    return model.eval()


def gelu_examples():
    g = generator(10)
    return [Example((torch.randn(4, 8, generator=g),), "batch of 4")]


MODELS = {
    "tiny_mlp": ModelSpec(
        name="tiny_mlp", family="user", note="a small MLP", atol=1e-5, rtol=1e-4,
        tolerance_reason="two float32 matmuls", build=build_mlp, examples=mlp_examples,
    ),
    "gelu_head": ModelSpec(
        name="gelu_head", family="user", note="tanh-approximated GELU (an op some converters lack)",
        atol=1e-5, rtol=1e-4, tolerance_reason="one matmul and a tanh", build=build_gelu, examples=gelu_examples,
    ),
}
