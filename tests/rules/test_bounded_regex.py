"""Bounded pattern matching (graphpeft.rules.bounded_regex): Python's meaning (``re.fullmatch``, PEFT's key test,
``fnmatch.fnmatchcase``), in time linear in the name (RE2), or within a time budget on the ``regex`` module for
what needs backtracking (lookarounds, backreferences, ...), and clear refusals for the rest."""

from __future__ import annotations

import fnmatch
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from peft.utils.other import get_pattern_key

import graphpeft
from graphpeft.errors import LoadError, RuleError
from graphpeft.rules.bounded_regex import MAX_PATTERN_LENGTH, compile_glob, compile_peft_key, compile_regex
from models import tiny_llama
from time_limits import watchdog

NAMES = [
    "model.embed_tokens",
    "model.norm",
    "lm_head",
    "model.rotary_emb",
    "",
    *(f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1, 12) for p in "qkvo"),
    *(f"model.layers.{i}.mlp.{p}_proj" for i in (0, 1, 12) for p in ("gate", "up", "down")),
    "transformer.h.0.attn.c_attn",
    "base_model.model.model.layers.0.self_attn.q_proj",
    "encoder.block.0.layer.0.SelfAttention.q",
    "Model.Layers.0.Q_PROJ",
    "a b.c-d",
    "odd[name]*?",
    "x{,2}y",
    "model.layers.0.self_attn.q_proj.lora_A",
    "model.vision_tower.layers.0.self_attn.q_proj",
    "model.visual.blocks.0.attn.v_proj",
    "mlp.mlp",
    "a{e<=1}",
]
PEFT_REGEXES = [
    r".*\.(q_proj|v_proj)",
    r"^model.*q_proj$",
    r"model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj",
    r".*mlp.*",
    r".*\.layers\.[01]\..*_proj",
    r"model\.layers\.(0|1)\.mlp\.(gate|up|down)_proj",
    r"lm_head",
    r".*_proj\Z",
    r".*\.\w+_proj",
    r"\S+\.v_proj",
    r".*layers\.\d{1}\.self_attn\.[qk]_proj",
    r"(model\.)?layers.*",
    r"(?i).*q_proj",
    r"[^.]+",
    r".*\b0\b.*",
    r"x{,2}y",
    r".*[[]name[]].*",
    r"",
    r"(.*\.)?(q|v)_proj",
    r".*\.layers\.(?:[0-9]|1[0-2])\.self_attn\.[^.]*",
]
# need a backtracking engine: lookarounds (as multimodal PEFT configs write them), backreferences, ...
BACKTRACKING_REGEXES = [
    r"^(?!.*mlp).*(q_proj|v_proj)",
    r".*(?<!visual)\.(q_proj|v_proj)",
    r"^(?!.*vision).*q_proj",
    r"(?!.*\.0\.).*_proj",
    r".*(?<=attn)\.[qk]_proj",
    r"(?=.*layers\.1).*",
    r"(?i)(?!.*MLP).*Q_PROJ$",
    r".*(?<!lm_)head",
    r"(\w+)\.\1",
    r"(?P<w>\w+)\.(?P=w)",
    r"(?>.*)q",
    r"(?>.*_)proj",
    r".*q_proj++",
    r"[^.]*+\..*",
    r"(model\.)?(?(1)layers|lm_head).*",
    r"(?=m).*(?#comment[)q_proj",
    r"(?=x)x{,2}y",
    r"(?=a)a{e<=1}",
    r"(?=.)[[:alpha:]]*",
    r"(?=.)[]a-z.]*",
    r"(?=.).*\Z",
    r"(?=.)\N{LATIN SMALL LETTER M}.*",
    r"(?=.).*\b0\b.*",
    r"(?=.)\S+\.v_proj",
    r"(?!x)\w+(?<!_proj)",
]
PEFT_KEYS = [
    "model.layers.0.self_attn.q_proj",
    "q_proj",
    "layers.1.mlp.down_proj",
    r"self_attn\.(q|v)_proj",
    "^model.layers.0.*",
    ".*0.*",
    r"mlp\.up_proj",
    "proj",
    r"layers\.\d+\.self_attn\.v_proj",
    "attn.q_proj",
    "lm_head",
    r"(q|v)",
    r"(?<!mlp\.)\w+_proj",
    r"(?!.*vision).*q_proj",
    r"(\w)\w*\.\3\w*",
    r"(?<=self_attn\.)[qv]_proj",
    r"(?>\w+)",
]
GLOBS = [
    "*.self_attn.q_proj",
    "model.layers.[01].*",
    "*.[!q]_proj",
    "*[]]*",
    "*.layers.?.mlp.*",
    "[z-a]*",
    "*[!z-a]*",
    "[a-]*",
    "*a*a*a*",
    "model.layers.0.self_attn.q_proj",
    "*.mlp.*_proj",
    "*[[]name[]]*",
    "*[*]*",
    "[!]]*",
    "*",
    "",
    "?",
    "*.layers.1[0-2].*",
    "[!-x]*",
    "*[a-c-e]*",
    "odd[name]*?",
    "*\\*",
]


