"""generate(adapter_names=[...]): each row generates with its own adapter, in one batched computation."""

from __future__ import annotations

import pytest
import torch

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError, CallError
from graphpeft.rewrite.mixed import ROWS
from models import batch, tiny_llama

NAMES = ["a", "__base__", "b", "c", "a"]
NEW_TOKENS = 8


def lora(name: str, modules: str, r: int) -> Rule:
    return Rule(name, "lora", [Pattern(module=modules)], {"r": r, "alpha": 2 * r, "init": "random"})


@pytest.fixture(scope="module")
def model():
    """Three random LoRA adapters with different ranks on different sites, plus the base model."""
    torch.manual_seed(0)
    model = graphpeft.apply(tiny_llama(), lora("qv", "*.self_attn.[qv]_proj", 8), adapter_name="a")
    model.add_adapter("b", lora("ko", "*.self_attn.[ko]_proj", 4))
    model.add_adapter("c", lora("mlp", "*.mlp.*_proj", 2))
    return model


@pytest.fixture(scope="module")
def prompt():
    """Five rows, the first left-padded by two tokens."""
    return batch("llama", batch_size=len(NAMES))


def generate_alone(model, prompt, index: int, name: str) -> torch.Tensor:
    row = {k: v[index : index + 1] for k, v in prompt.items()}
    if name == "__base__":
        with model.disable_adapter():
            return model.generate(**row, max_new_tokens=NEW_TOKENS, eos_token_id=[])
    model.set_adapter(name)
    return model.generate(**row, max_new_tokens=NEW_TOKENS, eos_token_id=[])


def test_each_row_of_a_mixed_batch_generates_what_it_generates_alone_with_its_adapter(model, prompt):
    mixed = model.generate(**prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[], adapter_names=NAMES)
    alone = [generate_alone(model, prompt, i, name) for i, name in enumerate(NAMES)]

    with model.disable_adapter():
        base = model.generate(**prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])

    for i, name in enumerate(NAMES):
        assert torch.equal(mixed[i : i + 1], alone[i]), f"row {i} ({name})"
        assert torch.equal(mixed[i], base[i]) == (name == "__base__"), f"adapter {name} must change row {i}'s ids"


def test_both_generation_graphs_take_the_adapter_rows_as_an_input(model, prompt):
    model.generate(**prompt, max_new_tokens=2, adapter_names=NAMES)
    graphs = [g for key, g in model._graphs.items() if key[1] == ("mixed", "a", "b", "c")]
    phases = [dict(key[0].inputs)["graphpeft.generate"] for key, g in model._graphs.items() if g in graphs]

    assert sorted(phases) == ["decode", "prefill"]
    assert all(ROWS in [n.name for n in g.graph.nodes if n.op == "placeholder"] for g in graphs)


def test_adapter_names_must_name_adapters_and_match_the_batch(model, prompt):
    with pytest.raises(AdapterError, match="'z'"):
        model.generate(**prompt, max_new_tokens=2, adapter_names=["a", "b", "c", "a", "z"])
    with pytest.raises(CallError, match="5 rows"):
        model.generate(**prompt, max_new_tokens=2, adapter_names=["a", "b"])


def test_merged_adapters_refuse_mixed_generation_until_unmerged(model, prompt):
    model.merge(["a"])
    try:
        with pytest.raises(AdapterError, match="unmerge"):
            model.generate(**prompt, max_new_tokens=2, adapter_names=NAMES)
    finally:
        model.unmerge()


def test_bottleneck_adapters_refuse_mixed_generation_with_a_clear_error(model, prompt):
    model.add_adapter("bn", "pfeiffer")
    try:
        with pytest.raises(AdapterError, match="bottleneck adapters cannot serve mixed-adapter batches"):
            model.generate(**prompt, max_new_tokens=2, adapter_names=["bn", "a", "b", "c", "__base__"])
    finally:
        model.delete_adapter("bn")
