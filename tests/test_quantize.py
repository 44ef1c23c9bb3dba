"""Quantized frozen base (int8 per-channel, NF4 blockwise) with LoRA on top (QLoRA), in plain torch."""

import copy

import pytest
import torch
from models import batch, tiny_llama

import graphpeft
from graphpeft.errors import AdapterError, CallError
from graphpeft.quantize import NF4_LEVELS, dequantize_weight, quantize_base, quantize_weight, quantized_linear

# Measured on the one-layer tiny llama (|logits| <= 0.41): int8 0.0036, nf4 0.035.
LOGIT_TOLERANCE = {"int8": 1e-2, "nf4": 1e-1}


@pytest.fixture(scope="module")
def base():
    return tiny_llama(layers=1)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_dequantized_weight_is_within_half_a_level_of_the_original(scheme):
    weight = torch.randn(32, 128)
    codes, scales = quantize_weight(weight, scheme)
    restored = dequantize_weight(codes, scales, weight.shape, scheme, torch.float32)
    if scheme == "int8":
        assert codes.dtype == torch.int8 and codes.shape == weight.shape
        bound = scales / 2  # (out, 1): half an int8 step per row
    else:
        assert codes.dtype == torch.uint8 and codes.numel() == weight.numel() // 2
        widest_gap = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()
        bound = (scales[:, None] * widest_gap / 2).expand(-1, 64).reshape(weight.shape)
    assert ((restored - weight).abs() <= bound + 1e-6).all()


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_quantized_model_logits_stay_near_fp32_and_no_weight_is_stored_in_full(base, scheme):
    model = graphpeft.apply(copy.deepcopy(base), "lora", quantize=scheme)
    inputs = batch("llama")
    graph = model.graph(**inputs)
    assert any(n.target is quantized_linear for n in graph.graph.nodes)
    assert model.base_model.model.layers[0].mlp.up_proj.weight.stride() == (0, 0)
    assert (model(**inputs).logits - base(**inputs).logits).abs().max() <= LOGIT_TOLERANCE[scheme]


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_qlora_training_lowers_the_loss_and_matches_the_dequantized_gradients(base, scheme):
    torch.manual_seed(3)
    model = graphpeft.apply(copy.deepcopy(base), "lora", quantize=scheme, init="random").train()
    inputs = dict(batch("llama"), labels=batch("llama")["input_ids"])
    model(**inputs).loss.backward()
    quantized_grads = {n: p.grad.clone() for n, p in model.adapter_parameters().items()}
    model.dequantize()  # the same weights, now stored in full: plain linear ops
    model.zero_grad()
    model(**inputs).loss.backward()
    for name, grad in quantized_grads.items():
        assert (grad - model.adapter_parameters()[name].grad).abs().max() <= 1e-5
    model.quantize(scheme)
    optimizer = torch.optim.AdamW(model.adapter_parameters().values(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_merging_into_a_quantized_base_is_refused_until_dequantized(base):
    model = graphpeft.apply(copy.deepcopy(base), "lora", quantize="int8", init="random")
    with pytest.raises(AdapterError, match=r"merge\(\) needs the full-precision base weights.*call model.dequantize"):
        model.merge()
    model.dequantize()
    inputs = batch("llama")
    unmerged = model(**inputs).logits
    model.merge()
    assert (model(**inputs).logits - unmerged).abs().max() <= 1e-5


def test_generate_and_unload_on_a_quantized_base_are_refused(base):
    model = graphpeft.apply(copy.deepcopy(base), "lora", quantize="nf4")
    with pytest.raises(AdapterError, match=r"generate\(\) needs the full-precision base weights"):
        model.generate(batch("llama")["input_ids"])
    with pytest.raises(AdapterError, match=r"unload\(\) needs the full-precision base weights"):
        model.unload()


def test_unknown_scheme_is_a_named_error():
    with pytest.raises(CallError, match="quantize must be one of 'int8', 'nf4', got 'int4'"):
        quantize_base(tiny_llama(layers=1), "int4")


def test_dora_on_a_quantized_base_is_refused(base):
    with pytest.raises(CallError, match="DoRA reads the base weight itself"):
        graphpeft.apply(copy.deepcopy(base), "lora", dora=True, quantize="int8")
