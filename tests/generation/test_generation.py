"""GraphPeftModel.generate: prefill + decode graphs with a KV cache, against PEFT's generate as the oracle."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import graphpeft
from graphpeft.errors import CallError
from graphpeft.generation.generate import generation_graphs
from graphpeft.generation.sampling import GenerationSettings, warp
from graphpeft.rewrite.claims import adapter_nodes
from models import BUILDERS, batch, tiny_bert

TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "opt": ["q_proj", "v_proj"], "t5": ["q", "v"]}
_PAIRS: dict[str, tuple] = {}


def pair(kind: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, graphpeft.GraphPeftModel]:
    """(PEFT model, graphpeft model) with one LoRA adapter (B != 0) saved by PEFT and loaded by graphpeft."""
    if kind not in _PAIRS:
        base = BUILDERS[kind]()
        config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[kind], init_lora_weights=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(copy.deepcopy(base), config).eval()
        directory = tmp_path_factory.mktemp(f"lora_{kind}")
        peft_model.save_pretrained(directory)
        _PAIRS[kind] = (peft_model, graphpeft.load(base, directory))
    return _PAIRS[kind]


def prompt(kind: str) -> dict[str, torch.Tensor]:
    """Three rows; decoder-only rows are left-padded (row 0), the T5 encoder gets right padding."""
    inputs = batch(kind)
    if kind == "t5":
        inputs.pop("decoder_input_ids")
        inputs["attention_mask"][0, -2:] = 0
    return inputs


def peft_generate(peft_model: torch.nn.Module, inputs: dict[str, torch.Tensor], **options) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft_model.generate(**inputs, do_sample=False, **options)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "t5"])
def test_greedy_ids_equal_peft_generate_on_a_left_padded_batch(kind, tmp_path_factory):
    peft_model, model = pair(kind, tmp_path_factory)
    inputs = prompt(kind)
    ours = model.generate(**inputs, max_new_tokens=10)
    assert torch.equal(ours, peft_generate(peft_model, inputs, max_new_tokens=10))
    with peft_model.disable_adapter():
        assert not torch.equal(peft_generate(peft_model, inputs, max_new_tokens=10), ours), (
            "the adapter must change the ids"
        )


def test_a_single_one_token_prompt_equals_peft_generate(tmp_path_factory):
    peft_model, model = pair("llama", tmp_path_factory)
    inputs = {"input_ids": torch.tensor([[5]]), "attention_mask": torch.tensor([[1]])}
    assert torch.equal(model.generate(**inputs, max_new_tokens=6), peft_generate(peft_model, inputs, max_new_tokens=6))


def test_without_max_new_tokens_the_length_follows_transformers_defaults(tmp_path_factory):
    peft_model, model = pair("llama", tmp_path_factory)
    inputs = prompt("llama")
    assert torch.equal(model.generate(**inputs), peft_generate(peft_model, inputs))


def test_rows_that_reach_eos_are_filled_with_pad_as_transformers_does(tmp_path_factory):
    peft_model, model = pair("llama", tmp_path_factory)
    inputs = prompt("llama")
    free = model.generate(**inputs, max_new_tokens=8, eos_token_id=[])
    eos = int(free[1, inputs["input_ids"].shape[1] + 1])  # row 1 stops after its second new token
    ours = model.generate(**inputs, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(ours, peft_generate(peft_model, inputs, max_new_tokens=8, eos_token_id=eos, pad_token_id=0))
    assert (ours[1, inputs["input_ids"].shape[1] + 2 :] == 0).all()


def no_cache_greedy(
    model: graphpeft.GraphPeftModel, kind: str, inputs: dict[str, torch.Tensor], steps: int
) -> torch.Tensor:
    """Reference decoding: the whole sequence through the normal forward graph at every step."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if kind == "t5":
        decoder = torch.zeros(ids.shape[0], 1, dtype=torch.long)
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
            decoder = torch.cat([decoder, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return decoder
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_cached_decoding_equals_full_recompute_for_32_tokens(kind, tmp_path_factory):
    _, model = pair(kind, tmp_path_factory)
    inputs = prompt(kind)
    with torch.no_grad():
        expected = no_cache_greedy(model, kind, inputs, 32)
    assert torch.equal(model.generate(**inputs, max_new_tokens=32, eos_token_id=[]), expected)


def test_decode_graph_carries_the_same_adapter_without_the_encoder(tmp_path_factory):
    _, model = pair("t5", tmp_path_factory)
    model.generate(**prompt("t5"), max_new_tokens=2)
    graphs = generation_graphs(model)
    prefill_sites = {n.meta["graphpeft.adapter_node"]["site"] for n in adapter_nodes(graphs.prefill)}
    decode_sites = {n.meta["graphpeft.adapter_node"]["site"] for n in adapter_nodes(graphs.decode)}
    assert prefill_sites == set(model.adapter_specs["default"].claims)
    assert decode_sites == {s for s in prefill_sites if s.startswith("decoder.") and "EncDecAttention.v" not in s}


def test_an_encoder_decoder_mixed_adapter_batch_generates_each_rows_own_ids(tmp_path_factory):
    _, model = pair("t5", tmp_path_factory)
    inputs, names = prompt("t5"), ["__base__", "default", "__base__"]
    mixed = model.generate(**inputs, max_new_tokens=6, eos_token_id=[], adapter_names=names)
    adapted = model.generate(**inputs, max_new_tokens=6, eos_token_id=[])
    with model.disable_adapter():
        base = model.generate(**inputs, max_new_tokens=6, eos_token_id=[])

    assert torch.equal(mixed[1], adapted[1])
    assert not torch.equal(mixed[1], base[1])
    assert torch.equal(mixed[0::2], base[0::2])
    assert not torch.equal(mixed[0::2], adapted[0::2])


def test_generation_graphs_are_cached_and_cleared_by_to(tmp_path_factory):
    _, model = pair("opt", tmp_path_factory)
    model.generate(**prompt("opt"), max_new_tokens=2)
    first = generation_graphs(model).decode
    model.generate(**prompt("opt"), max_new_tokens=3)
    assert generation_graphs(model).decode is first
    model.to(torch.float32)
    assert not model._graphs


def test_merged_adapter_generates_the_same_ids(tmp_path_factory):
    _, model = pair("gpt2", tmp_path_factory)
    inputs = prompt("gpt2")
    expected = model.generate(**inputs, max_new_tokens=8)
    model.merge()
    try:
        assert torch.equal(model.generate(**inputs, max_new_tokens=8), expected)
    finally:
        model.unmerge()


def test_sampling_with_a_seeded_generator_is_reproducible(tmp_path_factory):
    _, model = pair("llama", tmp_path_factory)
    inputs = prompt("llama")

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(
            **inputs, max_new_tokens=12, do_sample=True, temperature=5.0, top_k=0, generator=generator
        )

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_top_k_one_sampling_equals_greedy(tmp_path_factory):
    _, model = pair("llama", tmp_path_factory)
    inputs = prompt("llama")
    sampled = model.generate(
        **inputs, max_new_tokens=10, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(sampled, model.generate(**inputs, max_new_tokens=10))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (1.3, 20, 0.6)]
)
def test_warping_equals_transformers_logits_warpers(temperature, top_k, top_p):
    logits = torch.randn(4, 96, generator=torch.Generator().manual_seed(0)) * 3
    settings = GenerationSettings(10, True, temperature, top_k, top_p, (), 0, None)
    expected = logits
    if temperature != 1.0:
        expected = TemperatureLogitsWarper(temperature)(None, expected)
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = warp(logits, settings)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    assert torch.allclose(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_beams": 2}, "num_beams"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"generator": 7}, "torch.Generator"),
        ({"eos_token_id": "2"}, "eos_token_id"),
        ({"max_new_tokens": 200}, "max_position_embeddings"),
    ],
)
def test_bad_options_raise_call_errors_naming_the_option(options, message, tmp_path_factory):
    _, model = pair("llama", tmp_path_factory)
    with pytest.raises(CallError, match=message):
        model.generate(**prompt("llama"), **options)


def test_right_padded_prompts_are_refused_with_the_fix(tmp_path_factory):
    _, model = pair("llama", tmp_path_factory)
    inputs = prompt("llama")
    inputs["attention_mask"] = inputs["attention_mask"].flip(1)
    with pytest.raises(CallError, match="padding_side = 'left'"):
        model.generate(**inputs)


def test_prompts_must_be_2d_integer_tensors(tmp_path_factory):
    _, model = pair("llama", tmp_path_factory)
    with pytest.raises(CallError, match="2-d integer tensor"):
        model.generate(torch.tensor([4, 5, 6]))


def test_models_without_a_language_modeling_head_cannot_generate():
    model = graphpeft.GraphPeftModel(tiny_bert())
    with pytest.raises(CallError, match="language-modeling head"):
        model.generate(torch.tensor([[4, 5, 6]]))
