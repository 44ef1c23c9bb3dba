"""LoRA on nn.MultiheadAttention, whose weights are used through F.multi_head_attention_forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphpeft
from graphpeft import Pattern, Rule

E, R, ALPHA = 16, 4, 8
SCALE = ALPHA / R
X = torch.randn(2, 5, E, generator=torch.Generator().manual_seed(0))


class Block(nn.Module):
    """Self-attention (q = k = v: one linear on in_proj_weight) or cross-attention (k = v != q:
    in_proj_weight is split into a q view and a kv view, each fed to its own linear)."""

    def __init__(self, cross: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.cross = cross
        self.memory = nn.Linear(E, E)
        self.attn = nn.MultiheadAttention(E, 4, batch_first=True)

    def forward(self, x):
        kv = self.memory(x) if self.cross else x
        return self.attn(x, kv, kv, need_weights=False)[0]


IN_AND_OUT = Rule(
    "mha",
    "lora",
    [Pattern(param="attn.in_proj_weight"), Pattern(param="attn.out_proj.weight")],
    {"r": R, "alpha": ALPHA},
)


def peft_mha(block: Block):
    """PEFT's lora.MultiheadAttention on ``block.attn`` with a random in_proj update, and its (A, B).

    Its out_proj update is zeroed: PEFT 0.21.2's ``MultiheadAttention.merge`` adds the out_proj
    delta to the weight and then calls ``out_proj.merge``, which adds it a second time, so
    out_proj is compared with a hand-written reference instead.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["attn"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(block), config)
    layer = peft_model.base_model.model.attn
    with torch.no_grad():
        layer.base_layer.out_proj.lora_B["default"].weight.zero_()
    return peft_model, (layer.lora_A["default"].weight, layer.lora_B["default"].weight)


def reference_block(model: graphpeft.GraphPeftModel, block: Block, updates: dict[str, tuple]) -> Block:
    """A copy of ``block`` with ``scale · B A`` of each adapter host added to the given rows of a weight."""
    reference = copy.deepcopy(block)
    with torch.no_grad():
        for host, (name, rows) in updates.items():
            adapters = model.adapters.get_submodule(host)
            reference.get_parameter(name)[rows] += SCALE * adapters.lora_B["default"] @ adapters.lora_A["default"]
    return reference


def set_lora(model: graphpeft.GraphPeftModel, host: str, a: torch.Tensor, b: torch.Tensor) -> None:
    module = model.adapters.get_submodule(host)
    with torch.no_grad():
        module.lora_A["default"].copy_(a)
        module.lora_B["default"].copy_(b)


def test_self_attention_sites_are_in_proj_and_out_proj_with_their_own_adapters():
    model = graphpeft.apply(Block(), IN_AND_OUT, example_inputs=(X,))
    sites = sorted((s.key, s.host) for s, _ in model.adapter_specs["default"].claims.values())
    assert sites == [("attn:linear", "attn.in_proj_weight"), ("attn:linear#1", "attn.out_proj")]


def test_self_attention_in_and_out_proj_lora_match_hand_written_reference():
    block = Block()
    model = graphpeft.apply(block, IN_AND_OUT, example_inputs=(X,), init="random")
    reference = reference_block(
        model,
        block,
        {
            "attn.in_proj_weight": ("attn.in_proj_weight", slice(None)),
            "attn.out_proj": ("attn.out_proj.weight", slice(None)),
        },
    )
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), atol=1e-5, rtol=0)


def test_self_attention_lora_matches_peft_multihead_attention():
    block = Block()
    peft_model, in_ab = peft_mha(block)
    model = graphpeft.apply(block, IN_AND_OUT, example_inputs=(X,))  # out_proj B starts at zero, like PEFT's here
    set_lora(model, "attn.in_proj_weight", *in_ab)
    with torch.no_grad():
        torch.testing.assert_close(model(X), peft_model(X), atol=1e-5, rtol=0)


def test_cross_attention_views_of_in_proj_match_peft_multihead_attention():
    block = Block(cross=True)
    peft_model, (a, b) = peft_mha(block)
    model = graphpeft.apply(block, IN_AND_OUT, example_inputs=(X,))
    sites = sorted(s.key for s, _ in model.adapter_specs["default"].claims.values())
    assert sites == ["attn:linear", "attn:matmul", "attn:matmul#1"]  # out_proj; q view; kv view
    set_lora(model, "attn.in_proj_weight", a, b[:E])  # PEFT's one update, split as the graph splits the weight
    set_lora(model, "attn.in_proj_weight_1", a, b[E:])
    with torch.no_grad():
        torch.testing.assert_close(model(X), peft_model(X), atol=1e-5, rtol=0)


def test_cross_attention_lora_merges_through_the_split_view():
    block = Block(cross=True)
    model = graphpeft.apply(block, IN_AND_OUT, example_inputs=(X,), init="random")
    reference = reference_block(
        model,
        block,
        {
            "attn.in_proj_weight": ("attn.in_proj_weight", slice(0, E)),
            "attn.in_proj_weight_1": ("attn.in_proj_weight", slice(E, 3 * E)),
            "attn.out_proj": ("attn.out_proj.weight", slice(None)),
        },
    )
    with torch.no_grad():
        expected = reference(X)
        torch.testing.assert_close(model(X), expected, atol=1e-5, rtol=0)
        model.merge()
        torch.testing.assert_close(block.attn.in_proj_weight, reference.attn.in_proj_weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(block.attn.out_proj.weight, reference.attn.out_proj.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(X), expected, atol=1e-5, rtol=0)


def test_q_and_v_slices_of_in_proj_match_hand_written_reference():
    block = Block()
    thirds = Pattern(param="attn.in_proj_weight", split={"q": 1, "k": 1, "v": 1})
    rule = Rule("qv", "lora", [thirds], {"r": R, "alpha": ALPHA, "slices": ["q", "v"], "init": "random"})
    model = graphpeft.apply(block, rule, example_inputs=(X,))
    adapters = model.adapters.get_submodule("attn.in_proj_weight")
    a, b = adapters.lora_A["default"], adapters.lora_B["default"]
    reference = copy.deepcopy(block)
    with torch.no_grad():
        delta = SCALE * b @ a  # (2E, E): q rows then v rows
        reference.attn.in_proj_weight[:E] += delta[:E]
        reference.attn.in_proj_weight[2 * E :] += delta[E:]
        torch.testing.assert_close(model(X), reference(X), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cross", [False, True])
def test_save_and_load_round_trips_multihead_attention_adapters(tmp_path, cross):
    model = graphpeft.apply(Block(cross), IN_AND_OUT, example_inputs=(X,), init="random")
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path / "mha")
    loaded = graphpeft.load(Block(cross), tmp_path / "mha", example_inputs=(X,))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-6, rtol=0)
