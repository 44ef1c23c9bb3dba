"""Adapter state that must stay right (issue #15): names, activation, ownership of the base, tied weights,
finished wrappers and replaced base parameters. The errors themselves are in ``test_hostile_runtime.py``."""

from __future__ import annotations

import pytest
import torch
from models import tiny_llama

import graphpeft


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved LoRA adapter for the one-layer tiny llama."""
    folder = tmp_path_factory.mktemp("saved") / "adapter"
    graphpeft.apply(tiny_llama(layers=1), "lora", r=4, init="random").save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("name", ["layers", "model", "0", "q_proj", "lora_A"])
def test_frozen_adapter_named_like_a_path_part_leaves_the_other_adapter_trainable(saved, name):
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4)
    model.load_adapter(str(saved), name, is_trainable=False)
    assert all(p.requires_grad for p in model.adapter_parameters("default").values())
    assert not any(p.requires_grad for p in model.adapter_parameters(name).values())


@pytest.mark.parametrize("name", ["layers", "q_proj", "lora_A"])
def test_adapter_parameters_of_a_path_part_name_are_that_adapters_own(saved, name):
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4)
    model.load_adapter(str(saved), name)
    own = model.adapter_parameters(name)
    assert len(own) == len(model.adapter_parameters("default"))
    assert all(key.endswith(f".{name}") for key in own)
