"""Quantized frozen base (int8 per-channel, NF4 blockwise) with LoRA on top (QLoRA), in plain torch."""

import copy

import pytest
import torch
from torch import nn

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError, CallError
from graphpeft.rewrite.graph_passes.quantize import quantized_linear
from graphpeft.rewrite.quantized_base import NF4_LEVELS, dequantize_weight, quantize_weight
from models import batch, tiny_gpt2, tiny_llama

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
        assert codes.dtype == torch.int8
        assert codes.shape == weight.shape
        bound = scales / 2  # (out, 1): half an int8 step per row
    else:
        assert codes.dtype == torch.uint8
        assert codes.numel() == weight.numel() // 2
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


def test_unknown_scheme_is_a_named_error(base):
    with pytest.raises(CallError, match="quantize must be one of 'int8', 'nf4', got 'int4'"):
        graphpeft.apply(copy.deepcopy(base), "lora", quantize="int4")


def test_dora_on_a_quantized_base_is_refused(base):
    with pytest.raises(CallError, match="DoRA reads the base weight itself"):
        graphpeft.apply(copy.deepcopy(base), "lora", dora=True, quantize="int8")


# ---------------------------------------------------------------------- GPT-2 Conv1D: weights stored (in, out)
CONV1D = [
    f"transformer.h.{i}.{m}.weight" for i in (0, 1) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2()


def linear_layout_round_trip(weight_in_out: torch.Tensor, scheme: str) -> torch.Tensor:
    """What quantizing the equivalent ``nn.Linear`` (weight (out, in)) gives back, in Conv1D's (in, out)."""
    as_linear = weight_in_out.detach().t()
    codes, scales = quantize_weight(as_linear, scheme)
    return dequantize_weight(codes, scales, as_linear.shape, scheme, torch.float32).t()


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_gpt2_conv1d_weights_are_quantized_and_named_in_the_report(gpt2, scheme):
    model = graphpeft.apply(copy.deepcopy(gpt2), "lora", quantize=scheme)
    assert model.quantization.scheme == scheme
    assert sorted(model.quantization.weights) == sorted(CONV1D)
    assert model.base_model.transformer.h[0].mlp.c_fc.weight.stride() == (0, 0)
    graph = model.graph(**batch("gpt2"))
    assert sum(n.target is quantized_linear for n in graph.graph.nodes) == len(CONV1D)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_gpt2_conv1d_dequantizes_to_what_the_equivalent_linear_gives(gpt2, scheme):
    model = graphpeft.apply(copy.deepcopy(gpt2), "lora", quantize=scheme)
    model.dequantize()
    for name in CONV1D:
        expected = linear_layout_round_trip(gpt2.get_parameter(name), scheme)
        assert torch.equal(model.base_model.get_parameter(name), expected), name


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_gpt2_quantized_logits_equal_a_reference_with_dequantized_weights(gpt2, scheme):
    model = graphpeft.apply(copy.deepcopy(gpt2), "lora", quantize=scheme)  # LoRA B = 0: the base alone
    reference = copy.deepcopy(gpt2)
    with torch.no_grad():
        for name in CONV1D:
            reference.get_parameter(name).copy_(linear_layout_round_trip(gpt2.get_parameter(name), scheme))
        inputs = batch("gpt2")
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=0)


def test_report_says_which_weights_stay_in_full_precision_and_why(gpt2):
    model = graphpeft.apply(copy.deepcopy(gpt2), "lora", quantize="nf4")
    kept = dict(model.quantization.kept)
    assert list(kept) == ["lm_head.weight"]
    assert "output head" in kept["lm_head.weight"]
    assert str(model.quantization).startswith(f"nf4: {len(CONV1D)} base linear weights quantized")


def test_explain_marks_the_quantized_sites(gpt2):
    text = graphpeft.apply(copy.deepcopy(gpt2), "lora", quantize="int8").explain().text()
    assert "c_attn linear 32→96 [int8]" in text
    assert f"quantized base: int8: {len(CONV1D)} base linear weights quantized" in text


class OddShapes(nn.Module):
    """A linear whose weight (5, 7) has 35 entries: not a whole number of 64-value NF4 blocks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(7, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.proj(x))


def test_nf4_quantizes_a_weight_that_is_not_a_whole_number_of_blocks():
    plain = OddShapes()
    inputs = torch.randn(4, 7)
    rule = Rule("out", "lora", Pattern(op="linear", module="out"), {"r": 2})
    model = graphpeft.apply(copy.deepcopy(plain), rule, example_inputs=(inputs,), quantize="nf4")
    assert sorted(model.quantization.weights) == ["out.weight", "proj.weight"]
    codes, scales = quantize_weight(plain.proj.weight, "nf4")
    restored = dequantize_weight(codes, scales, (5, 7), "nf4", torch.float32)
    assert codes.numel() == 32
    assert scales.shape == (1,)
    assert (restored - plain.proj.weight).abs().max() <= scales.max() * 0.2
    model.dequantize()
    assert torch.equal(model.base_model.proj.weight, restored)


def test_quantizing_an_already_quantized_base_is_refused_and_changes_nothing(base):
    model = graphpeft.apply(copy.deepcopy(base), "lora", quantize="int8")
    before = str(model.quantization)
    with pytest.raises(AdapterError, match=r"already quantized \(int8\); call model.dequantize\(\) first"):
        model.quantize("nf4")
    assert str(model.quantization) == before


def test_weights_on_the_meta_device_cannot_be_quantized():
    with torch.device("meta"):
        meta = tiny_llama(layers=1)
    with pytest.raises(CallError, match="on the meta device"):
        graphpeft.apply(meta, "lora", quantize="nf4")
    assert all(not hasattr(m, "weight_codes") for m in meta.modules())


def test_module_trained_in_full_on_a_quantized_base_starts_from_its_dequantized_weights(base):
    model = graphpeft.apply(copy.deepcopy(base), "lora", quantize="int8")
    model.add_adapter("full", Rule("full", "train", Pattern(op="module", module="model.layers.0.mlp.up_proj")))
    trained = model.adapters.get_submodule("model.layers.0.mlp.up_proj.modules_to_save")["full"]
    reference = copy.deepcopy(base).model.layers[0].mlp.up_proj
    codes, scales = quantize_weight(reference.weight, "int8")
    assert torch.equal(trained.weight, dequantize_weight(codes, scales, (64, 32), "int8", torch.float32))
    assert not [name for name, _ in trained.named_buffers()], "the trainable copy holds no codes"
