"""One adapted model serves every call signature, batch size and sequence length."""

import pytest
import torch

import graphpeft
from models import tiny_llama, tiny_t5


@pytest.fixture(scope="module")
def pair():
    base = tiny_llama()
    model = graphpeft.apply(base, "lora", r=4, init="random").eval()
    with model.disable_adapter():
        pass
    return base, model


def _reference(base, model, **inputs):
    """The base model's eager logits with the adapter's delta folded in."""
    model.merge()
    try:
        return base(**inputs, use_cache=False)
    finally:
        model.unmerge()


@pytest.mark.parametrize(("batch_size", "length"), [(1, 1), (1, 64), (2, 3), (5, 17), (8, 64), (8, 1)])
def test_batch_sizes_and_lengths(pair, batch_size, length):
    base, model = pair
    ids = torch.randint(3, 96, (batch_size, length))
    mask = torch.ones_like(ids)
    expected = _reference(base, model, input_ids=ids, attention_mask=mask).logits
    assert (model(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("with_labels", [True, False])
def test_with_and_without_labels_and_mask(pair, with_mask, with_labels):
    base, model = pair
    ids = torch.randint(3, 96, (3, 9))
    inputs = {"input_ids": ids}
    if with_mask:
        inputs["attention_mask"] = torch.ones_like(ids)
    if with_labels:
        inputs["labels"] = ids.clone()
    expected = _reference(base, model, **inputs)
    out = model(**inputs)
    assert type(out) is type(expected)
    assert (out.logits - expected.logits).abs().max() <= 1e-5
    if with_labels:
        assert abs(out.loss.item() - expected.loss.item()) <= 1e-5
    else:
        assert out.loss is None


def test_positional_input_ids(pair):
    _, model = pair
    ids = torch.randint(3, 96, (2, 5))
    assert torch.equal(model(ids).logits, model(input_ids=ids).logits)


def test_one_export_per_signature_reused_across_calls(pair):
    _, model = pair
    ids = torch.randint(3, 96, (2, 5))
    model(input_ids=ids)
    graphs = len(model._graphs)
    model(input_ids=torch.randint(3, 96, (7, 31)))
    assert len(model._graphs) == graphs


def test_encoder_decoder_with_labels():
    base = tiny_t5()
    model = graphpeft.apply(base, "lora", r=4, init="random").eval()
    ids = torch.randint(3, 96, (2, 6))
    labels = torch.randint(3, 96, (2, 4))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    model.merge()
    expected = base(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False)
    model.unmerge()
    assert (out.logits - expected.logits).abs().max() <= 1e-5
    assert abs(out.loss.item() - expected.loss.item()) <= 1e-5


def test_flags_taken_only_through_kwargs_are_honoured(pair):
    """``output_hidden_states`` and ``return_dict`` reach LlamaForCausalLM only through ``**kwargs``."""
    base, model = pair
    ids = torch.randint(3, 96, (2, 9))
    mask = torch.ones_like(ids)
    expected = _reference(base, model, input_ids=ids, attention_mask=mask, output_hidden_states=True)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(expected.hidden_states) == base.config.num_hidden_layers + 1
    for ours, theirs in zip(out.hidden_states, expected.hidden_states, strict=True):
        assert (ours - theirs).abs().max() <= 1e-5
    as_tuple = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4], return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert (as_tuple[0] - model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits).abs().max() == 0
