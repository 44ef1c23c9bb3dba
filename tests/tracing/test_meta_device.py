"""Tracing needs no real weights: apply works on the meta device, even at 7B shape."""

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft


def test_apply_on_a_7b_shaped_llama_on_the_meta_device():
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    )
    with torch.device("meta"):
        base = LlamaForCausalLM(config)
    started = time.perf_counter()
    model = graphpeft.apply(base, "lora", r=16)
    elapsed = time.perf_counter() - started
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 32 * 2 * 16 * (4096 + 4096)
    assert total > 6_700_000_000
    assert model.adapters.get_parameter("model.layers.31.self_attn.v_proj.lora_B.default").device.type == "meta"
    print(f"apply on 7B-shaped llama (meta): {elapsed:.1f}s")  # noqa: T201 - the timing, shown under pytest -s
