"""Parameter sites: x @ W through any op or function, where W is a parameter or a view of one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import MatchError, RuleError
from graphpeft.rewrite.sites import graph_sites
from graphpeft.runtime.model import GraphPeftModel
from models import tiny_gpt2

X = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))


class Functional(nn.Module):
    """Weights used through functional calls only: mm on an (in, out) weight, linear on a
    transposed view of one, and bmm on a stack of per-group weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w_in_out = nn.Parameter(torch.randn(6, 5))  # used as x @ W: W is (in, out)
        self.w_stored_t = nn.Parameter(torch.randn(5, 4))  # used as linear(h, W.t()): operand (out, in) = (4, 5)
        self.stack = nn.Parameter(torch.randn(2, 4, 3))  # used as bmm(h, stack): per-group (in, out)

    def forward(self, x):
        h = torch.mm(x, self.w_in_out)
        h = F.linear(h, self.w_stored_t.t())
        return torch.bmm(torch.stack([h, 2 * h]), self.stack)


def sites_of(module: nn.Module) -> dict[str, object]:
    return {s.key: s for s, _ in graph_sites(GraphPeftModel(module, example_inputs=(X,))._base_graph())}


def test_functional_weights_are_matmul_sites_with_the_ops_orientation():
    sites = sites_of(Functional())
    mm, linear, bmm = sites[":matmul"], sites[":matmul#1"], sites[":matmul#2"]
    assert (mm.weight, mm.in_features, mm.out_features, mm.view) == ("w_in_out", 6, 5, ())
    assert (linear.weight, linear.in_features, linear.out_features) == ("w_stored_t", 5, 4)
    assert linear.view == (("aten.t.default", ()),)
    assert (bmm.weight, bmm.experts, bmm.in_features, bmm.out_features) == ("stack", 2, 4, 3)


def test_lora_on_functional_weights_matches_hand_written_reference():
    module = Functional()
    model = graphpeft.apply(
        module, Rule("all", "lora", [Pattern(param="*")], {"r": 2, "alpha": 4, "init": "random"}), example_inputs=(X,)
    )
    lora = {
        name: (
            model.adapters.get_submodule(name).lora_A["default"],
            model.adapters.get_submodule(name).lora_B["default"],
        )
        for name in ("w_in_out", "w_stored_t", "stack")
    }
    with torch.no_grad():
        (a1, b1), (a2, b2), (a3, b3) = lora.values()
        h = X @ module.w_in_out + 2.0 * (X @ a1.T @ b1.T)
        h = h @ module.w_stored_t + 2.0 * (h @ a2.T @ b2.T)
        stacked = torch.stack([h, 2 * h])
        expected = stacked @ module.stack + 2.0 * (stacked @ a3.transpose(1, 2) @ b3.transpose(1, 2))
        torch.testing.assert_close(model(X), expected, atol=1e-5, rtol=0)
        assert a3.shape == (2, 2, 4)
        assert b3.shape == (2, 3, 2)


def test_merging_functional_weights_writes_through_their_views():
    module = Functional()
    model = graphpeft.apply(
        module, Rule("all", "lora", [Pattern(param="*")], {"r": 3, "init": "random"}), example_inputs=(X,)
    )
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    with torch.no_grad():
        unmerged = model(X)
        model.merge()
        torch.testing.assert_close(model(X), unmerged, atol=1e-5, rtol=0)
        model.unmerge()
    for name, param in module.named_parameters():
        torch.testing.assert_close(param, before[name], atol=1e-5, rtol=0)


def test_param_pattern_selects_by_parameter_fqn():
    rule = Rule("one", "lora", [Pattern(param="w_stored_*")], {"r": 2})
    model = graphpeft.apply(Functional(), rule, example_inputs=(X,))
    assert [s.key for s, _ in model.adapter_specs["default"].claims.values()] == [":matmul#1"]


def test_param_pattern_matching_nothing_is_a_match_error():
    with pytest.raises(MatchError, match=r"matches no site(.|\n)*closest parameters read by any ops: w_stored_t"):
        graphpeft.apply(Functional(), Rule("none", "lora", [Pattern(param="w_stored")]), example_inputs=(X,))


def test_dora_on_a_parameter_site_names_the_fix():
    with pytest.raises(MatchError, match="set dora = false"):
        graphpeft.apply(
            Functional(), Rule("d", "lora", [Pattern(param="w_in_out")], {"dora": True}), example_inputs=(X,)
        )


def test_param_and_split_keys_round_trip_through_dicts():
    pattern = Pattern(op="grouped_mm", param=["*.gate_up_proj", "*.down_proj"], split={"gate": 1, "up": 1})
    assert Pattern.from_dict(pattern.to_dict(), "test") == pattern
    with pytest.raises(RuleError, match=r"unknown pattern key 'params'.*did you mean 'param'"):
        Pattern.from_dict({"params": "*.w"}, "test")


def test_module_sites_keep_their_keys_and_adapter_paths():
    sites = [s for s, _ in graph_sites(GraphPeftModel(tiny_gpt2())._base_graph())]
    assert {s.op for s in sites} == {"linear", "embedding", "attention"}
    assert all(s.host == s.fqn for s in sites)
    assert "transformer.h.1.attn.c_attn:linear" in {s.key for s in sites}
