"""A two-layer MLP adapted with LoRA: the cheapest GraphPeftModel (no transformers import, export
in a fraction of a second), for tests whose subject is not the model (saving, loading)."""

from __future__ import annotations

import torch
from torch import nn

import graphpeft
from graphpeft import Pattern, Rule

LORA = Rule("lora", "lora", Pattern(op="linear", module="fc*"), {"r": 4, "init": "random"})


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 16) -> (batch, 4)."""
        return self.fc2(torch.relu(self.fc1(x)))


def example() -> torch.Tensor:
    return torch.randn(3, 16, generator=torch.Generator().manual_seed(0))


def base(seed: int = 0) -> TwoLayer:
    torch.manual_seed(seed)
    return TwoLayer()


def adapted(seed: int = 0) -> graphpeft.GraphPeftModel:
    """The MLP with LoRA on fc1 and fc2; ``seed`` picks the (random) adapter weights."""
    model = base()
    torch.manual_seed(seed)
    return graphpeft.apply(model, LORA, example_inputs=(example(),))


def load(folder: str) -> graphpeft.GraphPeftModel:
    return graphpeft.load(base(), folder, example_inputs=(example(),))
