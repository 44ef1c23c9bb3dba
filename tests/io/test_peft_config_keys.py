"""Every key of PEFT's adapter configs is either honoured exactly as PEFT honours it or refused.

The schemas in ``graphpeft/peft_schema.py`` must cover every field of the installed PEFT's config
classes; the keys graphpeft models (module selection: ``exclude_modules``, ``layers_to_transform``,
``layers_pattern``, ``modules_to_save``; initialisations that only shape the file's weights) load to
PEFT's logits; initialisations that change the base weights (PiSSA, OLoRA) are refused.
"""

from __future__ import annotations

import copy
import dataclasses

import peft
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.config import CordaConfig

import graphpeft
from graphpeft.errors import LoadError
from graphpeft.io.peft_schema import SCHEMAS
from models import BUILDERS, batch
from shared_models import bare_model, temporary_adapters

CONFIG_CLASSES = {
    "LORA": peft.LoraConfig,
    "IA3": peft.IA3Config,
    "PROMPT_TUNING": peft.PromptTuningConfig,
    "P_TUNING": peft.PromptEncoderConfig,
    "PREFIX_TUNING": peft.PrefixTuningConfig,
}


@pytest.mark.parametrize("peft_type", CONFIG_CLASSES)
def test_every_peft_config_field_has_a_schema_entry(peft_type):
    fields = {f.name for f in dataclasses.fields(CONFIG_CLASSES[peft_type])}
    assert set(SCHEMAS[peft_type][1]) == fields


def saved_peft_adapter(kind: str, config: LoraConfig, folder) -> tuple[torch.Tensor, list[str]]:
    """Save a PEFT adapter with random LoRA weights on ``BUILDERS[kind]()``; return its logits and adapted modules."""
    reference = get_peft_model(copy.deepcopy(BUILDERS[kind]()), config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    reference.eval().save_pretrained(folder)
    adapted = sorted(
        n.removeprefix("base_model.model.") for n, m in reference.named_modules() if isinstance(m, LoraLayer)
    )
    return reference(**batch(kind)).logits.detach(), adapted


def loaded_logits(kind: str, folder) -> tuple[torch.Tensor, list[str]]:
    """graphpeft's logits with the folder loaded on the shared base, and the modules it adapted."""
    with temporary_adapters(bare_model(kind)) as model:
        model.load_adapter(folder, "default")
        claims = model.adapter_specs["default"].claims.values()
        adapted = sorted(site.fqn for site, claim in claims if claim.method == "lora")
        return model(**batch(kind)).logits.detach(), adapted


@pytest.mark.parametrize(
    "setting",
    [
        {"init_lora_weights": False},
        {"init_lora_weights": "gaussian"},
        {"init_lora_weights": "orthogonal"},
        {"init_lora_weights": "eva"},
        {"corda_config": CordaConfig()},
    ],
    ids=["init_false", "init_gaussian", "init_orthogonal", "init_eva", "corda_config_without_corda_init"],
)
def test_settings_that_only_shape_the_saved_weights_load_like_peft(setting, tmp_path):
    expected, _ = saved_peft_adapter("llama", LoraConfig(r=4, lora_alpha=8, **setting), tmp_path)
    got, _ = loaded_logits("llama", tmp_path)
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_inits_that_change_the_base_weights_are_refused_naming_the_init(init, tmp_path):
    reference = get_peft_model(BUILDERS["llama"](), LoraConfig(r=4, init_lora_weights=init))
    reference.save_pretrained(tmp_path)
    with pytest.raises(LoadError, match=f"init_lora_weights='{init}'"):
        graphpeft.load(BUILDERS["llama"](), tmp_path)


SELECTIONS = {
    "exclude_modules": {"target_modules": ["q_proj", "v_proj"], "exclude_modules": ["model.layers.1.self_attn.q_proj"]},
    "layers_to_transform": {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]},
    "layers_to_transform_with_pattern": {
        "target_modules": ["q_proj", "up_proj"],
        "layers_to_transform": 0,
        "layers_pattern": "layers",
    },
    "exact_names_ignore_layers": {
        "target_modules": ["model.layers.0.self_attn.q_proj", "v_proj"],
        "layers_to_transform": [1],
    },
}


@pytest.mark.parametrize("selection", SELECTIONS)
def test_module_selection_keys_adapt_the_modules_peft_adapts(selection, tmp_path):
    expected, peft_modules = saved_peft_adapter("llama", LoraConfig(r=4, **SELECTIONS[selection]), tmp_path)
    got, ours = loaded_logits("llama", tmp_path)
    assert ours == peft_modules
    assert (got - expected).abs().max() <= 1e-5


def test_a_module_to_save_is_not_also_lora_adapted_like_peft(tmp_path):
    config = LoraConfig(r=4, target_modules=["query", "value", "classifier"], task_type="SEQ_CLS")
    expected, peft_modules = saved_peft_adapter("bert", config, tmp_path)
    got, ours = loaded_logits("bert", tmp_path)
    assert "classifier" not in ours
    assert ours == peft_modules
    assert (got - expected).abs().max() <= 1e-5
