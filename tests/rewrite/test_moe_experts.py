"""LoRA per expert on transformers 5's fused expert parameters (Qwen3-MoE, 4 experts, grouped mm)."""

from __future__ import annotations

import pytest
import torch

import graphpeft
from graphpeft import Pattern, Rule
from models import batch, tiny_qwen3_moe

EXPERTS = Rule(
    "experts",
    "lora",
    [Pattern(param="*.experts.gate_up_proj"), Pattern(param="*.experts.down_proj")],
    {"r": 4, "alpha": 8, "init": "random"},
)
SCALE = 8 / 4


@pytest.fixture(scope="module")
def adapted():
    model = graphpeft.apply(tiny_qwen3_moe(), EXPERTS)
    inputs = batch("llama")
    with torch.no_grad():
        logits = model(**inputs).logits
    return model, inputs, logits


def test_expert_stacks_are_grouped_mm_sites_with_one_adapter_per_expert(adapted):
    model = adapted[0]
    sites = {s.key: s for s, _ in model.adapter_specs["default"].claims.values()}
    assert set(sites) == {f"model.layers.{i}.mlp.experts:grouped_mm{o}" for i in (0, 1) for o in ("", "#1")}
    gate_up = model.adapters.get_submodule("model.layers.0.mlp.experts.gate_up_proj")
    down = model.adapters.get_submodule("model.layers.0.mlp.experts.down_proj")
    assert gate_up.lora_A["default"].shape == (4, 4, 32)
    assert gate_up.lora_B["default"].shape == (4, 32, 4)
    assert down.lora_A["default"].shape == (4, 4, 16)
    assert down.lora_B["default"].shape == (4, 32, 4)


def test_expert_lora_matches_hand_written_per_expert_weights(adapted):
    model, inputs, logits = adapted
    reference = tiny_qwen3_moe()
    with torch.no_grad():
        for name in ("gate_up_proj", "down_proj"):
            for i, layer in enumerate(reference.model.layers):
                host = model.adapters.get_submodule(f"model.layers.{i}.mlp.experts.{name}")
                a, b = host.lora_A["default"], host.lora_B["default"]  # (E, r, in), (E, out, r)
                getattr(layer.mlp.experts, name).add_(SCALE * torch.einsum("eor,eri->eoi", b, a))
        expected = reference(**inputs).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_expert_lora_matches_peft_target_parameters(adapted):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import ParamWrapper

    model, inputs, logits = adapted
    config = LoraConfig(r=4, lora_alpha=8, target_parameters=["gate_up_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(tiny_qwen3_moe(), config)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if isinstance(module, ParamWrapper):
                fqn = name.removeprefix("base_model.model.").replace(".base_layer", "")
                host = model.adapters.get_submodule(f"{fqn}.{module.parameter_name}")
                a, b = host.lora_A["default"], host.lora_B["default"]
                # PEFT: A (E·r, in) with row e·r + k; B (out, r·E) with column k·E + e
                module.lora_A["default"].weight.copy_(a.reshape(-1, a.shape[-1]))
                module.lora_B["default"].weight.copy_(b.permute(1, 2, 0).reshape(b.shape[1], -1))
        expected = peft_model(**inputs).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_merging_expert_lora_keeps_logits_and_unmerge_restores_weights(adapted):
    model, inputs, logits = adapted
    weight = model.base_model.model.layers[1].mlp.experts.down_proj
    before = weight.detach().clone()
    with torch.no_grad():
        model.merge()
        try:
            merged = model(**inputs).logits
        finally:
            model.unmerge()
    torch.testing.assert_close(merged, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight, before, atol=1e-6, rtol=0)


def test_expert_lora_model_compiles_without_graph_breaks(adapted):
    model, inputs, _ = adapted
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(**inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
