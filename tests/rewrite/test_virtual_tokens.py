"""Prompt tuning, P-tuning and prefix tuning: same virtual tokens => same logits and loss as PEFT 0.21.2.

Most tests put their adapter on the shared adapter-less model of their architecture
(``shared_models.bare_model``), so prompt tuning and P-tuning share one ``inputs_embeds`` export per kind.
"""

import copy

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

import graphpeft
from graphpeft.errors import AdapterError, GraphPeftError, RuleError
from models import BUILDERS, VOCAB, batch
from shared_models import bare_model, temporary_adapters

NV = 3
TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "bert": "SEQ_CLS"}
CONFIGS = {"prompt_tuning": PromptTuningConfig, "p_tuning": PromptEncoderConfig, "prefix_tuning": PrefixTuningConfig}
# PEFT cannot prefix-tune BertForSequenceClassification (no cache input in transformers 5); graphpeft refuses it too.
CASES = [(kind, method) for kind in TASK for method in CONFIGS if (kind, method) != ("bert", "prefix_tuning")]


def inputs_with_labels(kind):
    inputs = batch(kind)
    if kind == "bert":
        inputs["labels"] = torch.tensor([0, 2, 1])
    else:
        inputs["labels"] = inputs.get("decoder_input_ids", inputs["input_ids"]).clone()
    return inputs


def peft_model(kind, method, **extra):
    base = BUILDERS[kind]()
    config = CONFIGS[method](task_type=TASK[kind], num_virtual_tokens=NV, **extra)
    return base, get_peft_model(copy.deepcopy(base), config).eval()


def same_encoder(ours, reference):
    """Copy PEFT's prompt-encoder weights into graphpeft's (the modules share PEFT's names)."""
    ours.adapters.prompt_encoder["default"].load_state_dict(reference.prompt_encoder["default"].state_dict())


def assert_same_outputs(expected, got):
    assert got.logits.shape == expected.logits.shape
    assert (got.logits - expected.logits).abs().max() <= 1e-5
    assert abs(float(got.loss) - float(expected.loss)) <= 1e-5


def assert_same_outputs_as_peft_with_its_encoder(kind, method, inputs, extra=None, ours=None):
    """PEFT's ``method`` adapter (config ``extra``) and graphpeft's (options ``ours``) with PEFT's encoder weights
    give the same outputs on ``inputs``."""
    _, reference = peft_model(kind, method, **(extra or {}))
    with temporary_adapters(bare_model(kind)) as model:
        model.add_adapter("default", method, num_virtual_tokens=NV, **(ours or {}))
        same_encoder(model, reference)
        assert_same_outputs(reference(**inputs), model(**inputs))


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_peft_adapter_loads_with_same_logits_and_loss(kind, method, tmp_path):
    _, reference = peft_model(kind, method)
    reference.save_pretrained(tmp_path)
    with temporary_adapters(bare_model(kind)) as model:
        model.load_adapter(tmp_path, "default")
        inputs = inputs_with_labels(kind)
        assert_same_outputs(reference(**inputs), model(**inputs))


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_peft_loads_graphpeft_directory_with_same_logits(kind, method, tmp_path):
    with temporary_adapters(bare_model(kind)) as model:
        model.add_adapter("default", method, num_virtual_tokens=NV)
        if kind == "bert":
            with torch.no_grad():
                model.adapters.classifier.modules_to_save["default"].bias.add_(1.0)
        model.save_pretrained(tmp_path)
        reference = PeftModel.from_pretrained(BUILDERS[kind](), tmp_path).eval()
        inputs = inputs_with_labels(kind)
        assert_same_outputs(reference(**inputs), model(**inputs))


# every method once, plus T5's 2·nv prompt rows and BERT's fully trained head
@pytest.mark.parametrize(
    ("kind", "method"), [("llama", m) for m in CONFIGS] + [("t5", "prompt_tuning"), ("bert", "p_tuning")]
)
def test_trainable_parameter_counts_equal_peft(kind, method):
    _, reference = peft_model(kind, method)
    with temporary_adapters(bare_model(kind)) as model:
        model.add_adapter("default", method, num_virtual_tokens=NV)
        assert model.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()


