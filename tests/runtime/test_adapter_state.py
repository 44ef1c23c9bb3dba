"""Adapter state that must stay right (issue #15): names, activation, ownership of the base, tied weights,
finished wrappers and replaced base parameters. The errors themselves are in ``test_hostile_runtime.py``."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch

import graphpeft
from graphpeft import Pattern, Rule
from models import VOCAB, batch, tiny_gpt2, tiny_llama

INPUTS = batch("llama")


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


def two_adapters() -> graphpeft.GraphPeftModel:
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4, adapter_name="first")
    model.add_adapter("second", "lora", r=4)
    return model


def test_deleting_the_active_adapter_warns_naming_the_new_active_one():
    model = two_adapters()
    with pytest.warns(UserWarning, match="'first' was the active adapter; the active adapter is now 'second'"):
        model.delete_adapter("first")
    assert model.active_adapters == ["second"]


def test_deleting_the_last_adapter_warns_that_none_is_active():
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4)
    with pytest.warns(UserWarning, match="no adapter is active now"):
        model.delete_adapter("default")
    assert model.active_adapters == []


def test_deleting_an_inactive_adapter_does_not_warn():
    model = two_adapters()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.delete_adapter("second")
    assert model.active_adapters == ["first"]


def test_merge_takes_one_adapter_name_as_a_string():
    model = two_adapters()
    model.merge("second")
    assert model._merged == ["second"]


def test_a_base_can_be_wrapped_again_after_unload():
    base = tiny_llama(layers=1)
    first = graphpeft.apply(base, "lora", r=4)
    assert first.unload() is base
    second = graphpeft.apply(base, "lora", r=4)
    assert second.base_model is base


def test_a_base_can_be_wrapped_again_once_its_wrapper_is_dropped():
    base = tiny_llama(layers=1)
    graphpeft.apply(base, "lora", r=4)  # dropped at once; it may linger in a reference cycle
    assert graphpeft.apply(base, "lora", r=4).base_model is base


def test_holding_a_base_writes_nothing_onto_it_and_keeps_neither_alive():
    base = tiny_llama(layers=1)
    attributes = set(vars(base))
    wrapper = graphpeft.apply(base, "lora", r=4)
    assert set(vars(base)) == attributes
    refs = weakref.ref(base), weakref.ref(wrapper)
    del base, wrapper
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_adapters_of_an_unloaded_wrapper_can_still_be_saved(tmp_path):
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4)
    model.unload()
    model.save_pretrained(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


WTE = Rule("wte", "lora", [Pattern(op="embedding", module="transformer.wte")], {"r": 4, "init": "random"})


def test_lora_on_a_tied_embedding_warns_naming_both_parameters():
    with pytest.warns(UserWarning, match="transformer.wte.weight is tied to lm_head.weight"):
        graphpeft.apply(tiny_gpt2(), WTE)


def test_lora_on_an_untied_weight_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphpeft.apply(tiny_llama(layers=1), "lora", r=4)


@pytest.fixture
def cached():
    """A tiny llama wrapped with a fresh LoRA (B = 0, so it computes the base's function), its graphs traced."""
    base = tiny_llama(layers=1)
    model = graphpeft.apply(base, "lora", r=4)
    with torch.no_grad():
        model(**INPUTS)
    return base, model


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUTS).logits


def test_forward_reads_base_parameters_replaced_by_an_assign_load(cached):
    base, model = cached
    before = logits_of(model)
    base.load_state_dict(tiny_llama(layers=1, seed=3).state_dict(), assign=True)
    assert (logits_of(model) - logits_of(base)).abs().max() <= 1e-5
    assert (logits_of(model) - before).abs().max() > 1e-2


def test_forward_reads_base_parameters_replaced_through_the_wrappers_assign_load(cached):
    base, model = cached
    replacement = {f"base_model.{k}": v for k, v in tiny_llama(layers=1, seed=3).state_dict().items()}
    model.load_state_dict(replacement, strict=False, assign=True)
    assert (logits_of(model) - logits_of(base)).abs().max() <= 1e-5


def test_forward_reads_a_replaced_submodule(cached):
    base, model = cached
    base.lm_head = torch.nn.Linear(32, VOCAB, bias=False)
    assert (logits_of(model) - logits_of(base)).abs().max() <= 1e-5


def test_forward_reads_base_weights_changed_in_place(cached):
    base, model = cached
    with torch.no_grad():
        base.model.layers[0].mlp.down_proj.weight.mul_(3)
    assert (logits_of(model) - logits_of(base)).abs().max() <= 1e-5


def test_generate_reads_base_parameters_replaced_by_an_assign_load(cached):
    base, model = cached
    prompt = INPUTS["input_ids"][1:]
    model.generate(prompt, max_new_tokens=4)  # generation graphs traced
    base.load_state_dict(tiny_llama(layers=1, seed=3).state_dict(), assign=True)
    expected = base.generate(prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=4), expected)
