"""Runtime misuse in the error catalogue (issue #15): adapter state calls with bad names or in the wrong
state, calls with bad inputs, and wrappers used after they handed their base model back. Each case raises a
graphpeft error naming the cause and leaves every model exactly as it was (see ``tests/catalogue.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphpeft
from catalogue import Case, case_test
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError, CallError
from models import tiny_bert, tiny_gpt2, tiny_llama

IDS = torch.tensor([[5, 6, 7, 8]])
MASK = torch.ones_like(IDS)


def call(**inputs):
    return lambda w: w.wrapped(**inputs)


def gpt2() -> graphpeft.GraphPeftModel:
    """GPT-2 (learned positions: 128 of them) with LoRA."""
    return graphpeft.apply(tiny_gpt2(), "lora", r=4)


def bert() -> graphpeft.GraphPeftModel:
    """BERT sequence classification (3 classes) with LoRA."""
    return graphpeft.apply(tiny_bert(), "lora", r=4)


def generate(*args, **kwargs):
    return lambda w: w.wrapped.generate(*args, **kwargs)


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
        return graphpeft.apply(
            tiny_gpt2(), Rule("wte", "lora", [Pattern(op="embedding", module="transformer.wte")], {"init": "random"})
        )


def after_unload(action, make=unloaded) -> dict:
    """Case fields for ``action(wrapper)`` on a wrapper that was unloaded."""
    return dict(
        act=lambda w: action(w.custom), error=AdapterError, fragment="GraphPeftModel that was unloaded", make=make
    )


# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
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
    # ---------------------------------------------------------------- call inputs
    Case("float_input_ids", call(input_ids=IDS.float()), CallError, "input_ids must hold integer token ids, got a torch.float32 tensor"),
    Case("bool_input_ids", call(input_ids=IDS.bool()), CallError, "must hold integer token ids"),
    Case("input_ids_as_a_list", call(input_ids=[[5, 6, 7]]), CallError, "input_ids must be a torch.Tensor"),
    Case("input_ids_without_batch_dim", call(input_ids=IDS[0]), CallError, "add the batch dimension"),
    Case("input_ids_and_inputs_embeds", call(input_ids=IDS, inputs_embeds=torch.randn(1, 4, 32)), CallError, "not both"),
    Case("inputs_embeds_of_another_width", call(inputs_embeds=torch.randn(1, 4, 16)), CallError, "the model's embedding width 32"),
    Case("inputs_embeds_of_integers", call(inputs_embeds=torch.ones(1, 4, 32, dtype=torch.long)), CallError, "inputs_embeds must be floating point"),
    Case("float_labels_for_a_language_model", call(input_ids=IDS, labels=IDS.float()), CallError, "labels of a language model are token ids"),
    Case("empty_batch", call(input_ids=IDS[:0]), CallError, "empty batch"),
    Case("empty_sequence", call(input_ids=IDS[:, :0]), CallError, "empty sequence"),
    Case("attention_mask_shorter_than_input_ids", call(input_ids=IDS, attention_mask=MASK[:, :3]), CallError, "input_ids.size()[1] == attention_mask.size()[1]"),
    Case("input_id_beyond_the_vocabulary", call(input_ids=IDS + 200), CallError, "input_ids holds id 205, outside the vocabulary 0..95"),
    Case("negative_input_id", call(input_ids=IDS - 9), CallError, "input_ids holds id -4"),
    Case("label_beyond_the_vocabulary", call(input_ids=IDS, labels=IDS + 200), CallError, "labels holds 205"),
    Case("label_beyond_the_classes", lambda w: w.custom(input_ids=IDS, labels=torch.tensor([5])), CallError, "labels holds 5, outside 0..2", make=bert),
    Case("sequence_longer_than_learned_positions", lambda w: w.custom(input_ids=torch.randint(3, 96, (1, 130))), CallError, "longer than the model's 128 positions", make=gpt2),
    Case("adapter_names_not_strings", call(input_ids=IDS, adapter_names=[1]), CallError, "adapter_names holds 1"),
    Case("adapter_names_as_a_string", call(input_ids=IDS, adapter_names="default"), CallError, "one adapter name per row"),
    Case("adapter_names_of_the_wrong_length", call(input_ids=IDS, adapter_names=["default", "default"]), CallError, "the batch has 1 rows"),
    Case("adapter_names_unknown", call(input_ids=IDS, adapter_names=["nope"]), AdapterError, "which is no adapter of this model"),
    # ---------------------------------------------------------------- generate
    Case("generate_float_prompt", generate(IDS.float()), CallError, "input_ids must be a 2-d integer tensor"),
    Case("generate_prompt_beyond_the_vocabulary", generate(IDS + 200, max_new_tokens=2), CallError, "input_ids holds id 205, outside the vocabulary"),
    Case("generate_zero_new_tokens", generate(IDS, max_new_tokens=0), CallError, "max_new_tokens must be an integer >= 1"),
    Case("generate_beam_search", generate(IDS, num_beams=4), CallError, "takes no option 'num_beams'"),
    Case("generate_sampling_at_zero_temperature", generate(IDS, do_sample=True, temperature=0.0), CallError, "temperature must be > 0"),
    Case("generate_past_the_positions", generate(IDS, max_new_tokens=200), CallError, "exceeds the model's 128 positions"),
    Case("generate_right_padded_prompt", generate(IDS, attention_mask=torch.tensor([[1, 1, 1, 0]])), CallError, "pad prompts on the left"),
    Case("generate_adapter_names_of_the_wrong_length", generate(IDS, max_new_tokens=2, adapter_names=["default", "default"]), CallError, "give one per row"),
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
# fmt: on


test_hostile_input_raises_named_error_and_leaves_model_unchanged = case_test(CASES)


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, ids):
        return self.proj(self.table(ids))


def test_an_index_error_of_a_plain_module_is_raised_as_it_is():
    model = graphpeft.apply(
        Lookup(), Rule("proj", "lora", [Pattern(module="proj")], {"r": 2}), example_inputs=(torch.tensor([[1, 2]]),)
    )
    with pytest.raises(IndexError):
        model(torch.tensor([[1, 12]]))