@pytest.mark.parametrize(
    ("method", "extra", "ours"),
    [
        (
            "p_tuning",
            {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 8},
            {"encoder": "lstm", "encoder_hidden_size": 8},
        ),
        (
            "prefix_tuning",
            {"prefix_projection": True, "encoder_hidden_size": 8},
            {"prefix_projection": True, "encoder_hidden_size": 8},
        ),
    ],
)
def test_reparameterized_encoders_match_peft_in_training_form(method, extra, ours):
    assert_same_outputs_as_peft_with_its_encoder("llama", method, inputs_with_labels("llama"), extra, ours)


def test_causal_lm_prompt_logits_include_the_virtual_positions():
    with temporary_adapters(bare_model("llama")) as model:
        model.add_adapter("default", "prompt_tuning", num_virtual_tokens=NV)
        assert model(**batch("llama")).logits.shape == (3, NV + 7, VOCAB)


def test_prefix_tuning_shifts_given_position_ids_like_peft():
    inputs = inputs_with_labels("llama")
    inputs["position_ids"] = torch.arange(7).expand(3, 7).contiguous()
    assert_same_outputs_as_peft_with_its_encoder("llama", "prefix_tuning", inputs)


def test_t5_prefix_extends_the_decoder_attention_mask_like_peft():
    inputs = inputs_with_labels("t5")
    inputs["decoder_attention_mask"] = torch.ones(3, 5, dtype=torch.long)
    inputs["decoder_attention_mask"][0, -2:] = 0
    assert_same_outputs_as_peft_with_its_encoder("t5", "prefix_tuning", inputs)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_training_lowers_loss_and_changes_only_virtual_tokens(method):
    base = BUILDERS["llama"]()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = graphpeft.apply(base, method, num_virtual_tokens=4).train()
    start = {k: v.detach().clone() for k, v in model.adapter_parameters().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    inputs = inputs_with_labels("llama")
    losses = []
    for _ in range(30):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert all(not torch.equal(start[k], p) for k, p in model.adapter_parameters().items())


def test_sample_vocab_init_takes_rows_of_the_embedding_matrix():
    with temporary_adapters(bare_model("llama")) as model:
        model.add_adapter("default", "prompt_tuning", num_virtual_tokens=NV, init="sample_vocab")
        rows = model.adapters.prompt_encoder["default"].embedding.weight
        words = model.base_model.model.embed_tokens.weight
        assert all((words == row).all(dim=1).any() for row in rows)


def test_text_init_repeats_the_token_ids_to_fill_the_virtual_tokens():
    with temporary_adapters(bare_model("llama")) as model:
        model.add_adapter("default", "prompt_tuning", num_virtual_tokens=5, init="text", init_token_ids=[7, 9])
        rows = model.adapters.prompt_encoder["default"].embedding.weight
        assert torch.equal(rows, model.base_model.model.embed_tokens.weight[[7, 9, 7, 9, 7]])


def test_text_init_without_ids_or_tokenizer_is_an_error():
    with temporary_adapters(bare_model("llama")) as model, pytest.raises(GraphPeftError, match="init_token_ids"):
        model.add_adapter("default", "prompt_tuning", init="text")


def test_prefix_tuning_a_model_without_cache_input_is_an_error():
    from graphpeft import Pattern, Rule

    rule = Rule("prefix", "prefix_tuning", (Pattern(op="attention"),), {"num_virtual_tokens": NV})
    with temporary_adapters(bare_model("bert")) as model, pytest.raises(RuleError, match="takes no cache"):
        model.add_adapter("default", rule)


def test_two_active_virtual_token_adapters_are_an_error():
    from graphpeft.rules.builtin import resolve_rules

    with temporary_adapters(bare_model("llama"), "default", "other") as model:
        model.add_adapter("default", "prompt_tuning", num_virtual_tokens=NV)
        model.add_adapter("other", resolve_rules(model.base_model, "prefix_tuning", {"num_virtual_tokens": NV}))
        model.set_adapter(["default", "other"])
        with pytest.raises(AdapterError, match="activate only one"):
            model(**batch("llama"))
