"""Hostile rule files, patterns and option values (issue #15): catastrophic regexes and globs from every place
a pattern comes from (on RE2, and on the backtracking engine that lookarounds and backreferences need), regexes
refused as written, over-long patterns, deep and huge TOML, non-finite numbers,
bools where numbers go, duplicate names, ``also`` cycles and chains, optional rules matching nothing.
Each case must fail fast with a graphpeft error and leave every model as it was (``tests/catalogue.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import graphpeft
from catalogue import RULES, Case, apply, case_test, edited, load, peft_config, q_rule, without_manifest
from graphpeft import Pattern, Rule, RuleSet
from graphpeft.errors import LoadError, MatchError, RuleError
from graphpeft.rules.rule_files import MAX_RULE_FILE_BYTES
from models import tiny_llama
from time_limits import watchdog

Q_SITE = 'module = "*.self_attn.q_proj"'
HANG = 30.0  # seconds: Python's backtracking would run for hours on these


def peft_folder(w, **changes) -> Path:
    """The saved adapter as a plain PEFT folder (no manifest) with ``changes`` in adapter_config.json."""
    return peft_config(without_manifest(w.copy()), **changes)


def ia3_folder(w, **config) -> Path:
    folder = without_manifest(w.copy())
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", **config}))
    return folder


def manifest_target(w, **changes) -> Path:
    return w.manifest(lambda d: d["rules"][0]["targets"][0].update(changes))


def rule_file(text: str):
    return lambda w: graphpeft.apply(w.base, w.rules(text))


def chained_rules(count: int) -> str:
    """``count`` optional rules matching nothing, each naming the next in ``also``."""
    rules = [
        f'[[rules]]\nname = "r{i}"\nmethod = "lora"\ntargets = ["nothing"]\nrequired = false\nalso = ["r{i + 1}"]\n'
        for i in range(count - 1)
    ]
    rules.append(f'[[rules]]\nname = "r{count - 1}"\nmethod = "lora"\ntargets = ["nothing"]\nrequired = false\n')
    return '[sites]\nnothing = { op = "linear", module = "*.no_such_proj" }\n\n' + "\n".join(rules)


def many_rules(count: int) -> str:
    return RULES + "".join(f'\n[[rules]]\nname = "lora{i}"\nmethod = "lora"\ntargets = ["q"]\n' for i in range(count))


class UnicodeNamed(nn.Module):
    """A linear layer whose module name is not ASCII ('层')."""

    def __init__(self):
        super().__init__()
        self.add_module("层", nn.Linear(4, 4))

    def forward(self, x):
        return self.层(x)


def on_custom(make_rule):
    return lambda w: graphpeft.apply(w.custom, make_rule(), example_inputs=(torch.randn(2, 4),))


def write_bytes(w, data: bytes) -> str:
    path = w.tmp / "rules.toml"
    path.write_bytes(data)
    return str(path)


def symlink_to_dev_zero(w) -> str:
    path = w.tmp / "zero.toml"
    path.symlink_to("/dev/zero")
    return str(path)


# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
CASES = [
    # ------------------------------------------------ catastrophic regexes and globs, from every source
    Case("rule_file_regex_catastrophic_backtracking", edited(Q_SITE, "regex = '(.+)+!'"), MatchError, "matches no site", timeout=HANG),
    Case("rule_file_glob_of_many_stars", edited("*.self_attn.q_proj", "*a*a*a*a*a*a*a*a*a*a*a*b"), MatchError, "matches no site", timeout=HANG),
    Case("python_pattern_regex_catastrophic_backtracking", apply(lambda w: Rule("x", "lora", Pattern(op="linear", regex=r"(\w+\.?)+!"))), MatchError, "matches no site", timeout=HANG),
    Case("peft_target_modules_regex_catastrophic_backtracking", load(lambda w: peft_folder(w, target_modules="(.+)+!")), LoadError, "selects no linear/embedding/conv2d module", timeout=HANG),
    Case("peft_exclude_modules_regex_catastrophic_backtracking", load(lambda w: peft_folder(w, target_modules=".*_proj", exclude_modules="(.+)+!")), LoadError, "lacks tensor", timeout=HANG),
    Case("peft_rank_pattern_key_catastrophic_backtracking", load(lambda w: peft_folder(w, rank_pattern={"((.+)+!|q_proj)": 8})), LoadError, "(config r=8, tensors r=4)", timeout=HANG),
    Case("manifest_rule_regex_catastrophic_backtracking", load(lambda w: manifest_target(w, regex="(.+)+!")), LoadError, "matches no site", timeout=HANG),
    # ------------------------------------------------ regexes that need backtracking (lookarounds, backreferences, ...):
    # they run on the regex module; a catastrophic one is refused once it spends 0.25 s of CPU time on a name
    Case("rule_file_regex_backreference_catastrophic_backtracking", edited(Q_SITE, r"regex = '(?:(.)|..|...)+\1\d'"), RuleError, "backtracks catastrophically", timeout=HANG),
    Case("rule_file_regex_lookbehind_catastrophic_backtracking", edited(Q_SITE, "regex = '(.|..|...)+(?<=!)'"), RuleError, "takes more than 0.25 s of CPU time on name", timeout=HANG),
    Case("python_pattern_regex_possessive_catastrophic_backtracking", apply(lambda w: Rule("x", "lora", Pattern(op="linear", regex=r"(.|..|...)+\d++"))), RuleError, "it uses a possessive quantifier, so it runs on a backtracking engine", timeout=HANG),
    Case("python_pattern_regex_conditional_catastrophic_backtracking", apply(lambda w: Rule("x", "lora", Pattern(op="linear", regex=r"((.)|..|...)+(?(2)\d|!)"))), RuleError, "backtracks catastrophically", timeout=HANG),
    Case("peft_target_modules_lookahead_catastrophic_backtracking", load(lambda w: peft_folder(w, target_modules=r"(?!.*vision)(.|..|...)+\d")), LoadError, "target_modules '(?!.*vision)(.|..|...)+\\\\d' takes more than", timeout=HANG),
    Case("peft_exclude_modules_lookbehind_catastrophic_backtracking", load(lambda w: peft_folder(w, target_modules=".*_proj", exclude_modules="(.|..|...)+(?<=!)")), LoadError, "backtracks catastrophically", timeout=HANG),
    Case("peft_alpha_pattern_key_lookbehind_catastrophic_backtracking", load(lambda w: peft_folder(w, alpha_pattern={"(.|..|...)+(?<=!)": 16})), LoadError, "backtracks catastrophically", timeout=HANG),
    Case("peft_feedforward_modules_backreference_catastrophic_backtracking", load(lambda w: ia3_folder(w, target_modules=["q_proj"], feedforward_modules=r"(?:(.)|..|...)+\1\d")), LoadError, "feedforward_modules '(?:(.)|..|...)+\\\\1\\\\d' takes more than", timeout=HANG),
    Case("manifest_rule_regex_lookahead_catastrophic_backtracking", load(lambda w: manifest_target(w, regex=r"(?!.*vision)(.|..|...)+(?>\d)")), LoadError, "backtracks catastrophically", timeout=HANG),
    # ------------------------------------------------ regexes refused as they are written, and over-long ones
    Case("rule_file_regex_lookbehind_of_no_fixed_width", edited(Q_SITE, r"regex = '.*(?<!vision|audio)\.q_proj'"), RuleError, "look-behind requires fixed-width pattern"),
    Case("rule_file_regex_verbose_lookahead", edited(Q_SITE, "regex = '(?x) (?!.*mlp) .*q_proj'"), RuleError, "uses verbose mode (?x), which graphpeft does not read"),
    Case("peft_target_modules_lookahead_with_a_million_unrolled_pieces", load(lambda w: peft_folder(w, target_modules="(?=m)(a{1000}){1000}")), LoadError, "spells counted repeats out: 1000001 pieces", timeout=HANG),
    Case("python_pattern_regex_repeat_count_over_re2_limit", apply(lambda w: Rule("x", "lora", Pattern(op="linear", regex="q{1001}"))), RuleError, "repeats a piece more than 1000 times"),
    Case("rule_file_regex_too_long", edited(Q_SITE, f"regex = '{'a' * 5000}'"), RuleError, "patterns are limited to 4096 characters"),
    Case("rule_file_glob_too_long", edited("*.self_attn.q_proj", "*" + "a" * 5000), RuleError, "patterns are limited to 4096 characters"),
    Case("peft_target_modules_regex_too_long", load(lambda w: peft_folder(w, target_modules="a" * 5000)), LoadError, "patterns are limited to 4096 characters"),
    Case("regex_class_escape_on_unicode_module_name", on_custom(lambda: Rule("x", "lora", Pattern(op="linear", regex=r"\w+"))), RuleError, "outside printable ASCII", make=UnicodeNamed),
    # ------------------------------------------------ deep and huge rule files
    Case("rule_file_arrays_nested_too_deeply", rule_file(RULES + "x = " + "[" * 100_000 + "]" * 100_000 + "\n"), RuleError, "nested too deeply"),
    Case("rule_file_tables_nested_too_deeply", rule_file(RULES + "x = " + "{a = " * 100_000 + "1" + "}" * 100_000 + "\n"), RuleError, "nested too deeply"),
    Case("rule_file_larger_than_a_mebibyte", rule_file(RULES + "# " + "x" * (1 << 20) + "\n"), RuleError, "is larger than 1 MiB"),
    Case("rule_file_with_fifty_thousand_rules", rule_file(many_rules(50_000)), RuleError, "is larger than 1 MiB"),
    Case("rule_file_endless", lambda w: graphpeft.apply(w.base, symlink_to_dev_zero(w)), RuleError, "is larger than 1 MiB"),
    Case("rule_file_not_utf8", lambda w: graphpeft.apply(w.base, write_bytes(w, b"\xff\xfe" + RULES.encode("utf-16-le"))), RuleError, "is not UTF-8 text"),
    Case("rule_file_option_value_huge_list", edited("r = 4", "r = [" + "1, " * 100_000 + "1]"), RuleError, "key 'r' must be int"),
    Case("rule_file_rule_name_too_long", edited('name = "lora"', f'name = "{"l" * 5000}"'), RuleError, "at most 128 characters"),
    # ------------------------------------------------ non-finite numbers, bools where numbers go
    Case("rule_file_alpha_inf", edited("r = 4", "r = 4\nalpha = inf"), RuleError, "key 'alpha' = inf must be a finite number"),
    Case("rule_file_alpha_nan", edited("r = 4", "r = 4\nalpha = nan"), RuleError, "key 'alpha' = nan must be a finite number"),
    Case("rule_file_split_proportion_inf", edited(Q_SITE, Q_SITE + ", split = { a = inf, b = 1 }"), RuleError, "must be a finite"),
    Case("python_rule_alpha_inf", apply(lambda w: q_rule(alpha=float("inf"))), RuleError, "key 'alpha' = inf must be a finite number"),
    Case("python_rule_scaling_nan", apply(lambda w: Rule("x", "bottleneck", Pattern(op="linear", module="*.down_proj"), {"scaling": float("nan")})), RuleError, "key 'scaling' = nan must be a finite number"),
    Case("override_alpha_negative_inf", apply("lora", alpha=float("-inf")), RuleError, "must be a finite number"),
    Case("rule_file_bool_option_as_int", edited("r = 4", "r = 4\nrslora = 1"), RuleError, "key 'rslora' must be bool, got 1 (int)"),
    Case("rule_file_bool_option_as_string", edited("r = 4", 'r = 4\ndora = "false"'), RuleError, "key 'dora' must be bool"),
    Case("python_rule_required_as_string", apply(lambda w: Rule("x", "lora", Pattern(op="linear", module="*.q_proj"), required="false")), RuleError, "'required' must be True or False"),
    Case("python_rule_options_not_a_mapping", apply(lambda w: Rule("x", "lora", Pattern(op="linear", module="*.q_proj"), 5)), RuleError, "options must be a mapping"),
    Case("python_pattern_module_not_a_string", apply(lambda w: Rule("x", "lora", Pattern(module=5))), RuleError, "pattern key 'module' must be a glob"),
    # ------------------------------------------------ duplicate names, also cycles and chains, empty adapters
    Case("python_rule_list_duplicate_names", apply(lambda w: [q_rule("a"), Rule("a", "lora", Pattern(op="linear", module="*.v_proj"))]), RuleError, "rule names must be unique; 'a' appears more than once"),
    Case("python_ruleset_duplicate_names", apply(lambda w: RuleSet((), {}, (q_rule("a"), q_rule("a")))), RuleError, "rule names must be unique"),
    Case("manifest_duplicate_rule_names", load(lambda w: w.manifest(lambda d: d["rules"].append(dict(d["rules"][0])))), LoadError, "rule names must be unique"),
    Case("also_names_its_own_rule", edited("r = 4", 'r = 4\nalso = ["lora"]'), RuleError, "'also' forms a cycle ('lora' -> 'lora')"),
    Case("also_cycle_of_two_rules", rule_file(RULES.replace("r = 4", 'r = 4\nalso = ["b"]') + '\n[[rules]]\nname = "b"\nmethod = "lora"\ntargets = ["v"]\nalso = ["lora"]\n'), RuleError, "'also' forms a cycle ('lora' -> 'b' -> 'lora')"),
    Case("also_chain_ten_thousand_deep", rule_file(chained_rules(10_000)), MatchError, "would have no sites"),
    Case("optional_only_rule_file_matches_nothing", rule_file(RULES.replace("r = 4", "r = 4\nrequired = false").replace("_proj", "_prj")), MatchError, "adapter 'default' would have no sites"),
    Case("python_optional_rule_matches_nothing", apply(lambda w: Rule("x", "lora", Pattern(op="linear", module="*.qq_proj"), required=False)), MatchError, "closest FQNs model.layers.0.self_attn.q_proj"),
]
# fmt: on


test_hostile_input_raises_named_error_and_leaves_model_unchanged = case_test(CASES)


# ---------------------------------------------------------------------- behaviours that must work (not errors)


def test_fifty_thousand_python_rules_resolve_in_linear_time():
    rules = [
        Rule(f"r{i}", "lora", Pattern(op="linear", module="*.q_proj"), also=(f"r{i + 1}",) if i < 49_999 else ())
        for i in range(50_000)
    ]
    with watchdog(60):
        ruleset = RuleSet((), {}, tuple(rules))
        chain = ruleset.with_also(ruleset.rules[0])
    assert [rule.name for rule in chain] == [rule.name for rule in rules]


def test_rule_file_of_ten_thousand_chained_rules_resolves_in_linear_time(tmp_path):
    text = chained_rules(10_000)
    assert len(text) < MAX_RULE_FILE_BYTES
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with watchdog(60):
        ruleset = RuleSet.from_toml(path)
        chain = ruleset.with_also(ruleset.rules[0])
    assert len(chain) == 10_000


def test_explain_reports_an_optional_rule_that_matches_nothing_instead_of_raising(catalogue_world):
    rule = Rule("x", "lora", Pattern(op="linear", module="*.qq_proj"), required=False)
    report = graphpeft.explain(catalogue_world[0], rule)
    assert [item.rule for item in report.unmatched] == ["x"]
    assert not report.sites
    assert not report.ok
    assert "would have no sites" in report.problems[0]


# what the catalogue refused before the backtracking engine (issue #15 follow-up): lookarounds and backreferences work


@pytest.mark.parametrize(
    "regex", [r".*(?<!self_attn)\.(?!gate)\w+_proj", r"(model)\.layers\.0\.(?!\1)\w+\.(up|down)_proj"]
)
def test_rule_regex_with_a_lookaround_or_backreference_selects_the_sites_python_selects(regex, catalogue_world):
    base = catalogue_world[0]
    report = graphpeft.explain(base, Rule("x", "lora", Pattern(op="linear", regex=regex)))
    expected = {
        name for name, module in base.named_modules() if isinstance(module, nn.Linear) and re.fullmatch(regex, name)
    }
    assert (
        {item.site.fqn for item in report.sites}
        == expected
        == {"model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"}
    )


def test_adapter_of_a_rule_with_a_lookahead_regex_saves_and_loads_its_sites(tmp_path):
    rule = Rule("lora", "lora", Pattern(op="linear", regex=r"(?!.*mlp).*\.[qv]_proj"), {"r": 4})
    saved = graphpeft.apply(tiny_llama(layers=1), rule, init="random")
    saved.save_pretrained(str(tmp_path))
    loaded = graphpeft.load(tiny_llama(layers=1), str(tmp_path))
    fqns = sorted(site.fqn for site, _ in loaded.adapter_specs["default"].claims.values())
    assert fqns == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    adapter_tensors = {k: v for k, v in saved.state_dict().items() if ".lora_" in k}
    assert len(adapter_tensors) == 4
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter_tensors.items())
