"""bf16 / fp16 bases with fp32 adapters (PEFT's autocast_adapter_dtype) and merging that rounds once."""

import copy

import pytest
import torch
from models import batch, tiny_llama
from peft import LoraConfig, get_peft_model

import graphpeft


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable bf16 values lie between ``a`` and ``b`` (elementwise, same-sign values)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_base_gets_fp32_adapters_and_keeps_its_output_dtype(dtype):
    model = graphpeft.apply(tiny_llama(layers=1).to(dtype), "lora", init="random")
    assert {p.dtype for p in model.adapter_parameters().values()} == {torch.float32}
    assert model(**batch("llama")).logits.dtype == dtype


def test_bf16_merge_rounds_once_from_an_fp32_reference():
    model = graphpeft.apply(tiny_llama(layers=1).to(torch.bfloat16), "lora", r=4, alpha=8, init="random")
    spec = model.adapter_specs["default"]
    expected = {}
    scale = 8 / 4  # alpha / r
    for site, _ in spec.claims.values():
        weight = model.base_model.get_parameter(site.weight)
        a = model.adapters.get_parameter(f"{site.fqn}.lora_A.default")
        b = model.adapters.get_parameter(f"{site.fqn}.lora_B.default")
        expected[site.weight] = (weight.float() + scale * (b.double() @ a.double()).float()).to(torch.bfloat16)
    model.merge()
    for name, reference in expected.items():
        merged = model.base_model.get_parameter(name)
        assert merged.dtype == torch.bfloat16
        assert ulp_distance(merged.detach(), reference).max() <= 1


def test_bf16_llama_logits_match_peft_with_the_same_weights(tmp_path):
    base = tiny_llama().to(torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)
    reference = get_peft_model(copy.deepcopy(base), config).eval()
    assert {p.dtype for n, p in reference.named_parameters() if "lora_" in n} == {torch.float32}
    reference.save_pretrained(tmp_path)
    model = graphpeft.load(copy.deepcopy(base), tmp_path)
    inputs = batch("llama")
    expected = reference(**inputs).logits.float()
    got = model(**inputs).logits.float()
    # same op order as PEFT (cast x up, add in fp32, round once); measured difference: 0.0.
    # Allowed: one bf16 ulp at the logits' scale (|logit| < 1), for kernels that sum in another order.
    assert (got - expected).abs().max() <= 2**-7
    assert (base(**inputs).logits.float() - expected).abs().max() > 5e-2
