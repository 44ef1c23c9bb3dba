"""Several adapters on one model: add, switch, delete, disable, save/load all or one, compose on one site."""

from __future__ import annotations

import pytest
import torch

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError
from models import batch, tiny_llama

INPUTS = batch("llama")


def _logits(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUTS, **kwargs).logits


def _two_adapters():
    model = graphpeft.apply(tiny_llama(), "lora", adapter_name="first", init="random").eval()
    model.add_adapter("second", "ia3", init="random")
    return model


def test_add_adapter_takes_rule_names_with_overrides_and_rule_objects():
    model = graphpeft.apply(tiny_llama(), "lora")
    model.add_adapter("wide", "lora", r=4)
    model.add_adapter("ffn", Rule("ffn", "ia3", [Pattern(op="linear", module="*.mlp.up_proj")], {"feedforward": True}))

    params = model.adapter_parameters()

    assert params["model.layers.0.self_attn.q_proj.lora_A.wide"].shape == (4, 32)
    assert params["model.layers.1.mlp.up_proj.ia3_l.ffn"].shape == (1, 32)
    assert model.active_adapters == ["default"]


def test_set_adapter_switches_outputs_and_disable_adapter_gives_the_base_model():
    base = tiny_llama()
    expected_base = base(**INPUTS).logits.detach()
    model = _two_adapters()
    first = _logits(model)
    model.set_adapter("second")
    second = _logits(model)
    with model.disable_adapter():
        disabled = _logits(model)

    assert not torch.allclose(first, second)
    torch.testing.assert_close(disabled, expected_base, atol=1e-6, rtol=0)


def test_delete_adapter_removes_its_parameters_and_its_name():
    model = _two_adapters()
    model.delete_adapter("second")

    assert list(model.adapter_specs) == ["first"]
    assert not any(name.endswith(".second") for name in model.adapter_parameters())
    with pytest.raises(AdapterError, match="no adapter named 'second'"):
        model.set_adapter("second")


def test_save_all_uses_subfolders_and_load_restores_every_adapter(tmp_path):
    model = _two_adapters()
    outputs = {}
    for name in ("first", "second"):
        model.set_adapter(name)
        outputs[name] = _logits(model)
    model.save_pretrained(tmp_path)

    every = graphpeft.load(tiny_llama(), tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]
    assert list(every.adapter_specs) == ["first", "second"]
    torch.testing.assert_close(_logits(every), outputs["first"], atol=1e-6, rtol=0)
    every.set_adapter("second")
    torch.testing.assert_close(_logits(every), outputs["second"], atol=1e-6, rtol=0)


def test_save_pretrained_with_adapter_names_saves_only_those(tmp_path):
    model = _two_adapters()
    model.save_pretrained(tmp_path, adapter_names=["second"])

    assert [p.name for p in tmp_path.iterdir()] == ["second"]


@pytest.mark.parametrize("feedforward", [False, True], ids=["ia3_output", "ia3_input"])
@pytest.mark.parametrize("order", [["lora", "ia3"], ["ia3", "lora"]], ids=["lora_first", "ia3_first"])
def test_active_lora_and_ia3_on_one_site_compose_like_merging_them_in_order(order, feedforward):
    model = graphpeft.apply(
        tiny_llama(), Rule("v", "lora", [Pattern(module="*.v_proj")], {"init": "random"}), adapter_name="lora"
    ).eval()
    model.add_adapter(
        "ia3", Rule("v", "ia3", [Pattern(module="*.v_proj")], {"init": "random", "feedforward": feedforward})
    )
    model.add_adapter("ffn", "ia3", init="random")
    model.set_adapter([*order, "ffn"])
    composed = _logits(model)

    merged = model.merge_and_unload()

    torch.testing.assert_close(merged(**INPUTS).logits.detach(), composed, atol=1e-5, rtol=0)