@pytest.mark.parametrize("regex", PEFT_REGEXES + BACKTRACKING_REGEXES)
def test_regex_selects_exactly_what_re_fullmatch_selects(regex):
    matcher = compile_regex(regex, "regex", RuleError)
    plain = [name for name in NAMES if name]
    assert [n for n in plain if matcher.matches(n)] == [n for n in plain if re.fullmatch(regex, n)]


@pytest.mark.parametrize("key", PEFT_KEYS)
def test_rank_pattern_key_selects_exactly_what_peft_selects(key):
    matcher = compile_peft_key(key, "rank_pattern key", LoadError)
    plain = [name for name in NAMES if name]
    assert [n for n in plain if matcher.matches(n)] == [n for n in plain if get_pattern_key([key], n) == key]


@pytest.mark.parametrize("glob", GLOBS)
def test_glob_selects_exactly_what_fnmatchcase_selects(glob):
    matcher = compile_glob(glob, "glob", RuleError)
    assert [n for n in NAMES if matcher.matches(n)] == [n for n in NAMES if fnmatch.fnmatchcase(n, glob)]


REGEX_PIECES = [
    "a",
    "b",
    ".",
    r"\.",
    "*",
    "+",
    "?",
    "|",
    "(",
    ")",
    "[",
    "]",
    "^",
    "$",
    "{",
    "}",
    ",",
    "1",
    "-",
    r"\d",
    r"\w",
    r"\s",
    r"\b",
    r"\B",
    r"\D",
    r"\W",
    r"\S",
    "(?:",
    "(?i)",
    "(?s)",
    "(?m)",
    "[^",
    "\\\\",
    r"\Z",
    r"\A",
    "*?",
    "{,2}",
    "{,}",
    "{1,2}",
    r"\x41",
    r"\0",
    "[:alpha:]",
    "(?P<n>",
    ":",
    "_",
    "(?i:",
    "é",
    "q_proj",
    "{e<=1}",
    "(?#",
]
BALANCED_PIECES = [
    "a",
    "b",
    ".",
    r"\.",
    "*",
    "+",
    "?",
    "|",
    "^",
    "$",
    r"\d",
    r"\w",
    r"\b",
    r"\Z",
    "_",
    "q_proj",
    "[ab]",
    "[^a.]",
    "(?:a|b.)",
    "{,2}",
    "{1,2}",
    "{e<=1}",
    "[[:alpha:]]",
    "(?i:a)",
    "(?#[)",
    r"\x41",
]
balanced = st.lists(st.sampled_from(BALANCED_PIECES), max_size=4).map("".join)
backtracking_construct = st.one_of(
    st.tuples(st.sampled_from(["(?=", "(?!", "(?<=", "(?<!", "(?>"]), balanced).map(lambda t: f"{t[0]}{t[1]})"),
    st.tuples(balanced, balanced).map(lambda t: f"({t[0]}){t[1]}\\1"),
    st.tuples(balanced, balanced).map(lambda t: f"(?P<n>{t[0]}){t[1]}(?P=n)"),
    st.tuples(balanced, st.sampled_from(["++", "*+", "?+", "{1,2}+"])).map(lambda t: f"(?:{t[0]}){t[1]}"),
    st.tuples(balanced, balanced, balanced).map(lambda t: f"({t[0]})?(?(1){t[1]}|{t[2]})"),
)
# what graphpeft may refuse although Python compiles it: each refusal says why (tested below)
KNOWN_REFUSALS = (
    "patterns run in linear time (RE2)",
    "verbose mode",
    "write the cases out",
    "spells counted repeats out",
)
ascii_names = st.text(alphabet=string.ascii_letters[:6] + "._-1 02[]{}:\\Q<=!", max_size=10)
# names of the pieces the regexes above spell, so that many of them match
token_names = st.lists(st.sampled_from(["a", "b", "ab", ".", "q_proj", "A", "1", "{e<=1}", "_", "[", ":"]), max_size=4)


