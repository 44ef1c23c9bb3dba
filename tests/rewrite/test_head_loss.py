"""The fused head cross-entropy of training graphs (graphpeft.rewrite.graph_passes.head_loss): same loss and
gradients as the unfused graph and as PEFT, and no vocabulary-sized tensor saved for backward besides the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import graphpeft
from graphpeft.rewrite.graph_passes import head_loss
from graphpeft.rewrite.graph_passes.head_loss import head_cross_entropy
from models import VOCAB, batch, tiny_llama, tiny_t5


def labelled(kind: str) -> dict[str, torch.Tensor]:
    inputs = batch(kind)
    labels = (inputs["decoder_input_ids"] if kind == "t5" else inputs["input_ids"]).clone()
    labels[0, :3] = -100
    return {**inputs, "labels": labels}


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode without randomness, so two libraries' training steps can be compared."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):  # T5 attention keeps a bare rate
            module.dropout = 0.0
    return model


def lora_and_peft(builder, targets, tmp_path):
    """graphpeft and PEFT with the same base and the same (random) LoRA weights, in train mode."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        without_dropout(builder()), LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path)
    ours = graphpeft.load(without_dropout(builder()), tmp_path, is_trainable=True)
    return ours.train(), peft_model.train()


def assert_same_adapter_grads(ours, peft_model) -> None:
    peft_grads = {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}
    our_grads = [p.grad for p in ours.parameters() if p.requires_grad]
    assert len(our_grads) == len(peft_grads) > 0
    for grad, (name, peft_grad) in zip(our_grads, peft_grads.items(), strict=True):
        assert torch.allclose(grad, peft_grad, atol=1e-6), name


def fused_count(model: graphpeft.GraphPeftModel) -> int:
    graphs = list(model._graphs.values())
    return sum(node.target is head_cross_entropy for graph in graphs for node in graph.graph.nodes)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    return lora_and_peft(tiny_llama, ["q_proj", "v_proj"], tmp_path_factory.mktemp("peft"))


@pytest.fixture(scope="module")
def t5_pair(tmp_path_factory):
    return lora_and_peft(tiny_t5, ["q", "v"], tmp_path_factory.mktemp("peft"))


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_training_loss_and_adapter_gradients_equal_peft(kind, request):
    ours, peft_model = request.getfixturevalue(f"{kind}_pair")
    ours.zero_grad(), peft_model.zero_grad()
    inputs = labelled(kind)
    our_loss = ours(**inputs).loss
    peft_loss = peft_model(**inputs).loss
    our_loss.backward()
    peft_loss.backward()
    assert fused_count(ours) == 1
    assert torch.equal(our_loss, peft_loss)  # one chunk: the same kernel on the same logits
    assert_same_adapter_grads(ours, peft_model)


def test_a_loss_built_on_the_logits_still_reaches_the_adapters(llama_pair):
    ours, peft_model = llama_pair
    ours.zero_grad(), peft_model.zero_grad()
    inputs = labelled("llama")
    out = ours(**inputs)
    (out.loss + out.logits.square().mean()).backward()
    reference = peft_model(**inputs)
    (reference.loss + reference.logits.square().mean()).backward()
    assert_same_adapter_grads(ours, peft_model)


def test_eval_graphs_keep_the_plain_loss(llama_pair):
    ours, peft_model = llama_pair
    inputs = labelled("llama")
    ours(**inputs)
    with torch.no_grad():
        eval_loss = ours.eval()(**inputs).loss
    ours.train()
    assert fused_count(ours) == 1  # the training graph only
    assert torch.equal(eval_loss, peft_model.eval()(**inputs).loss)
    peft_model.train()


def saved_sizes(loss_fn) -> list[int]:
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn()
    return sizes


def test_only_the_logits_are_kept_at_vocabulary_size():
    torch.manual_seed(0)
    hidden = torch.randn(64, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    labels = torch.randint(0, 50, (64,))
    logits_size = 64 * 50

    def plain():
        return F.cross_entropy(F.linear(hidden, weight), labels)

    def fused():
        logits = F.linear(hidden, weight)
        return head_cross_entropy(hidden, weight, None, logits.detach(), labels)

    assert sum(size >= logits_size for size in saved_sizes(plain)) >= 1  # log-softmax kept by eager autograd
    assert sum(size >= logits_size for size in saved_sizes(fused)) == 1  # the logits, alive as an output anyway


@pytest.mark.parametrize("reduction", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_function_matches_autograd_in_every_input(reduction, dtype, monkeypatch):
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 3 * VOCAB)  # several chunks, the last one short
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(VOCAB, 16, dtype=dtype, requires_grad=True)
    bias = torch.randn(VOCAB, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, VOCAB, (10,))
    labels[[1, 7]] = -100

    def run(fused: bool):
        logits = F.linear(hidden, weight, bias).view(-1, VOCAB).float()
        if fused:
            loss = head_cross_entropy(hidden, weight, bias, logits.detach(), labels, -100, reduction)
        else:
            loss = F.cross_entropy(logits, labels, reduction="mean" if reduction == 1 else "sum")
        grads = torch.autograd.grad(loss, (hidden, weight, bias))
        return loss, grads

    (loss, grads), (ref_loss, ref_grads) = run(True), run(False)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(loss, ref_loss, rtol=tolerance, atol=tolerance)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert grad.dtype == ref.dtype
        assert torch.allclose(grad.float(), ref.float(), rtol=tolerance, atol=tolerance)


def test_all_labels_ignored_gives_nan_like_pytorch():
    hidden = torch.randn(3, 4, requires_grad=True)
    weight = torch.randn(7, 4)
    labels = torch.full((3,), -100)
    logits = F.linear(hidden, weight)
    fused = head_cross_entropy(hidden, weight, None, logits.detach(), labels)
    assert torch.isnan(fused)
    assert torch.isnan(F.cross_entropy(logits, labels))
