"""generate() with virtual tokens equals a no-cache greedy decode that recomputes the whole sequence each step.

The adapters sit on the shared adapter-less models (``shared_models.bare_model``), so the prefill and
decode exports of an architecture serve all its methods.
"""

import pytest
import torch

from models import batch
from shared_models import bare_model, temporary_adapters

NEW = 24


def full_recompute_greedy(model, kind, ids, mask):
    """Greedy decoding through forward() on the whole sequence each step (no cache anywhere)."""
    with torch.no_grad():
        if kind == "t5":
            decoded = torch.zeros(ids.shape[0], 1, dtype=torch.long)
            for _ in range(NEW):
                logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoded).logits[:, -1]
                decoded = torch.cat([decoded, logits.argmax(-1, keepdim=True)], dim=1)
            return decoded
        for _ in range(NEW):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return ids


@pytest.mark.parametrize(
    ("kind", "method"),
    [("llama", "prompt_tuning"), ("llama", "prefix_tuning"), ("gpt2", "p_tuning"), ("t5", "prefix_tuning")],
)
def test_greedy_generate_equals_full_recompute_with_left_padding(kind, method):
    with temporary_adapters(bare_model(kind)) as model:
        model.add_adapter("default", method, num_virtual_tokens=3)
        with torch.no_grad():
            for param in model.adapter_parameters().values():
                param.mul_(3)  # strong virtual tokens, so ignoring or re-injecting them changes the tokens
        inputs = batch(kind)  # decoder-only rows: the first is left-padded
        got = model.generate(
            inputs["input_ids"], inputs["attention_mask"], max_new_tokens=NEW, eos_token_id=[], do_sample=False
        )
        assert torch.equal(got, full_recompute_greedy(model, kind, inputs["input_ids"], inputs["attention_mask"]))