def assert_means_what_python_means(regex: str, names: list[str], refusals: tuple[str, ...] = KNOWN_REFUSALS) -> None:
    try:
        python = re.compile(regex)
    except re.error:
        with pytest.raises(RuleError):
            compile_regex(regex, "regex", RuleError)
        return
    try:
        matcher = compile_regex(regex, "regex", RuleError)
    except RuleError as refusal:  # a refusal is a valid outcome that must say why
        assert any(reason in str(refusal) for reason in refusals), (regex, str(refusal))  # noqa: PT017
        return
    for name in names:
        if name:
            assert matcher.matches(name) == (python.fullmatch(name) is not None), (regex, name)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=6).map("".join), st.lists(ascii_names, max_size=6))
def test_regexes_either_mean_what_python_means_or_are_refused(regex, names):
    assert_means_what_python_means(regex, names)


@settings(max_examples=400, deadline=None)
@given(
    st.tuples(balanced, backtracking_construct, balanced).map("".join),
    st.lists(st.one_of(ascii_names, token_names.map("".join)), max_size=6),
)
def test_regexes_that_need_backtracking_mean_what_python_means(regex, names):
    # .* around: a part of the name matches more often. The one refusal: (?i:a) with \x41, whose case rules differ
    assert_means_what_python_means(f".*(?:{regex}).*", names, ("write the cases out",))


glob_text = st.text(alphabet="ab*?[]!-^\\.z", max_size=8)


@settings(max_examples=400, deadline=None)
@given(glob_text, st.lists(st.text(alphabet="ab*?[]!-^\\.z\né", max_size=8), max_size=6))
def test_globs_mean_what_fnmatchcase_means(glob, names):
    matcher = compile_glob(glob, "glob", RuleError)
    for name in names:
        assert matcher.matches(name) == fnmatch.fnmatchcase(name, glob), (glob, name)


@pytest.mark.parametrize("regex", [r"(.+)+!", r"(a|a)*b", r"(a*)*$b", r"(\w+\s?)+!"])
def test_catastrophic_regex_answers_in_linear_time(regex):
    matcher = compile_regex(regex, "regex", RuleError)
    with watchdog(20):
        assert not matcher.matches("a" * 100_000)


def test_hostile_glob_answers_in_linear_time():
    matcher = compile_glob("*a*a*a*a*a*a*a*a*a*a*a*b", "glob", RuleError)
    with watchdog(20):
        assert not matcher.matches("model." + "a" * 100_000)


def test_catastrophic_rank_pattern_key_answers_in_linear_time():
    matcher = compile_peft_key(r"(.+)+!", "rank_pattern key", LoadError)
    with watchdog(20):
        assert not matcher.matches("model.layers.0." + "a" * 100_000)


