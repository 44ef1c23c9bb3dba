"""The error catalogue: every bad input fails fast with a graphpeft error that names the cause and
the fix, and leaves the model exactly as it was (parameters bit-identical, requires_grad flags
unchanged, no adapter left behind). The machinery is in ``tests/catalogue.py``; the hostile inputs
(attacker-made folders, regexes, paths, misuse) are in ``tests/test_hostile_*.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

import graphpeft
from catalogue import (
    RULES,
    Case,
    DataDependent,
    apply,
    case_test,
    edited,
    load,
    peft_config,
    q_rule,
    touch,
    unlink,
    wider_llama,
    without_manifest,
)
from graphpeft import Pattern, Rule
from graphpeft.errors import (
    AdapterError,
    CallError,
    LoadError,
    MatchError,
    RuleError,
    SaveError,
    TraceError,
)

# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
CASES = [
    # ---------------------------------------------------------------- rule files
    Case("malformed_toml", edited("r = 4", "r = = 4"), RuleError, "is not valid TOML"),
    Case("unclosed_table", edited("[[rules]]", "[[rules]"), RuleError, "is not valid TOML"),
    Case("missing_rule_file", lambda w: graphpeft.apply(w.base, str(w.tmp / "nope.toml")), RuleError, "cannot read rule file"),
    Case("unknown_method", edited('method = "lora"', 'method = "lorra"'), RuleError, "did you mean 'lora'"),
    Case("unknown_option_key", edited("r = 4", "rank = 4"), RuleError, "unknown key 'rank'"),
    Case("unknown_pattern_key", edited('module = "*.self_attn.q_proj"', 'modul = "*.self_attn.q_proj"'), RuleError, "did you mean 'module'"),
    Case("unknown_top_level_table", edited("[sites]", "[site]"), RuleError, "a rule file has [model], [sites] and [[rules]]"),
    Case("unknown_site_name", edited('targets = ["q", "v"]', 'targets = ["q", "vv"]'), RuleError, "'vv' is not a site (did you mean 'v'"),
    Case("unknown_op", edited('op = "linear", module = "*.self_attn.q_proj"', 'op = "lineer", module = "*.self_attn.q_proj"'), RuleError, "did you mean 'linear'"),
    Case("rank_zero", edited("r = 4", "r = 0"), RuleError, "'r' = 0 must be > 0"),
    Case("rank_negative", edited("r = 4", "r = -3"), RuleError, "must be > 0"),
    Case("rank_as_string", edited("r = 4", 'r = "4"'), RuleError, "key 'r' must be int"),
    Case("rank_as_float", edited("r = 4", "r = 4.0"), RuleError, "key 'r' must be int"),
    Case("alpha_as_bool", edited("r = 4", "alpha = true"), RuleError, "key 'alpha' must be int or float"),
    Case("dropout_out_of_range", edited("r = 4", "dropout = 1.5"), RuleError, "must be in [0, 1)"),
    Case("init_not_a_choice", edited("r = 4", 'init = "kaiming"'), RuleError, "choose one of 'default', 'gaussian', 'random'"),
    Case("targets_wrong_type", edited('targets = ["q", "v"]', "targets = 5"), RuleError, "'targets' must be a list"),
    Case("layers_wrong_type", edited('module = "*.self_attn.q_proj"', 'module = "*.self_attn.q_proj", layers = "0"'), RuleError, "pattern key 'layers' has the wrong type"),
    Case("layers_negative", edited('module = "*.self_attn.q_proj"', 'module = "*.self_attn.q_proj", layers = [-1]'), RuleError, "non-negative integers"),
    Case("glob_unbalanced", edited("*.self_attn.q_proj", "*.self_attn.[qk_proj"), RuleError, "unbalanced brackets"),
    Case("regex_does_not_compile", edited('module = "*.self_attn.q_proj"', 'regex = "model.(layers"'), RuleError, "does not compile"),
    Case("empty_pattern", edited('q = { op = "linear", module = "*.self_attn.q_proj" }', "q = {}"), RuleError, "needs at least one of op, module, regex, class or param"),
    Case("rule_missing_method", edited('method = "lora"\n', ""), RuleError, "missing key 'method'"),
    Case("rules_as_single_table", edited("[[rules]]", "[rules]"), RuleError, "write [[rules]]"),
    Case("duplicate_rule_names", lambda w: graphpeft.apply(w.base, w.rules(RULES + RULES.split("[sites]")[1].split("\n\n", 1)[1])), RuleError, "rule names must be unique"),
    Case("also_names_unknown_rule", edited("r = 4", 'r = 4\nalso = ["train_hed"]'), RuleError, "has no rule named 'train_hed'"),
    Case("file_without_rules", lambda w: graphpeft.apply(w.base, w.rules("[sites]\n")), RuleError, "add at least one rule"),
    Case("rule_name_after_hash_unknown", lambda w: graphpeft.apply(w.base, w.edit("r = 4", "r = 4") + "#lorra"), RuleError, "did you mean 'lora'"),
    Case("builtin_rule_name_unknown", apply("lroa"), RuleError, "did you mean 'lora'"),
    Case("rules_of_wrong_type", apply(42), RuleError, "rules must be a rule-file path"),
    Case("override_unknown_option", apply("lora", rank=16), RuleError, "override 'rank' is not an option"),
    Case("override_bad_value", apply("lora", r=0), RuleError, "must be > 0"),
    Case("python_rule_empty_targets", lambda w: graphpeft.apply(w.base, Rule("x", "lora", [])), RuleError, "'targets' is empty"),
    Case("python_pattern_bad_regex", lambda w: graphpeft.apply(w.base, Rule("x", "lora", Pattern(regex="("))), RuleError, "does not compile"),
    # ---------------------------------------------------------------- matching
    Case("rule_matches_nothing", edited("*.self_attn.q_proj", "*.self_atn.q_proj"), MatchError, "closest FQNs model.layers.0.self_attn.q_proj"),
    Case("two_rules_claim_one_site", apply([q_rule("a"), Rule("b", "lora", Pattern(op="linear", module="*.self_attn.*"))]), MatchError, "both claim site model.layers.0.self_attn.q_proj:linear"),
    Case("lora_on_attention_site", apply(Rule("x", "lora", Pattern(op="attention", module="*.self_attn"))), MatchError, "LoRA adapts linear, embedding, conv2d sites, not attention"),
    Case("train_on_linear_site", apply(Rule("x", "train", Pattern(op="linear", module="lm_head"))), MatchError, 'write the target as {op = "module"'),
    # ---------------------------------------------------------------- tracing
    Case("model_cannot_be_exported", lambda w: graphpeft.apply(w.custom, Rule("x", "lora", Pattern(op="linear", module="proj")), example_inputs=(torch.randn(2, 4),)), TraceError, "data-dependent Python control flow", make=DataDependent),
    Case("plain_module_without_example_inputs", lambda w: graphpeft.apply(w.custom, Rule("x", "lora", Pattern(op="linear", module="proj"))), TraceError, "pass example_inputs=", make=DataDependent),
    # ---------------------------------------------------------------- calls
    Case("call_with_misspelled_kwarg", lambda w: w.wrapped(input_idz=torch.ones(1, 4, dtype=torch.long)), CallError, "did you mean 'input_ids'"),
    Case("call_with_too_many_positionals", lambda w: w.wrapped(*[None] * 40), CallError, "positional inputs, got 40"),
    Case("call_with_use_cache", lambda w: w.wrapped(input_ids=torch.ones(1, 4, dtype=torch.long), use_cache=True), CallError, "use_cache=True is not supported"),
    Case("call_with_cache", lambda w: w.wrapped(input_ids=torch.ones(1, 4, dtype=torch.long), cache=object()), CallError, "use generate() for cached decoding"),
    # ---------------------------------------------------------------- adapter names
    Case("adapter_name_with_slash", apply("lora", adapter_name="a/b"), AdapterError, "may not contain '/'"),
    Case("adapter_name_dotdot", lambda w: w.wrapped.load_adapter(str(w.saved), ".."), AdapterError, "may not contain"),
    Case("adapter_name_traversal", lambda w: w.wrapped.load_adapter(str(w.saved), "../evil"), AdapterError, "may not contain"),
    Case("adapter_name_backslash", lambda w: graphpeft.load(w.base, str(w.saved), adapter_name="a\\b"), AdapterError, "may not contain"),
    Case("adapter_name_empty", apply("lora", adapter_name=""), AdapterError, "non-empty strings"),
    Case("adapter_name_taken", lambda w: w.wrapped.load_adapter(str(w.saved), "default"), AdapterError, "adapter 'default' already exists"),
    Case("set_unknown_adapter", lambda w: w.wrapped.set_adapter("defualt"), AdapterError, "did you mean 'default'"),
    # ---------------------------------------------------------------- loading
    Case("load_missing_directory", load(lambda w: w.tmp / "nowhere"), LoadError, "is not a directory"),
    Case("load_folder_without_adapter", load(lambda w: w.tmp), LoadError, "it is not an adapter directory"),
    Case("load_other_architecture", load(lambda w: w.other_arch), LoadError, "matches no site"),
    Case("load_peft_folder_of_other_architecture", load(lambda w: without_manifest(w.copy(w.other_arch))), LoadError, "is this adapter for another architecture"),
    Case("load_onto_wider_base", load(lambda w: w.saved), LoadError, "fingerprint mismatch", make=wider_llama),
    Case("load_peft_folder_onto_wider_base", load(lambda w: without_manifest(w.copy())), LoadError, "the adapter was made for a base model of another size", make=wider_llama),
    Case("load_missing_safetensors", load(lambda w: unlink(w.copy(), "adapter_model.safetensors")), LoadError, "adapter_model.safetensors is missing"),
    Case("load_truncated_safetensors", load(lambda w: w.file("adapter_model.safetensors", lambda b: b[: len(b) // 2])), LoadError, "it may be truncated or corrupted"),
    Case("load_corrupted_safetensors_header", load(lambda w: w.file("adapter_model.safetensors", lambda b: b"\xff" * 16 + b[16:])), LoadError, "it may be truncated or corrupted"),
    Case("load_manifest_not_json", load(lambda w: w.file("graphpeft.json", lambda b: b[:-20])), LoadError, "is not valid JSON"),
    Case("load_manifest_from_future", load(lambda w: w.manifest(lambda d: d.update(format_version=99))), LoadError, "upgrade graphpeft"),
    Case("load_manifest_of_other_format", load(lambda w: w.manifest(lambda d: d.update(format="something-else"))), LoadError, "is not a graphpeft manifest"),
    Case("load_manifest_missing_rules", load(lambda w: w.manifest(lambda d: d.pop("rules"))), LoadError, "is malformed"),
    Case("load_manifest_with_unknown_method", load(lambda w: w.manifest(lambda d: d["rules"][0].update(method="lorra"))), LoadError, "holds an invalid rule"),
    Case("load_tampered_fingerprint", load(lambda w: w.manifest(lambda d: d["model"].update(fingerprint="0" * 64))), LoadError, "fingerprint mismatch"),
    Case("load_tensor_missing", load(lambda w: w.tensors(lambda t: t.pop(min(t)))), LoadError, "lacks tensor"),
    Case("load_extra_tensor", load(lambda w: w.tensors(lambda t: t.update({"base_model.model.extra.lora_A.weight": torch.zeros(2, 2)}))), LoadError, "holds tensors no site of this model takes"),
    Case("load_tensor_of_wrong_shape", load(lambda w: w.tensors(lambda t: t.update({min(t): torch.zeros(5, 32)}))), LoadError, "(config r=4, tensors r=5)"),
    Case("load_unsupported_peft_type", load(lambda w: peft_config(without_manifest(w.copy()), peft_type="LOHA")), LoadError, "'LOHA' is not supported"),
    # ---------------------------------------------------------------- saving
    Case("save_over_existing_adapter", lambda w: w.wrapped.save_pretrained(str(w.saved)), SaveError, "pass overwrite=True"),
    Case("save_onto_a_file", lambda w: w.wrapped.save_pretrained(str(touch(w.tmp / "file"))), SaveError, "it exists and is not a directory"),
    Case("save_under_a_file", lambda w: w.wrapped.save_pretrained(str(touch(w.tmp / "file") / "adapter")), SaveError, "choose a writable directory"),
    Case("save_under_proc", lambda w: w.wrapped.save_pretrained("/proc/graphpeft-test/adapter"), SaveError, "choose a writable directory"),
    Case("save_unknown_adapter", lambda w: w.wrapped.save_pretrained(str(w.tmp / "out"), adapter_names=["nope"]), AdapterError, "no adapter named 'nope'"),
    Case("save_unknown_keyword", lambda w: w.wrapped.save_pretrained(str(w.tmp / "out"), max_shard_size="1GB"), CallError, "max_shard_size"),
]
# fmt: on


def test_catalogue_has_at_least_a_hundred_and_twenty_cases():
    hostile = sorted(Path(__file__).parent.glob("test_hostile_*.py"))
    names = [c.name for c in CASES]
    for path in hostile:
        names += [c.name for c in importlib.import_module(path.stem).CASES]
    assert len(names) >= 120
    assert len(set(names)) == len(names), "case names are unique across the catalogue"


test_bad_input_raises_named_error_and_leaves_model_unchanged = case_test(CASES)
