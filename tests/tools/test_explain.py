"""graphpeft.explain (dry run) and GraphPeftModel.explain(): sites, rules, shapes, counts, misses."""

from __future__ import annotations

import pytest

import graphpeft
from graphpeft import Pattern, Rule
from graphpeft.runtime.explain_report import ExplainReport
from models import tiny_bert, tiny_llama
from shared_models import llama_with_lora

Q_AND_V = [f"model.layers.{i}.self_attn.{p}_proj:linear" for i in (0, 1) for p in ("q", "v")]


@pytest.fixture(scope="module")
def base():
    return tiny_llama()


@pytest.fixture(scope="module")
def dry(base) -> ExplainReport:
    return graphpeft.explain(base, "lora", r=4)


def test_explain_leaves_the_model_untouched(base, dry):
    assert all(p.requires_grad for p in base.parameters())
    assert not any("lora" in name for name, _ in base.named_parameters())
    assert not any("lora" in name for name, _ in base.named_modules())


def test_explain_lists_each_claimed_site_with_rule_and_method(dry):
    assert sorted(item.site.key for item in dry.sites) == sorted(Q_AND_V)
    assert {(item.rule, item.method, item.adapter) for item in dry.sites} == {("lora", "lora", "default")}


def test_explain_sizes_adapters_from_the_method_and_overrides(dry):
    q = next(item for item in dry.sites if item.site.key == Q_AND_V[0])
    v = next(item for item in dry.sites if item.site.key == Q_AND_V[1])
    assert q.shapes == {"lora_A": (4, 32), "lora_B": (32, 4)}
    assert v.shapes == {"lora_A": (4, 32), "lora_B": (16, 4)}  # 2 kv heads x 8 dims
    assert (q.params, v.params) == (256, 192)


def test_dry_run_counts_equal_the_applied_models_trainable_parameters(base):
    report = graphpeft.explain(base, "lora")
    assert report.adapter_params == llama_with_lora().get_nb_trainable_parameters()[0]


def test_summary_counts_sites_and_parameters_per_method(dry):
    assert dry.summary() == {"lora": {"rules": 1, "sites": 4, "params": 896}}


def test_optional_rule_that_matches_nothing_is_reported_not_raised(dry):
    (head,) = dry.unmatched
    assert (head.rule, head.method, head.required) == ("train_head", "train", False)
    assert dry.ok


@pytest.fixture(scope="module")
def troubled(base) -> ExplainReport:
    """One dry run with a typo rule and two rules that claim the same q_proj sites."""
    return graphpeft.explain(
        base,
        [
            Rule("typo", "lora", [Pattern(op="linear", module="*.self_attn.q_projj")]),
            Rule("first", "lora", [Pattern(op="linear", module="*.q_proj")]),
            Rule("second", "lora", [Pattern(op="linear", module="*.self_attn.*")]),
        ],
    )


def test_required_rule_that_matches_nothing_names_the_closest_fqns(troubled):
    (miss,) = troubled.unmatched
    assert miss.rule == "typo"
    assert miss.required
    assert not troubled.ok
    assert miss.closest[0] == "model.layers.0.self_attn.q_proj"
    assert "q_projj" in miss.message
    assert "closest FQNs" in troubled.text()


def test_two_rules_claiming_one_site_are_reported_with_both_names(troubled):
    (problem,) = troubled.problems
    assert "'first'" in problem
    assert "'second'" in problem
    assert "q_proj" in problem


def test_text_view_shows_tree_summary_rules_and_misses(dry):
    text = dry.text(width=140)
    assert "LlamaForCausalLM" in text
    assert "layers.0 (LlamaDecoderLayer)" in text
    assert "q_proj linear 32→32" in text
    assert "lora_A 4×32" in text
    assert "256 params" in text
    assert "Summary per method" in text
    assert "896" in text
    assert "train_head (train, optional)" in text


def test_model_explain_reports_the_adapters_it_has():
    model = llama_with_lora()
    report = model.explain()
    assert sorted(item.site.key for item in report.sites) == sorted(Q_AND_V)
    assert report.adapter_params == model.get_nb_trainable_parameters()[0]
    assert [u.rule for u in report.unmatched] == ["train_head"]


def test_summary_has_one_row_per_method():
    report = graphpeft.explain(tiny_bert(), "lora")
    summary = report.summary()
    assert set(summary) == {"lora", "train"}
    train = [item for item in report.sites if item.method == "train"]
    assert [item.site.fqn for item in train] == ["classifier"]
    assert train[0].shapes == {"modules_to_save.weight": (3, 32), "modules_to_save.bias": (3,)}
    assert summary["train"] == {"rules": 1, "sites": 1, "params": 99}
