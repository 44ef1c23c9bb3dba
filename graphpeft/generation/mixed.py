"""Mixed-adapter generation: ``generate(..., adapter_names=["a", "b", "__base__", ...])``.

Each row generates with its own adapter in one batched computation. The prefill and the
decode graph are both rewritten with :func:`graphpeft.rewrite.mixed.rewrite_mixed`, so each takes the
extra input ``graphpeft_adapter_rows`` (batch,) int64; generate feeds it at prefill and at
every decode step. Rows keep their place for the whole loop (finished rows are padded, not
dropped), so one rows tensor serves every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..rewrite.mixed import ROWS, mixed_rows
from .graphs import GenerationGraphs, build_generation_graphs, cached_generation_graphs

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel


def mixed_generation(
    model: GraphPeftModel, adapter_names: Sequence[str], batch: int
) -> tuple[GenerationGraphs, dict[str, torch.Tensor]]:
    """(the graphs for the batch's adapters, the extra inputs every graph call takes: the rows)."""
    order, rows = mixed_rows(model, adapter_names, batch)
    return mixed_generation_graphs(model, order), {ROWS: rows}


def mixed_generation_graphs(model: GraphPeftModel, order: tuple[str, ...]) -> GenerationGraphs:
    """Prefill and decode graphs carrying the stacked adapters ``order`` (built once per order)."""
    return cached_generation_graphs(model, ("mixed", *order), lambda: build_generation_graphs(model, order, mixed=True))
