"""Rule files and Rule objects: parsing, resolution, and the errors bad rules raise."""

import pytest

import graphpeft
from graphpeft.errors import MatchError, RuleError
from graphpeft.rules.builtin import builtin_rulesets, passes_dir
from graphpeft.rules.pattern import Pattern
from graphpeft.rules.rule import Rule
from graphpeft.rules.rule_set import RuleSet
from models import tiny_gpt2, tiny_llama
from toml_text import qv_lora_file

LLAMA_FILE = qv_lora_file(8, "alpha = 16", "dropout = 0.05", model_types=["llama"])


def test_builtin_rule_files_cover_the_architectures():
    types = {t for ruleset in builtin_rulesets() for t in ruleset.model_types}
    assert {"llama", "mistral", "qwen2", "gpt2", "bert", "roberta", "t5", "mt5", "opt"} <= types
    for ruleset in builtin_rulesets():
        names = set(ruleset.sites)
        assert {"o", "mlp_in", "mlp_out", "embed", "attention"} <= names, ruleset.source
        assert {"q", "v"} <= names or "qkv" in names, ruleset.source
        assert ruleset.rule("lora").method == "lora"


def test_rule_files_ship_inside_the_package():
    assert sorted(p.name for p in passes_dir().glob("*.toml")) == [
        "bert.toml",
        "gpt2.toml",
        "llama.toml",
        "opt.toml",
        "t5.toml",
    ]


def test_toml_and_python_rules_are_equivalent():
    parsed = RuleSet.from_toml_text(LLAMA_FILE).rules[0]
    written = Rule("lora", "lora", ("q", "v"), {"r": 8, "alpha": 16, "dropout": 0.05})
    assert parsed == written
    assert parsed.options["rslora"] is False
    assert parsed.options["init"] == "default"


def test_rule_file_path_applies_its_first_rule(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(LLAMA_FILE)
    model = graphpeft.apply(tiny_llama(), str(path))
    assert set(model.adapter_specs["default"].claims) == {
        f"model.layers.{i}.self_attn.{p}_proj:linear" for i in range(2) for p in "qv"
    }


def test_rule_name_resolves_through_model_type_and_overrides_apply():
    model = graphpeft.apply(tiny_gpt2(), "lora", r=2)
    claims = model.adapter_specs["default"].claims
    assert set(claims) == {"transformer.h.0.attn.c_attn:linear", "transformer.h.1.attn.c_attn:linear"}
    assert all(claim.options["r"] == 2 for _, claim in claims.values())


def test_pattern_keys_class_layers_and_exclude_select_sites():
    pattern = Pattern(op="linear", cls="Linear", layers=(1,), exclude=("*.mlp.*",))
    model = graphpeft.apply(tiny_llama(), Rule("some", "lora", (pattern,), {"r": 2}))
    assert set(model.adapter_specs["default"].claims) == {f"model.layers.1.self_attn.{p}_proj:linear" for p in "qkvo"}


def test_regex_must_match_the_whole_fqn():
    pattern = Pattern(op="linear", regex=r"model\.layers\.\d+\.mlp\.(up|down)_proj")
    model = graphpeft.apply(tiny_llama(), Rule("mlp", "lora", (pattern,)))
    assert len(model.adapter_specs["default"].claims) == 4


# ---------------------------------------------------------------------- errors


def assert_edit_is_refused(replace: str, by: str, message: str) -> None:
    """LLAMA_FILE with ``replace`` swapped for ``by`` is refused with a RuleError matching ``message``."""
    assert replace in LLAMA_FILE
    with pytest.raises(RuleError, match=message):
        RuleSet.from_toml_text(LLAMA_FILE.replace(replace, by))


def test_unknown_key_names_the_rule_the_key_and_the_closest_choice():
    assert_edit_is_refused("r = 8", "rank = 8", r"rule 'lora'.*unknown key 'rank'.*did you mean 'r'")


def test_bad_value_names_the_key_and_the_constraint():
    assert_edit_is_refused("r = 8", "r = 0", r"rule 'lora'.*'r' = 0 must be > 0")
    assert_edit_is_refused("dropout = 0.05", "dropout = 1.5", r"'dropout' = 1.5 must be in \[0, 1\)")
    assert_edit_is_refused("r = 8", 'r = "eight"', r"'r' must be int, got 'eight'")


def test_unknown_method_lists_the_closest_methods():
    assert_edit_is_refused('method = "lora"', 'method = "loar"', r"unknown method 'loar'.*did you mean 'lora'")


def test_unknown_site_name_lists_the_sites():
    assert_edit_is_refused('targets = ["q", "v"]', 'targets = ["qq"]', r"target 'qq' is not a site.*did you mean 'q'")


def test_unknown_op_and_pattern_key_are_errors():
    assert_edit_is_refused(
        'op = "linear", module = "*.self_attn.q_proj"',
        'op = "linaer"',
        r"op 'linaer' is unknown.*did you mean 'linear'",
    )
    assert_edit_is_refused(
        'module = "*.self_attn.q_proj"', 'modul = "x"', r"unknown pattern key 'modul'.*did you mean 'module'"
    )


def test_malformed_toml_and_bad_regex_are_rule_errors():
    with pytest.raises(RuleError, match="not valid TOML"):
        RuleSet.from_toml_text("[[rules]\nname=")
    with pytest.raises(RuleError, match="does not compile"):
        Pattern(regex="(")


def test_rule_matching_nothing_names_the_closest_fqns():
    rule = Rule("typo", "lora", (Pattern(op="linear", module="*.self_attn.q_prj"),))
    with pytest.raises(
        MatchError,
        match=r"(?s)rule 'typo' \(<python>\) matches no site.*closest FQNs model\.layers\.\d\.self_attn\.q_proj",
    ):
        graphpeft.apply(tiny_llama(), rule)


def test_two_rules_claiming_one_site_name_both_rules():
    first = Rule("first", "lora", (Pattern(op="linear", module="*.q_proj"),))
    second = Rule("second", "lora", (Pattern(op="linear", module="*.self_attn.*"),))
    with pytest.raises(
        MatchError, match=r"rules 'first' and 'second' both claim site model\.layers\.0\.self_attn\.q_proj"
    ):
        graphpeft.apply(tiny_llama(), [first, second])


def test_lora_on_an_attention_site_is_refused():
    rule = Rule("bad", "lora", (Pattern(op="attention", module="*.self_attn"),))
    with pytest.raises(MatchError, match="LoRA adapts linear, embedding, conv2d sites, not attention"):
        graphpeft.apply(tiny_llama(), rule)


def test_unknown_override_is_an_error():
    with pytest.raises(RuleError, match=r"override 'rank'.*did you mean 'r'"):
        graphpeft.apply(tiny_llama(), "lora", rank=4)


def test_unknown_rule_name_lists_the_rules():
    with pytest.raises(RuleError, match=r"no rule named 'lroa'.*did you mean 'lora'"):
        graphpeft.apply(tiny_llama(), "lroa")


def test_a_failed_apply_leaves_the_model_trainable_as_before():
    base = tiny_llama()
    with pytest.raises(MatchError):
        graphpeft.apply(base, Rule("none", "lora", (Pattern(op="linear", module="nothing"),)))
    assert all(p.requires_grad for p in base.parameters())
