"""The call side of mixed-adapter batches: ``model(..., adapter_names=[...])`` runs the graph rewritten for the
batch's adapters (:mod:`graphpeft.rewrite.mixed`), built once per signature and adapter order, with the rows input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..rewrite.mixed import ROWS, mixed_rows
from ..rewrite.pipeline import GraphSettings, adapt_graph
from ..tracing.graph_utils import clone_graph

if TYPE_CHECKING:
    from .model import GraphPeftModel


def mixed_call(model: GraphPeftModel, kwargs: dict[str, Any], adapter_names: Sequence[str]) -> Any:
    """Run ``model`` on ``kwargs`` with row i adapted by ``adapter_names[i]``."""
    order, rows = mixed_rows(model, adapter_names, _batch_size(kwargs))
    model._drop_graphs_of_replaced_tensors()
    signature = model._signature(kwargs)
    key = (signature, ("mixed", *order))
    graph = model._graphs.get(key)
    if graph is None:
        settings = GraphSettings(signature.training, mixed=True)
        graph = adapt_graph(
            clone_graph(model._traced(signature, kwargs)),
            model.adapter_claims(order),
            model.base_model,
            model.adapters,
            settings,
        )
        model._graphs[key] = graph
    return graph(**kwargs, **{ROWS: rows})


def _batch_size(kwargs: dict[str, Any]) -> int | None:
    for value in kwargs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None
