"""Regexes that need a backtracking engine (lookarounds, backreferences, atomic groups, possessive quantifiers,
conditional groups) run on the ``regex`` module under a time budget (graphpeft.rules.bounded_regex): they mean
what Python means (the tables and properties in tests/rules/test_bounded_regex.py), a catastrophic one is refused
as too slow instead of hanging, and a PEFT adapter whose target_modules holds a lookaround loads with PEFT's
logits."""

from __future__ import annotations

import re
import time

import pytest
import regex as regex_module
from peft import LoraConfig, get_peft_model

import graphpeft
from graphpeft.errors import LoadError, RuleError
from graphpeft.rules import bounded_regex as patterns
from graphpeft.rules.bounded_regex import compile_peft_key, compile_regex
from models import batch, tiny_llama
from time_limits import watchdog

FQN = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("regex", "construct"),
    [
        (r"^(?!.*vision).*q_proj", "a lookaround assertion"),
        (r".*(?<!visual)\.(q_proj|v_proj)", "a lookaround assertion"),
        (r"(q)\1", "a backreference"),
        (r"(?P<a>q)(?P=a)", "a backreference"),
        (r"(?>q)", "an atomic group"),
        (r"q++", "a possessive quantifier"),
        (r"(q)?(?(1)a|b)", "a conditional group"),
    ],
)
def test_regex_that_needs_backtracking_runs_on_the_backtracking_engine(regex, construct):
    assert compile_regex(regex, "pattern regex", RuleError).backtracking == construct


@pytest.mark.parametrize("regex", [r"(.+)+!", r"(a|aa)+b", r"(\w+\s?)+!", r".*\.(q_proj|v_proj)"])
def test_regex_re2_can_run_stays_on_re2_however_python_would_backtrack(regex):
    assert compile_regex(regex, "pattern regex", RuleError).backtracking is None


# The regex module answers some textbook cases fast: (\w+\s?)+\1! fails at once on a name without '!' (a required
# literal), and (?=(a+)+b)(a+)+! backtracks only polynomially (slow on a 100,000-character name, not on an FQN).
CATASTROPHIC = [
    (r"(?=(a+)+b)(a+)+!", "a" * 100_000),
    (r"(?!.*vision)(.|..|...)+\d", FQN),
    (r"(?:(.)|..|...)+\1\d", FQN),
    (r"((.)|..|...)+(?(2)\d|!)", FQN),
    (r"(.|..|...)+\d++", FQN),
    (r"(.|..|...)+(?<=!)", FQN),
]


@pytest.mark.parametrize(("regex", "name"), CATASTROPHIC)
def test_catastrophic_backtracking_regex_is_refused_as_too_slow(regex, name):
    matcher = compile_regex(regex, "target_modules", LoadError)
    started = time.process_time()
    with (
        watchdog(30),
        pytest.raises(LoadError, match=r"takes more than 0\.25 s of CPU time on name .* catastrophically"),
    ):
        matcher.matches(name)
    assert time.process_time() - started < 1.0


def test_catastrophic_backtracking_rank_pattern_key_is_refused_as_too_slow():
    matcher = compile_peft_key(r"(.|..|...)+(?<=!)", "rank_pattern key", LoadError)
    with watchdog(30), pytest.raises(LoadError, match=r"rank_pattern key '\(\.\|\.\.\|\.\.\.\)\+\(\?<=!\)' takes more"):
        matcher.matches(FQN)


def test_too_slow_message_says_how_to_rewrite_the_pattern():
    matcher = compile_regex(r"(?!.*mlp)(.|..|...)+\d", "target_modules", LoadError)
    with watchdog(30), pytest.raises(LoadError) as caught:
        matcher.matches(FQN)
    assert "no repeated piece can match the same text in two ways" in str(caught.value)
    assert "without a lookaround assertion (then it runs on RE2, in linear time)" in str(caught.value)


def match_repeatedly(matcher, times: int = 500) -> None:
    """Match ``FQN`` ``times`` times: enough for a pattern slow on every name to spend its budget."""
    for _ in range(times):
        matcher.matches(FQN)


