"""torch.compile of a GraphPeftModel: one graph, no breaks, the same outputs and gradients.

The AOTAutograd backend keeps the test fast; it runs dynamo's capture and the autograd split
that every backend (inductor included) consumes.
"""

from __future__ import annotations

import pytest
import torch

import graphpeft
from models import batch, tiny_llama


def adapted_model() -> graphpeft.GraphPeftModel:
    torch.manual_seed(0)
    return graphpeft.apply(tiny_llama(layers=1), "lora", r=4, init="random").train()


def loss_and_grads(
    model: torch.nn.Module, trained: graphpeft.GraphPeftModel
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    inputs = batch("llama", left_pad=False)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trained.adapter_parameters().items()}
    trained.zero_grad()
    return loss.detach(), grads


def test_compiled_model_gives_the_same_loss_and_adapter_gradients():
    model = adapted_model()
    eager_loss, eager_grads = loss_and_grads(model, model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled_loss, compiled_grads = loss_and_grads(compiled, model)
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-6)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-6), name


def test_compiling_before_any_eager_call_names_the_fix():
    model = adapted_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    inputs = batch("llama", left_pad=False)
    with pytest.raises(Exception, match="Call the model once eagerly"):
        compiled(**inputs, labels=inputs["input_ids"])
