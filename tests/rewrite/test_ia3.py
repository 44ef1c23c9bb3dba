"""IA3: same logits as PEFT with the same vectors, both directions through files; merging."""

from __future__ import annotations

import json

import pytest
import torch
from peft import IA3Config, PeftModel, get_peft_model

import graphpeft
from models import BUILDERS, batch

TASKS = {"llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "bert": "SEQ_CLS"}


def _randomize(params, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))


def _logits(model, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(kind)).logits


@pytest.mark.parametrize("kind", ["llama", "t5", "bert"])
def test_ia3_round_trip_peft_to_graphpeft_to_peft_keeps_logits(kind, tmp_path):
    peft_model = get_peft_model(BUILDERS[kind](), IA3Config(task_type=TASKS[kind])).eval()
    _randomize(p for n, p in peft_model.named_parameters() if "ia3_l" in n)
    peft_model.save_pretrained(tmp_path / "peft")
    expected = _logits(peft_model, kind)

    model = graphpeft.load(BUILDERS[kind](), tmp_path / "peft")
    loaded = _logits(model, kind)
    model.save_pretrained(tmp_path / "graphpeft")
    reloaded = PeftModel.from_pretrained(BUILDERS[kind](), tmp_path / "graphpeft").eval()

    assert {c.method for _, c in model.adapter_specs["default"].claims.values()} >= {"ia3"}
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(reloaded, kind), expected, atol=1e-5, rtol=0)


def test_default_ia3_rule_saves_peft_default_modules_and_peft_reproduces_it(tmp_path):
    model = graphpeft.apply(BUILDERS["llama"](), "ia3").eval()
    _randomize(model.adapter_parameters().values())
    model.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    peft_model = PeftModel.from_pretrained(BUILDERS["llama"](), tmp_path).eval()

    assert config["peft_type"] == "IA3"
    assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == {"k_proj", "v_proj", "down_proj"}
    assert {m.rsplit(".", 1)[-1] for m in config["feedforward_modules"]} == {"down_proj"}
    torch.testing.assert_close(_logits(peft_model, "llama"), _logits(model, "llama"), atol=1e-5, rtol=0)


def test_ia3_vectors_have_peft_shapes():
    model = graphpeft.apply(BUILDERS["llama"](), "ia3")
    params = model.adapter_parameters("default")

    assert params["model.layers.0.self_attn.k_proj.ia3_l.default"].shape == (16, 1)
    assert params["model.layers.0.mlp.down_proj.ia3_l.default"].shape == (1, 64)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merged_ia3_gives_the_same_logits(kind):
    model = graphpeft.apply(BUILDERS[kind](), "ia3").eval()
    _randomize(model.adapter_parameters().values())
    before = _logits(model, kind)

    base = model.merge_and_unload()

    torch.testing.assert_close(_logits(base, kind), before, atol=1e-5, rtol=0)
