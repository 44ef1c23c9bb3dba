"""Mixed-adapter batches: each row runs with its own adapter, in one batched graph."""

from __future__ import annotations

import pytest
import torch

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError, CallError
from graphpeft.rewrite.mixed import ROWS
from models import batch, tiny_gpt2, tiny_llama

NAMES = ["a", "__base__", "b", "c", "a"]
INPUTS = batch("llama", batch_size=len(NAMES))


@pytest.fixture(scope="module")
def model():
    """LoRA r=8 on q/v, LoRA r=4 on q/k/v/o (ranks differ), IA3 with random vectors, plus the base."""
    model = graphpeft.apply(tiny_llama(), "lora", adapter_name="a", init="random")
    model.add_adapter(
        "b", Rule("qkvo", "lora", [Pattern(module="*.self_attn.[qkvo]_proj")], {"r": 4, "alpha": 16, "init": "random"})
    )
    model.add_adapter("c", "ia3", init="random")
    return model


def _row_alone(model, index: int, name: str) -> torch.Tensor:
    row = {k: v[index : index + 1] for k, v in INPUTS.items()}
    if name == "__base__":
        with model.disable_adapter():
            return model(**row).logits
    model.set_adapter(name)
    return model(**row).logits


def test_each_row_of_a_mixed_batch_equals_that_row_run_alone_with_its_adapter(model):
    model.eval()
    with torch.no_grad():
        mixed = model(**INPUTS, adapter_names=NAMES).logits
        for i, name in enumerate(NAMES):
            torch.testing.assert_close(mixed[i : i + 1], _row_alone(model, i, name), atol=1e-5, rtol=0)


def test_the_mixed_graph_takes_the_row_index_as_an_input_and_gathers_once_per_site_and_method(model):
    model.eval()
    model(**INPUTS, adapter_names=NAMES)
    gm = next(g for key, g in model._graphs.items() if key[1][:1] == ("mixed",))
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    gathers = [n for n in gm.graph.nodes if n.target is torch.ops.aten.index_select.default]

    assert ROWS in placeholders
    assert len(gathers) == 8 + 6  # one row mask per LoRA site (q/k/v/o x 2 layers), one IA3 vector per IA3 site


def test_mixed_batches_train_each_adapter_only_from_its_own_rows(model):
    model.train()
    for param in model.adapter_parameters().values():
        param.requires_grad_(True)
        param.grad = None
    mixed = model(**INPUTS, adapter_names=NAMES).logits
    mixed[1].sum().backward()  # the __base__ row: no adapter may receive a gradient
    base_row_grads = [p.grad.clone() for p in model.adapter_parameters().values() if p.grad is not None]
    for param in model.adapter_parameters().values():
        param.grad = None
    mixed = model(**INPUTS, adapter_names=NAMES).logits
    mixed[2].sum().backward()  # adapter b's row
    grads = {n: p.grad for n, p in model.adapter_parameters().items()}
    model.eval()

    assert all(torch.count_nonzero(g) == 0 for g in base_row_grads)
    assert all(g is not None and torch.count_nonzero(g) > 0 for n, g in grads.items() if n.endswith(".b"))
    assert all(g is None or torch.count_nonzero(g) == 0 for n, g in grads.items() if not n.endswith(".b"))


def test_adapter_names_must_name_adapters_and_match_the_batch(model):
    with pytest.raises(AdapterError, match="'z'"):
        model(**INPUTS, adapter_names=["a", "b", "c", "a", "z"])
    with pytest.raises(CallError, match="5 rows"):
        model(**INPUTS, adapter_names=["a", "b"])


def test_gpt2_conv1d_sites_refuse_mixed_batches_with_a_clear_error():
    model = graphpeft.apply(tiny_gpt2(), "lora")

    with pytest.raises(AdapterError, match="Conv1D"):
        model(**batch("gpt2"), adapter_names=["default", "__base__", "default"])


def test_bottleneck_adapters_refuse_mixed_batches_with_a_clear_error(model):
    model.add_adapter("bn", "pfeiffer")
    try:
        with pytest.raises(AdapterError, match="bottleneck adapters cannot serve mixed-adapter batches"):
            model(**INPUTS, adapter_names=["bn", "a", "b", "c", "__base__"])
    finally:
        model.delete_adapter("bn")