def test_regexes_of_many_wide_classes_compile_in_linear_time():
    """Python's re.compile expands each class code point by code point (about 2 s for one such pattern)."""
    regexes = ["".join(f"[{chr(start + i)}-\U0010ffff]" for i in range(800)) for start in range(0x100, 0x100 + 20)]
    assert all(len(regex) <= MAX_PATTERN_LENGTH for regex in regexes)
    with watchdog(20):
        for regex in regexes:
            assert compile_regex(regex, "regex", RuleError).matches("\U0010ffff" * 800)


@pytest.mark.parametrize(
    ("regex", "reason"), [(r"q{1001}", "repeats a piece more than 1000 times"), (r"[\b]", "a backspace in Python")]
)
def test_regex_re2_refuses_and_that_needs_no_backtracking_is_refused_with_the_reason(regex, reason):
    with pytest.raises(RuleError, match=re.escape(reason) + ".*patterns run in linear time"):
        compile_regex(regex, "pattern regex", RuleError)


def test_refused_regex_prints_nothing_on_stderr(capfd):
    with pytest.raises(LoadError):
        compile_regex(r"q{1001}", "target_modules", LoadError)
    assert capfd.readouterr().err == ""


def test_regex_that_python_cannot_compile_is_refused_with_pythons_reason():
    with pytest.raises(RuleError, match=r"'model\.\(layers' does not compile: missing \)"):
        compile_regex("model.(layers", "pattern regex", RuleError)


@pytest.mark.parametrize("compile_", [compile_regex, compile_glob, compile_peft_key])
def test_pattern_longer_than_the_cap_is_refused(compile_):
    compile_("a" * MAX_PATTERN_LENGTH, "pattern", RuleError)
    with pytest.raises(RuleError, match=f"is {MAX_PATTERN_LENGTH + 1} characters long; patterns are limited"):
        compile_("a" * (MAX_PATTERN_LENGTH + 1), "pattern", RuleError)


def test_pattern_that_is_not_a_string_is_refused():
    with pytest.raises(RuleError, match="target_modules must be a string, got int"):
        compile_regex(5, "target_modules", RuleError)


@pytest.mark.parametrize(("regex", "name"), [(r"\w+\.q", "层.q"), (r"(?i)q", "Q\x0b"), (r".*\b.*", "é")])
def test_unicode_name_meets_an_ascii_class_with_an_error(regex, name):
    matcher = compile_regex(regex, "pattern regex", RuleError)
    with pytest.raises(RuleError, match="outside printable ASCII"):
        matcher.matches(name)


def test_unicode_name_matches_a_pattern_without_classes_as_python_does():
    matcher = compile_regex(r"model\.层\..*", "pattern regex", RuleError)
    assert matcher.matches("model.层.q_proj")
    assert not matcher.matches("model.层")


def test_case_insensitive_pattern_with_non_ascii_letters_is_refused():
    with pytest.raises(RuleError, match="write the cases out"):
        compile_regex("(?i)İ", "pattern regex", RuleError)


def test_name_with_a_trailing_newline_meets_a_dollar_with_an_error():
    matcher = compile_regex("q$", "pattern regex", RuleError)
    with pytest.raises(RuleError, match="holds a newline"):
        matcher.matches("q\n")


def test_peft_adapter_with_regex_targets_and_patterns_loads_the_ranks_peft_gives(tmp_path):
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*\.layers\.\d+\.(self_attn\.(q|v)|mlp\.down)_proj",
        exclude_modules=r".*\.0\.mlp\..*",
        rank_pattern={r"v_proj": 2},
        alpha_pattern={r"layers\.1\..*": 16},
    )
    reference = get_peft_model(tiny_llama(), config)
    reference.save_pretrained(str(tmp_path))
    expected = {
        name.removeprefix("base_model.model."): (module.r["default"], module.lora_alpha["default"])
        for name, module in reference.named_modules()
        if hasattr(module, "lora_A") and "default" in module.r
    }
    claims = graphpeft.load(tiny_llama(), str(tmp_path)).adapter_specs["default"].claims.values()
    assert {site.fqn: (claim.options["r"], claim.options["alpha"]) for site, claim in claims} == expected
    assert len(expected) == 5
