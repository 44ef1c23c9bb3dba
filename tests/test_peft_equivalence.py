"""Same LoRA weights => same logits as PEFT, through files in both directions.

The tests put their adapter on the shared adapter-less model of their architecture
(``shared_models.bare_model``): one export per architecture serves every variant and direction.
"""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import graphpeft
from models import BUILDERS, batch
from shared_models import bare_model, temporary_adapters

VARIANTS = {
    "lora": {},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
}


def peft_model(kind: str, **extra):
    base = BUILDERS[kind]()
    config = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, task_type="SEQ_CLS" if kind == "bert" else None, **extra
    )
    return base, get_peft_model(copy.deepcopy(base), config).eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", BUILDERS)
def test_peft_adapter_loads_with_same_logits(kind, variant, tmp_path):
    base, reference = peft_model(kind, **VARIANTS[variant])
    reference.save_pretrained(tmp_path)
    inputs = batch(kind)
    expected = reference(**inputs).logits
    with temporary_adapters(bare_model(kind)) as model:
        model.load_adapter(tmp_path, "default")
        assert (model(**inputs).logits - expected).abs().max() <= 1e-5
    # the adapter is really there: the base model alone differs
    assert (base(**inputs).logits - expected).abs().max() > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", BUILDERS)
def test_peft_loads_graphpeft_directory_with_same_logits(kind, variant, tmp_path):
    flags = {"rslora": variant == "rslora", "dora": variant == "dora"}
    with temporary_adapters(bare_model(kind)) as model:
        model.add_adapter("default", "lora", r=4, alpha=8, init="random", **flags)
        model.save_pretrained(tmp_path)
        reference = PeftModel.from_pretrained(BUILDERS[kind](), tmp_path).eval()
        inputs = batch(kind)
        assert (reference(**inputs).logits - model(**inputs).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", BUILDERS)
def test_parameter_counts_equal_peft(kind):
    _, reference = peft_model(kind)
    with temporary_adapters(bare_model(kind)) as ours:
        ours.add_adapter("default", "lora", r=4)
        assert ours.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()


def test_print_trainable_parameters_matches_peft(capsys):
    get_peft_model(BUILDERS["llama"](), LoraConfig(r=4)).print_trainable_parameters()
    expected = capsys.readouterr().out
    with temporary_adapters(bare_model("llama")) as model:
        model.add_adapter("default", "lora", r=4)
        model.print_trainable_parameters()
    assert capsys.readouterr().out == expected


def test_dora_magnitude_counts_as_trainable_like_peft():
    _, reference = peft_model("opt", use_dora=True)
    with temporary_adapters(bare_model("opt")) as ours:
        ours.add_adapter("default", "lora", r=4, dora=True)
        assert ours.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()


def test_classifier_head_trains_in_full_like_peft_seq_cls(tmp_path):
    base = BUILDERS["bert"]()
    model = graphpeft.apply(copy.deepcopy(base), "lora", r=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier.modules_to_save.default" in n for n in names)
    with torch.no_grad():
        model.adapters.classifier.modules_to_save["default"].bias.add_(1.0)
    model.eval().save_pretrained(tmp_path)
    reference = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    inputs = batch("bert")
    assert (reference(**inputs).logits - model(**inputs).logits).abs().max() <= 1e-5
    assert torch.equal(base.classifier.bias, model.base_model.classifier.bias)


def test_bert_lora_pooler_rule_equals_peft_with_the_pooler_targeted(tmp_path):
    base = BUILDERS["bert"]()
    config = LoraConfig(
        r=8,
        lora_alpha=8,
        target_modules=["query", "value", "pooler.dense"],
        init_lora_weights=False,
        task_type="SEQ_CLS",
    )
    reference = get_peft_model(copy.deepcopy(base), config).eval()
    reference.save_pretrained(tmp_path)
    model = graphpeft.load(copy.deepcopy(base), tmp_path)
    ours = graphpeft.apply(copy.deepcopy(base), "lora_pooler")
    assert ours.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()
    assert any(key.startswith("bert.pooler.dense") for key in ours.adapter_specs["default"].claims)
    inputs = batch("bert")
    assert (reference(**inputs).logits - model(**inputs).logits).abs().max() <= 1e-5
