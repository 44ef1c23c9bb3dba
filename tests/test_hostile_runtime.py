"""Runtime misuse in the error catalogue (issue #15): adapter state calls with bad names or in the wrong
state, calls with bad inputs, and wrappers used after they handed their base model back. Each case raises a
graphpeft error naming the cause and leaves every model exactly as it was (see ``tests/catalogue.py``)."""

from __future__ import annotations

import pytest
import torch
from catalogue import Case, check_case, make_world
from models import tiny_gpt2, tiny_llama

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError

IDS = torch.tensor([[5, 6, 7, 8]])


def unloaded() -> graphpeft.GraphPeftModel:
    """A wrapper that handed its base back with unload()."""
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4, init="random")
    model.unload()
    return model


def merged_and_unloaded() -> graphpeft.GraphPeftModel:
    """A wrapper that merged its adapter into the base and handed it back."""
    model = graphpeft.apply(tiny_llama(layers=1), "lora", r=4, init="random")
    model.merge_and_unload()
    return model


def lora_on_tied_embedding() -> graphpeft.GraphPeftModel:
    """GPT-2 with LoRA on ``wte``, whose weight is also ``lm_head``'s (tied)."""
    with pytest.warns(UserWarning, match="tied"):
        return graphpeft.apply(tiny_gpt2(), Rule("wte", "lora", [Pattern(op="embedding", module="transformer.wte")], {"init": "random"}))


def after_unload(action, make=unloaded) -> dict:
    """Case fields for ``action(wrapper)`` on a wrapper that was unloaded."""
    return dict(act=lambda w: action(w.custom), error=AdapterError, fragment="GraphPeftModel that was unloaded", make=make)

CASES = [
    # ---------------------------------------------------------------- adapter names and activation
    Case("set_adapter_twice_the_same_name", lambda w: w.wrapped.set_adapter(["default", "default"]), AdapterError, "names 'default' twice"),
    Case("set_adapter_empty_list", lambda w: w.wrapped.set_adapter([]), AdapterError, "disable_adapter()"),
    Case("set_adapter_with_an_int", lambda w: w.wrapped.set_adapter(3), AdapterError, "got 3"),
    Case("set_adapter_with_none", lambda w: w.wrapped.set_adapter(None), AdapterError, "got None"),
    Case("set_adapter_list_with_a_non_string", lambda w: w.wrapped.set_adapter(["default", 7]), AdapterError, "got 7"),
    Case("merge_unknown_adapter", lambda w: w.wrapped.merge(["nope"]), AdapterError, "no adapter named 'nope'"),
    Case("merge_the_same_adapter_twice", lambda w: w.wrapped.merge(["default", "default"]), AdapterError, "names 'default' twice"),
    Case("delete_adapter_with_an_int", lambda w: w.wrapped.delete_adapter(3), AdapterError, "got 3"),
    Case("delete_unknown_adapter", lambda w: w.wrapped.delete_adapter("defualt"), AdapterError, "did you mean 'default'"),
    Case("merge_into_a_tied_weight", lambda w: w.custom.merge(), AdapterError, "transformer.wte.weight is tied to lm_head.weight", make=lora_on_tied_embedding),
    Case("merge_and_unload_into_a_tied_weight", lambda w: w.custom.merge_and_unload(), AdapterError, "keep the adapter unmerged", make=lora_on_tied_embedding),
    # ---------------------------------------------------------------- one live wrapper per base
    Case("apply_to_a_graphpeft_model", lambda w: graphpeft.apply(w.wrapped, "lora"), AdapterError, "it is already adapted; add another adapter to it with model.add_adapter"),
    Case("load_onto_a_graphpeft_model", lambda w: graphpeft.load(w.wrapped, str(w.saved)), AdapterError, "model.load_adapter(...)"),
    Case("apply_to_a_base_a_live_wrapper_holds", lambda w: graphpeft.apply(w.wrapped.base_model, "lora"), AdapterError, "already wrapped by a live GraphPeftModel"),
    Case("load_onto_a_base_a_live_wrapper_holds", lambda w: graphpeft.load(w.wrapped.base_model, str(w.saved)), AdapterError, "use load_adapter() on that GraphPeftModel"),
    Case("second_wrapper_adds_an_adapter_to_a_held_base", lambda w: graphpeft.GraphPeftModel(w.wrapped.base_model).add_adapter("x", "lora"), AdapterError, "or call its unload() first"),
    # ---------------------------------------------------------------- a wrapper after unload() / merge_and_unload()
    Case("forward_after_unload", **after_unload(lambda m: m(input_ids=IDS))),
    Case("generate_after_unload", **after_unload(lambda m: m.generate(IDS, max_new_tokens=2))),
    Case("merge_after_unload", **after_unload(lambda m: m.merge())),
    Case("unmerge_after_merge_and_unload", **after_unload(lambda m: m.unmerge(), merged_and_unloaded)),
    Case("add_adapter_after_unload", **after_unload(lambda m: m.add_adapter("again", "lora"))),
    Case("load_adapter_after_unload", lambda w: w.custom.load_adapter(str(w.saved), "again"), AdapterError, "apply graphpeft again to the returned model", make=unloaded),
    Case("set_adapter_after_unload", **after_unload(lambda m: m.set_adapter("default"))),
    Case("delete_adapter_after_unload", **after_unload(lambda m: m.delete_adapter("default"))),
    Case("unload_twice", **after_unload(lambda m: m.unload())),
    Case("merge_and_unload_after_unload", **after_unload(lambda m: m.merge_and_unload())),
    Case("to_dtype_after_unload", **after_unload(lambda m: m.to(torch.float64))),
    Case("train_after_merge_and_unload", **after_unload(lambda m: m.train(), merged_and_unloaded)),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return make_world(tmp_path_factory)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_raises_named_error_and_leaves_model_unchanged(case, shared, tmp_path, capfd):
    check_case(case, shared, tmp_path, capfd)
