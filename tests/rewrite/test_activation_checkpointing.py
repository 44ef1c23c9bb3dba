"""Activation checkpointing as a graph pass: same gradients, one recomputed region per block.

The memory it saves is a measurement, not a test: ``python -m benchmarks.checkpoint_memory``."""

import copy

import pytest
import torch

import graphpeft
from graphpeft.errors import CallError
from graphpeft.rewrite.graph_passes.activation_checkpointing import CheckpointedRegion
from models import batch, tiny_llama


def lora_gradients(base, checkpointing):
    torch.manual_seed(5)
    model = graphpeft.apply(copy.deepcopy(base), "lora", init="random", checkpointing=checkpointing).train()
    inputs = batch("llama")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    regions = [
        name
        for name, m in model.graph(**inputs, labels=inputs["input_ids"]).named_modules()
        if isinstance(m, CheckpointedRegion)
    ]
    return {name: p.grad for name, p in model.adapter_parameters().items()}, regions


def test_checkpointed_training_gives_the_gradients_of_plain_training_with_one_region_per_block():
    base = tiny_llama()
    plain, no_regions = lora_gradients(base, False)
    checkpointed, regions = lora_gradients(base, True)
    assert no_regions == []
    assert [r.split("_", 3)[-1] for r in regions] == ["model_layers_0", "model_layers_1"]
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert plain[name].abs().max() > 0
        assert (plain[name] - checkpointed[name]).abs().max() <= 1e-5


def test_checkpointing_must_be_a_bool():
    with pytest.raises(CallError, match="checkpointing must be True or False"):
        graphpeft.apply(tiny_llama(layers=1), "lora", checkpointing="yes")