def test_pattern_slow_on_every_name_is_refused_once_its_budget_is_spent(monkeypatch):
    monkeypatch.setattr(patterns, "BACKTRACKING_BUDGET_SECONDS", 0.05)
    monkeypatch.setattr(patterns, "BACKTRACKING_REFILL_PER_SECOND", 0.0)
    matcher = compile_regex(r"(?=m)(\w|\w\w|\.)+\d", "regex", RuleError)  # milliseconds a name: under 0.25 s
    with watchdog(60), pytest.raises(RuleError, match=r"has used up its budget of 0\.05 s of CPU time"):
        match_repeatedly(matcher)


def test_pattern_that_spent_its_budget_matches_again_once_the_budget_refills(monkeypatch):
    monkeypatch.setattr(patterns, "BACKTRACKING_BUDGET_SECONDS", 0.05)
    monkeypatch.setattr(patterns, "BACKTRACKING_REFILL_PER_SECOND", 0.0)
    matcher = compile_regex(r"(?=m)(\w|\w\w|\.)+\d+", "regex", RuleError)
    with watchdog(60), pytest.raises(RuleError, match="has used up its"):
        match_repeatedly(matcher)
    monkeypatch.setattr(patterns, "BACKTRACKING_REFILL_PER_SECOND", 10.0)
    time.sleep(0.1)
    assert not matcher.matches("model.x")


def test_lookaround_regex_matches_a_hundred_thousand_names_within_its_budget():
    matcher = compile_regex(r"^(?!.*vision).*\.(q_proj|v_proj)", "target_modules", LoadError)
    names = [f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(25_000) for p in "qkvo"]
    with watchdog(60):
        assert sum(matcher.matches(name) for name in names) == 50_000


def test_backtracking_regex_with_huge_counted_repeats_is_refused_before_it_compiles():
    with watchdog(20), pytest.raises(RuleError, match="spells counted repeats out: 1000001 pieces, more than 10000"):
        compile_regex(r"(?=a)(a{1000}){1000}", "pattern regex", RuleError)


@pytest.mark.parametrize("regex", [r"(?<=a+)b", r".*(?<!vision|audio)\.q_proj", r"(?=(?<=a*)b)"])
def test_lookbehind_of_no_fixed_width_is_refused_as_python_refuses_it(regex):
    with pytest.raises(re.error, match="look-behind requires fixed-width pattern"):
        re.compile(regex)
    with pytest.raises(RuleError, match="does not compile: look-behind requires fixed-width pattern"):
        compile_regex(regex, "pattern regex", RuleError)


@pytest.mark.parametrize("regex", [r"(?x) (?!.*mlp) .*_proj  # not the MLP", r"(?x:(?=m) .*)"])
def test_verbose_regex_is_refused(regex):
    with pytest.raises(RuleError, match=r"uses verbose mode \(\?x\), which graphpeft does not read"):
        compile_regex(regex, "pattern regex", RuleError)


def test_backtracking_regex_means_what_python_means_when_the_regex_module_defaults_to_v1(monkeypatch):
    monkeypatch.setattr(regex_module, "DEFAULT_VERSION", regex_module.V1)  # V1 reads [ab&&b] as {a, b} & {b}
    matcher = compile_regex(r"(?=.)[ab&&b]", "pattern regex", RuleError)
    assert matcher.matches("a")
    assert re.fullmatch(r"(?=.)[ab&&b]", "a")


@pytest.mark.parametrize(
    "target", [r"^(?!.*\.0\.).*\.(q_proj|v_proj)", r".*(?<!layers\.0)\.self_attn\.(q_proj|v_proj)"]
)
def test_peft_adapter_targeting_modules_with_a_lookaround_loads_with_pefts_logits(target, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=target, init_lora_weights=False)
    reference = get_peft_model(tiny_llama(), config).eval()
    reference.save_pretrained(str(tmp_path))
    inputs = batch("llama")
    loaded = graphpeft.load(tiny_llama(), str(tmp_path))
    claims = loaded.adapter_specs["default"].claims.values()
    assert sorted(site.fqn for site, _ in claims) == [f"model.layers.1.self_attn.{p}_proj" for p in "qv"]
    assert (loaded(**inputs).logits - reference(**inputs).logits).abs().max() <= 1e-5
