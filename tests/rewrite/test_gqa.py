"""Grouped-query attention runs on the key/value heads themselves (graphpeft.rewrite.graph_passes.gqa)."""

from __future__ import annotations

import torch

import graphpeft
from graphpeft.rewrite.graph_passes.gqa import use_native_gqa
from graphpeft.tracing.graph_utils import clone_graph
from models import batch, tiny_llama, tiny_opt

SDPA = torch.ops.aten.scaled_dot_product_attention.default


def attention_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for node in gm.graph.nodes if node.target is SDPA]


def test_llama_graphs_attend_with_enable_gqa_and_no_repeated_keys():
    model = graphpeft.apply(tiny_llama(), "lora", r=4).train()  # 4 query heads, 2 key/value heads
    inputs = batch("llama")
    model(**inputs, labels=inputs["input_ids"])
    for graph in model._graphs.values():
        nodes = attention_nodes(graph)
        assert len(nodes) == 2
        assert all(node.kwargs.get("enable_gqa") for node in nodes)
        assert all(node.args[1].meta["val"].shape[1] == 2 for node in nodes)  # keys keep 2 heads


def test_rewrite_keeps_the_loss_and_adapter_gradients(monkeypatch):
    torch.manual_seed(0)
    inputs = batch("llama")

    def loss_and_grads(native: bool):
        if not native:
            monkeypatch.setattr("graphpeft.rewrite.pipeline.use_native_gqa", lambda gm: 0)
        model = graphpeft.apply(tiny_llama(), "lora", r=4, init="random").train()
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        return loss, [p.grad for p in model.adapter_parameters().values()]

    loss, grads = loss_and_grads(True)
    plain_loss, plain_grads = loss_and_grads(False)
    assert torch.allclose(loss, plain_loss, atol=1e-6)
    for grad, plain in zip(grads, plain_grads, strict=True):
        assert torch.allclose(grad, plain, atol=1e-6)


def test_multi_head_attention_without_repeats_is_left_alone():
    model = graphpeft.apply(tiny_opt(), "lora", r=4)
    model(**batch("opt"))
    graph = clone_graph(next(iter(model._graphs.values())))
    assert len(attention_nodes(graph)) == 2
    assert use_native_gqa(graph) == 0
