"""LoRA on output slices of fused projections (GPT-2's c_attn, a Phi-3 style qkv_proj)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import fx, nn

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import MatchError, RuleError
from graphpeft.rewrite.claims import ADAPTER_NODE
from graphpeft.rewrite.sites import input_operand
from graphpeft.rules.rule_set import RuleSet
from models import batch, tiny_gpt2

D = 32  # tiny GPT-2 width: c_attn's output is [q | k | v], 32 columns each
C_ATTN = Pattern(op="linear", module="*.attn.c_attn", split={"q": D, "k": D, "v": D})


def qv_rule(**options) -> Rule:
    return Rule("qv", "lora", [C_ATTN], {"r": 4, "alpha": 8, "slices": ["q", "v"], "init": "random", **options})


class Recorder(fx.Interpreter):
    """Runs a graph and keeps the value of every node."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node) -> object:
        self.values[node] = super().run_node(node)
        return self.values[node]


def record(model: graphpeft.GraphPeftModel, inputs: dict) -> tuple[fx.GraphModule, dict]:
    kwargs = model._bind((), dict(inputs))
    gm = model.graph(**inputs)
    recorder = Recorder(gm)
    with torch.no_grad():
        recorder.run(*[kwargs[n.target] for n in gm.graph.nodes if n.op == "placeholder"])
    return gm, recorder.values


def site_nodes(gm: fx.GraphModule, key: str) -> tuple[fx.Node, fx.Node]:
    """(the site's own node, the node that replaced its output) for a sliced LoRA site."""
    roles = {n.meta[ADAPTER_NODE]["role"]: n for n in gm.graph.nodes if n.meta.get(ADAPTER_NODE, {}).get("site") == key}
    return roles["slice_k"].args[0], roles["lora_add"]


@pytest.fixture(scope="module")
def gpt2_qv():
    model = graphpeft.apply(tiny_gpt2(), qv_rule())
    gm, values = record(model, batch("gpt2"))
    return model, gm, values


def test_k_slice_of_c_attn_output_is_exactly_unchanged(gpt2_qv):
    _, gm, values = gpt2_qv
    site, out = site_nodes(gm, "transformer.h.0.attn.c_attn:linear")
    base, adapted = values[site], values[out]
    assert torch.equal(adapted[..., D : 2 * D], base[..., D : 2 * D])
    assert not torch.allclose(adapted[..., :D], base[..., :D])
    assert not torch.allclose(adapted[..., 2 * D :], base[..., 2 * D :])


def test_q_and_v_slices_match_hand_written_lora(gpt2_qv):
    model, gm, values = gpt2_qv
    site, out = site_nodes(gm, "transformer.h.0.attn.c_attn:linear")
    x = values[input_operand(site)]
    host = model.adapters.get_submodule("transformer.h.0.attn.c_attn")
    a, b = host.lora_A["default"], host.lora_B["default"]  # (r, 32), (64, r): rows for q then v
    delta = (x @ a.T @ b.T) * (8 / 4)
    expected = torch.cat(
        [
            values[site][..., :D] + delta[..., :D],
            values[site][..., D : 2 * D],
            values[site][..., 2 * D :] + delta[..., D:],
        ],
        -1,
    )
    assert b.shape == (2 * D, 4)
    torch.testing.assert_close(values[out], expected, atol=1e-5, rtol=0)


def test_merging_slices_changes_only_q_and_v_columns_and_keeps_logits(gpt2_qv):
    model = gpt2_qv[0]
    inputs = batch("gpt2")
    weight = model.base_model.transformer.h[0].attn.c_attn.weight  # Conv1D: (in, out)
    before = weight.detach().clone()
    with torch.no_grad():
        unmerged = model(**inputs).logits
        model.merge()
        try:
            merged = model(**inputs).logits
            assert torch.equal(weight[:, D : 2 * D], before[:, D : 2 * D])
            assert not torch.equal(weight[:, :D], before[:, :D])
        finally:
            model.unmerge()
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight, before, atol=1e-6, rtol=0)


class FusedQKV(nn.Module):
    """A Phi-3 style fused projection with grouped-query widths: q 32, k 16, v 16."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv_proj = nn.Linear(32, 64)

    def forward(self, x):
        return self.qkv_proj(x)


X = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
QKV = Pattern(module="qkv_proj", split={"q": 2, "k": 1, "v": 1})


def test_proportional_split_on_linear_qkv_matches_reference():
    module = FusedQKV()
    rule = Rule("qv", "lora", [QKV], {"r": 2, "alpha": 4, "slices": ["v", "q"], "init": "random"})
    model = graphpeft.apply(module, rule, example_inputs=(X,))
    a = model.adapters.qkv_proj.lora_A["default"]
    b = model.adapters.qkv_proj.lora_B["default"]  # rows: q (32) then v (16), in output order
    with torch.no_grad():
        base = module.qkv_proj(X)
        delta = X @ a.T @ b.T * 2.0
        expected = torch.cat([base[..., :32] + delta[..., :32], base[..., 32:48], base[..., 48:] + delta[..., 32:]], -1)
        torch.testing.assert_close(model(X), expected, atol=1e-5, rtol=0)


def apply_qkv(pattern: Pattern, slices: list[str]) -> graphpeft.GraphPeftModel:
    return graphpeft.apply(FusedQKV(), Rule("qv", "lora", [pattern], {"slices": slices}), example_inputs=(X,))


def test_slices_without_a_split_name_the_fix():
    with pytest.raises(MatchError, match=r"split = \{q = \.\.\."):
        apply_qkv(Pattern(module="qkv_proj"), ["q", "v"])


def test_unknown_slice_name_suggests_the_split_parts():
    with pytest.raises(MatchError, match="did you mean 'v'"):
        apply_qkv(QKV, ["q", "value"])


def test_split_that_does_not_fit_the_output_is_an_error():
    with pytest.raises(MatchError, match="neither sizes summing to the output width 64 nor proportions"):
        apply_qkv(Pattern(module="qkv_proj", split={"q": 32, "k": 16, "v": 15}), ["q"])


def test_split_and_slices_read_from_a_rule_file():
    ruleset = RuleSet.from_toml_text(
        '[sites]\nqkv = { module = "*.attn.c_attn", split = { q = 32, k = 32, v = 32 } }\n'
        '[[rules]]\nname = "qv"\nmethod = "lora"\ntargets = ["qkv"]\nslices = ["q", "v"]\n'
    )
    assert ruleset.sites["qkv"] == Pattern(module="*.attn.c_attn", split={"q": 32, "k": 32, "v": 32})
    assert ruleset.rules[0].options["slices"] == ("q", "v")
    with pytest.raises(RuleError, match="positive"):
        RuleSet.from_toml_text('[sites]\nqkv = { module = "x", split = { q = 0 } }\n')


def test_sliced_adapter_saves_and_loads_without_a_peft_config(tmp_path):
    model = graphpeft.apply(
        FusedQKV(), Rule("qv", "lora", [QKV], {"slices": ["q", "v"], "init": "random"}), example_inputs=(X,)
    )
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path / "qv")
    assert not (tmp_path / "qv" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "qv" / "graphpeft.json").read_text())["peft_compatible"] is False
    loaded = graphpeft.load(FusedQKV(), tmp_path / "qv", example_inputs=(X,))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, atol=1e-5, rtol=0)
