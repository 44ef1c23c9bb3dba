"""bf16 / fp16 bases with fp32 adapters (PEFT's autocast_adapter_dtype) and merging that rounds once."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import graphpeft
from graphpeft import Pattern, Rule
from models import batch, tiny_gpt2, tiny_llama, tiny_qwen3_moe


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


def c_attn_lora(**options) -> Rule:
    """LoRA on GPT-2's fused c_attn: the whole module, or the slices named in ``options``."""
    split = {"q": 32, "k": 32, "v": 32}
    return Rule(
        "c_attn",
        "lora",
        [Pattern(op="linear", module="*.attn.c_attn", split=split)],
        {"r": 4, "alpha": 8, "init": "random", **options},
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_fused_slices_compute_in_fp32_and_round_once_like_a_module_adapter(dtype):
    whole = graphpeft.apply(tiny_gpt2().to(dtype), c_attn_lora())
    sliced = graphpeft.apply(tiny_gpt2().to(dtype), c_attn_lora(slices=["q", "k", "v"]))
    sliced.load_state_dict(whole.state_dict())  # same A and B: every slice chosen, in output order
    inputs = batch("gpt2")
    with torch.no_grad():
        expected = whole(**inputs).logits
        got = sliced(**inputs).logits
    assert got.dtype == dtype
    assert torch.equal(got, expected)


EXPERTS = Rule(
    "experts",
    "lora",
    [Pattern(param="*.experts.gate_up_proj"), Pattern(param="*.experts.down_proj")],
    {"r": 4, "alpha": 8, "init": "random"},
)


def peft_experts_with_the_same_weights(base: torch.nn.Module, model: graphpeft.GraphPeftModel) -> torch.nn.Module:
    """PEFT's target_parameters LoRA on ``base`` holding ``model``'s expert A and B (PEFT's layout)."""
    from peft.tuners.lora.layer import ParamWrapper

    config = LoraConfig(r=4, lora_alpha=8, target_parameters=["gate_up_proj", "down_proj"], init_lora_weights=False)
    reference = get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, module in reference.named_modules():
            if isinstance(module, ParamWrapper):
                fqn = name.removeprefix("base_model.model.").replace(".base_layer", "")
                host = model.adapters.get_submodule(f"{fqn}.{module.parameter_name}")
                a, b = host.lora_A["default"], host.lora_B["default"]  # (E, r, in), (E, out, r)
                module.lora_A["default"].weight.copy_(a.reshape(-1, a.shape[-1]))
                module.lora_B["default"].weight.copy_(b.permute(1, 2, 0).reshape(b.shape[1], -1))
    return reference


def test_bf16_expert_lora_matches_peft_target_parameters():
    base = tiny_qwen3_moe().to(torch.bfloat16)
    model = graphpeft.apply(copy.deepcopy(base), EXPERTS)
    reference = peft_experts_with_the_same_weights(copy.deepcopy(base), model)
    exact = peft_experts_with_the_same_weights(copy.deepcopy(base).float(), model)  # fp32 on the same weights
    inputs = batch("llama")
    with torch.no_grad():
        got = model(**inputs).logits
        expected = reference(**inputs).logits.float()
        truth = exact(**inputs).logits
    assert got.dtype == torch.bfloat16
    # PEFT folds the delta into the bf16 expert weights, graphpeft adds the fp32 update to the bf16 product:
    # both are bf16 roundings of the same fp32 computation, so they agree to bf16's own error on it.
    peft_error = (expected - truth).abs().max()
    assert (got.float() - truth).abs().max() <= 2 * peft_error
    assert (got.float() - expected).abs().max() <= 3 * peft_error
    assert (base(**inputs).logits.float() - truth).abs().max() > 10 * peft_error


def test_bf16_fused_slice_merge_rounds_once_from_the_fp32_sum():
    model = graphpeft.apply(tiny_gpt2().to(torch.bfloat16), c_attn_lora(slices=["q", "v"]))
    host = model.adapters.get_submodule("transformer.h.0.attn.c_attn")
    a, b = host.lora_A["default"], host.lora_B["default"]  # (r, 32), (64, r): q rows then v rows
    weight = model.base_model.transformer.h[0].attn.c_attn.weight  # Conv1D: (in, out)
    delta = torch.zeros(96, 32)
    delta[:32], delta[64:] = (b.detach() @ a.detach() * 2.0).split(32)
    expected = (weight.detach().float() + delta.T).to(torch.bfloat16)
    model.merge()
    assert torch.equal(weight.detach(), expected)
