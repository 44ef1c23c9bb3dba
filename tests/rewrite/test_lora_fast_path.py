"""The LoRA graph applies its scale to the rank-r activations (and DoRA's to the magnitude vector)
rather than to the (..., out) activations. These tests check that this gives the numbers and
gradients of the textbook formula  y = base(x) + scale · B (A x), written out by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphpeft
from graphpeft import Pattern, Rule

R, ALPHA = 4, 3  # scale 0.75: not a power of two, so a reordered product could round differently
SCALE = ALPHA / R


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 6)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)  # 4 output channels: room for rank R

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids: (batch, seq), image: (batch, 2, 5, 5) -> ((batch, seq, 6), (batch, 4, 5, 5))."""
        return self.fc(self.emb(ids)), self.conv(image)


def adapted(dora: bool) -> tuple[graphpeft.GraphPeftModel, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    base = Tokens()
    example = (
        torch.randint(0, 10, (2, 3), generator=torch.Generator().manual_seed(1)),
        torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(2)),
    )
    options = {"r": R, "alpha": ALPHA, "init": "random", "dora": dora}
    targets = [Pattern(op="embedding", module="emb"), Pattern(op="linear", module="fc")]
    rules = [Rule("lora", "lora", targets, options)]
    if not dora:
        rules.append(Rule("conv", "lora", [Pattern(op="conv2d", module="conv")], options))
    model = graphpeft.apply(base, rules, example_inputs=example)
    if dora:
        with torch.no_grad():
            for name, param in model.adapters.named_parameters():
                if "lora_magnitude_vector" in name:
                    param.mul_(torch.linspace(0.5, 1.5, param.numel()))  # m̂ != 1, so the factor matters
    return model, example


def plain(model: graphpeft.GraphPeftModel, ids: torch.Tensor, image: torch.Tensor, dora: bool):
    """The adapted outputs with the scale on the full activations, straight from the parameters."""
    p = dict(model.adapters.named_parameters())
    base = model.base_model
    emb_a, emb_b = p["emb.lora_embedding_A.default"], p["emb.lora_embedding_B.default"]
    fc_a, fc_b = p["fc.lora_A.default"], p["fc.lora_B.default"]
    emb_delta = (F.embedding(ids, emb_a.t()) @ emb_b.t()) * SCALE
    if not dora:
        hidden = base.emb(ids) + emb_delta
        fc_out = base.fc(hidden) + F.linear(F.linear(hidden, fc_a), fc_b) * SCALE
        conv_a, conv_b = p["conv.lora_A.default"], p["conv.lora_B.default"]
        conv_out = base.conv(image) + F.conv2d(F.conv2d(image, conv_a, None, 1, 1), conv_b) * SCALE
        return fc_out, conv_out
    emb_norm = (base.emb.weight.t() + SCALE * (emb_b @ emb_a)).norm(dim=1).detach()
    hidden = (base.emb(ids) + emb_delta) * (p["emb.lora_magnitude_vector.default"] / emb_norm)
    fc_norm = (base.fc.weight + SCALE * (fc_b @ fc_a)).norm(dim=1).detach()
    fc_mag = p["fc.lora_magnitude_vector.default"] / fc_norm
    fc_delta = F.linear(F.linear(hidden, fc_a), fc_b) * SCALE
    fc_out = fc_mag * (F.linear(hidden, base.fc.weight) + fc_delta) + base.fc.bias
    return fc_out, base.conv(image)


def check_same_values_and_gradients(dora: bool) -> None:
    model, (ids, image) = adapted(dora)
    ours = model(ids, image)
    ours_loss = sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() for out in ours)
    ours_grads = torch.autograd.grad(ours_loss, list(model.adapters.parameters()))
    reference = plain(model, ids, image, dora)
    ref_loss = sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() for out in reference)
    ref_grads = torch.autograd.grad(ref_loss, list(model.adapters.parameters()), allow_unused=True)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for got, want in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_lora_graph_matches_the_plain_formula_on_embedding_linear_and_conv2d():
    check_same_values_and_gradients(dora=False)


def test_dora_graph_matches_the_plain_formula_on_embedding_and_linear():
    check_same_values_and_gradients(dora=True)
