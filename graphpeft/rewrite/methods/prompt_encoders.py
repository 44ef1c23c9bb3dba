"""The modules that produce virtual tokens: each maps nothing to a table of shape (rows, width).

- :class:`PromptTable`: trainable rows used as they are (prompt tuning; prefix tuning without projection).
- :class:`PromptEncoder`: trainable rows fed through an MLP or a bidirectional LSTM + MLP (P-tuning).
- :class:`PrefixProjection`: trainable rows fed through Linear-Tanh-Linear (prefix tuning's projection).

Every module keeps PEFT's submodule names (``embedding``, ``mlp_head``, ``lstm_head``, ``transform``),
so parameter counts and shapes are PEFT's. ``output()`` is the table the model sees; PEFT saves exactly that.
"""

from __future__ import annotations

import torch
from torch import nn


class VirtualTokenModule(nn.Module):
    """Base: ``output()`` returns the virtual-token table (rows, width)."""

    embedding: nn.Embedding  # the trainable rows, PEFT's name

    def output(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def reparameterized(self) -> bool:
        """Whether ``output()`` differs from the raw ``embedding`` rows (then a saved table cannot be loaded back)."""
        return False


class PromptTable(VirtualTokenModule):
    """``rows`` trainable vectors of size ``width`` (``embedding.weight``, PEFT's name)."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(rows, width)

    def output(self) -> torch.Tensor:
        return self.embedding.weight


class PromptEncoder(VirtualTokenModule):
    """P-tuning: ``mlp_head(embedding)`` or ``mlp_head(lstm_head(embedding))``, output (rows, width).

    ``kind="mlp"``: Linear(width, hidden)-ReLU-Linear(hidden, hidden)-ReLU-Linear(hidden, width).
    ``kind="lstm"``: a bidirectional LSTM (``layers`` layers, ``dropout`` between them) over the rows,
    then Linear(2·hidden, 2·hidden)-ReLU-Linear(2·hidden, width).
    """

    def __init__(self, rows: int, width: int, hidden: int, kind: str, layers: int, dropout: float):
        super().__init__()
        self.kind = kind
        self.embedding = nn.Embedding(rows, width)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(
                width, hidden, num_layers=layers, dropout=dropout, bidirectional=True, batch_first=True
            )
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width))
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width)
            )

    def output(self) -> torch.Tensor:
        rows = self.embedding.weight.unsqueeze(0)
        if self.kind == "lstm":
            rows = self.lstm_head(rows)[0]
        return self.mlp_head(rows)[0]

    @property
    def reparameterized(self) -> bool:
        return True


class PrefixProjection(VirtualTokenModule):
    """Prefix tuning with ``prefix_projection``: Linear(width, hidden)-Tanh-Linear(hidden, out) over the rows."""

    def __init__(self, rows: int, width: int, hidden: int, out: int):
        super().__init__()
        self.embedding = nn.Embedding(rows, width)
        self.transform = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, out))

    def output(self) -> torch.Tensor:
        return self.transform(self.embedding.weight)

    @property
    def reparameterized(self) -> bool:
        return True
