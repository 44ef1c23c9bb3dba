"""merge(), unmerge(), merge_and_unload()."""

import copy

import pytest

import graphpeft
from graphpeft.rewrite.claims import adapter_nodes
from models import BUILDERS, batch, tiny_llama


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_merged_output_equals_unmerged_and_unmerge_restores_base(kind, dora):
    base = BUILDERS[kind]()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = graphpeft.apply(base, "lora", r=4, init="random", dora=dora).eval()
    inputs = batch(kind)
    unmerged = model(**inputs).logits
    model.merge()
    assert model.merged
    assert (model(**inputs).logits - unmerged).abs().max() <= 1e-5
    model.unmerge()
    for key, value in base.state_dict().items():
        assert (value - before[key]).abs().max() <= 1e-6, key
    assert (model(**inputs).logits - unmerged).abs().max() <= 1e-6


def test_merged_graph_contains_no_adapter_nodes():
    model = graphpeft.apply(tiny_llama(), "lora", r=4, init="random").eval()
    inputs = batch("llama")
    assert adapter_nodes(model.graph(**inputs))
    model.merge()
    assert adapter_nodes(model.graph(**inputs)) == []


def test_merge_and_unload_returns_the_base_model_with_merged_weights():
    base = tiny_llama()
    model = graphpeft.apply(base, "lora", r=4, init="random").eval()
    inputs = batch("llama")
    adapted = model(**inputs).logits
    unloaded = model.merge_and_unload()
    assert unloaded is base
    assert (base(**inputs).logits - adapted).abs().max() <= 1e-5
    generated = base.generate(inputs["input_ids"][1:], max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_disable_adapter_runs_the_base_model_even_when_merged():
    base = tiny_llama()
    reference = copy.deepcopy(base)
    model = graphpeft.apply(base, "lora", r=4, init="random").eval()
    inputs = batch("llama")
    expected = reference(**inputs).logits
    with model.disable_adapter():
        assert (model(**inputs).logits - expected).abs().max() <= 1e-6
    model.merge()
    with model.disable_adapter():
        assert (model(**inputs).logits - expected).abs().max() <= 1e-5
    assert model.merged


def test_merge_twice_is_an_error():
    model = graphpeft.apply(tiny_llama(), "lora", r=4)
    model.merge()
    with pytest.raises(graphpeft.errors.AdapterError, match="already merged"):
        model.merge()
