"""Near-miss diagnostics of rules that match nothing."""

from __future__ import annotations

import pytest

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.errors import MatchError
from graphpeft.rewrite.match import closest_fqns, no_match_message
from graphpeft.rules.rule_set import ResolvedRule
from graphpeft.runtime.model import GraphPeftModel
from models import tiny_llama


@pytest.fixture(scope="module")
def sites():
    return GraphPeftModel(tiny_llama()).sites()


def _message(pattern: Pattern, sites) -> str:
    rule = Rule("probe", "lora", [pattern])
    return no_match_message(ResolvedRule(rule, (("probe", pattern),)), sites)


def test_wrong_op_kind_names_the_kind_the_glob_finds(sites):
    message = _message(Pattern(op="linear", module="*.embed_tokens"), sites)
    assert "selects model.embed_tokens, but op kind there is embedding, not linear; set op = 'embedding'" in message


def test_layers_outside_the_model_name_the_layers_present(sites):
    message = _message(Pattern(op="linear", module="*.q_proj", layers=[7]), sites)
    assert "without layers = [7] it selects model.layers.0.self_attn.q_proj" in message
    assert "this model's layers there are 0, 1" in message


def test_closest_fqns_compare_the_globs_last_components_with_fqn_suffixes(sites):
    near = closest_fqns(Pattern(op="linear", module="*.attn.q_prj"), sites)
    assert near[0] == "model.layers.0.self_attn.q_proj"
    assert len(near) == len({fqn.split(".", 3)[-1] for fqn in near}), "one FQN per distinct module, not layer copies"


def test_apply_raises_the_hint_for_a_required_rule():
    rule = Rule("typo", "lora", [Pattern(op="linear", module="*.mlp.gate_prj")])
    with pytest.raises(MatchError, match=r"closest FQNs model\.layers\.0\.mlp\.gate_proj"):
        graphpeft.apply(tiny_llama(), rule)
