"""Property tests for rule parsing and matching.

Valid rule files round-trip (RuleSet -> TOML text -> the same RuleSet); junk text and
dicts of wrong types are refused with a graphpeft error, never a bare Python exception;
matching selects exactly the sites a pattern accepts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphpeft
from graphpeft.errors import GraphPeftError, MatchError
from graphpeft.rewrite.match import match
from graphpeft.rules.pattern import OP_KINDS, Pattern
from graphpeft.rules.rule import Rule
from graphpeft.rules.rule_set import ResolvedRule, RuleSet
from models import tiny_llama
from toml_text import ruleset_toml

# GRAPHPEFT_FUZZ=50 runs fifty times the examples (a deeper search than the fast suite's).
SCALE = int(os.environ.get("GRAPHPEFT_FUZZ", "1"))
FAST = settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JUNK = settings(max_examples=200 * SCALE, deadline=None)

names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
glob_text = st.text(alphabet=string.ascii_lowercase + string.digits + "._*?", min_size=1, max_size=16)
regexes = st.sampled_from([r".*", r"model\.layers\.\d+\.mlp\..*", r"(q|v)_proj", r"lm_head", r"[a-z_.0-9]+"])
floats = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def patterns(draw) -> Pattern:
    op = draw(st.none() | st.sampled_from(OP_KINDS))
    module = draw(st.none() | st.lists(glob_text, min_size=1, max_size=3))
    regex = draw(st.none() | regexes)
    cls = draw(st.none() | st.sampled_from(["Linear", "Embedding", "torch.nn.modules.linear.Linear"]))
    if op is module is regex is cls is None:
        op = "linear"
    layers = draw(st.none() | st.lists(st.integers(0, 40), max_size=3))
    exclude = draw(st.lists(glob_text, max_size=2))
    return Pattern(op=op, module=module, regex=regex, cls=cls, layers=layers, exclude=exclude)


def lora_options():
    return st.fixed_dictionaries(
        {},
        optional={
            "r": st.integers(1, 64),
            "alpha": st.integers(1, 64) | floats,
            "dropout": st.floats(0.0, 0.99, allow_nan=False),
            "rslora": st.booleans(),
            "dora": st.booleans(),
            "init": st.sampled_from(["default", "gaussian", "random"]),
        },
    )


@st.composite
def rulesets(draw) -> RuleSet:
    sites = draw(st.dictionaries(names, patterns(), max_size=4))
    rule_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    rules = []
    for index, name in enumerate(rule_names):
        targets = draw(
            st.lists(st.sampled_from(sorted(sites)) | patterns() if sites else patterns(), min_size=1, max_size=3)
        )
        method = draw(st.sampled_from(["lora", "train"]))
        options = draw(lora_options()) if method == "lora" else {}
        later = rule_names[index + 1 :]  # also links point forward: a cycle is refused
        also = draw(st.lists(st.sampled_from(later), max_size=2, unique=True)) if later else []
        rules.append(Rule(name, method, tuple(targets), options, draw(st.booleans()), tuple(also)))
    types = draw(st.lists(names, max_size=3))
    return RuleSet(tuple(types), sites, tuple(rules), "<generated>")


@FAST
@given(rulesets())
def test_valid_rule_files_round_trip_through_toml_text(ruleset):
    parsed = RuleSet.from_toml_text(ruleset_toml(ruleset), source="<generated>")
    assert parsed == ruleset


TOML_PIECES = [
    "[",
    "]",
    "[[rules]]",
    "[sites]",
    "[model]",
    "=",
    '"',
    "'",
    "{",
    "}",
    ",",
    "\n",
    " ",
    ".",
    "#",
    "name",
    "method",
    "targets",
    "lora",
    "train",
    "r",
    "alpha",
    "op",
    "module",
    "regex",
    "layers",
    "also",
    "required",
    "linear",
    "types",
    "1",
    "-3",
    "0",
    "4.5",
    "true",
    "nan",
    "inf",
    '"*.q_proj"',
    '"("',
    "[1, 2]",
]
toml_ish = st.lists(st.sampled_from(TOML_PIECES), max_size=40).map("".join) | st.text(max_size=200)


@JUNK
@given(toml_ish)
def test_junk_text_is_refused_with_a_graphpeft_error(text):
    with contextlib.suppress(GraphPeftError):
        RuleSet.from_toml_text(text)


KEYS = [
    "model",
    "sites",
    "rules",
    "types",
    "name",
    "method",
    "targets",
    "r",
    "alpha",
    "dropout",
    "rslora",
    "dora",
    "init",
    "op",
    "module",
    "regex",
    "class",
    "layers",
    "exclude",
    "required",
    "also",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(KEYS + list(OP_KINDS))
)
junk_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@JUNK
@given(st.dictionaries(st.sampled_from(KEYS), junk_values, max_size=4))
def test_junk_dicts_are_refused_with_a_graphpeft_error(data):
    with contextlib.suppress(GraphPeftError):
        RuleSet.from_dict(data)


VALID = {
    "sites": {"q": {"op": "linear", "module": "*.q_proj"}},
    "rules": [{"name": "lora", "method": "lora", "targets": ["q"], "r": 4}],
}


@JUNK
@given(st.sampled_from(["site", "rule"]), st.sampled_from(KEYS), junk_values)
def test_one_wrong_value_in_a_valid_file_is_refused_with_a_graphpeft_error(where, key, junk):
    data = {"sites": {"q": dict(VALID["sites"]["q"])}, "rules": [dict(VALID["rules"][0])]}
    (data["sites"]["q"] if where == "site" else data["rules"][0])[key] = junk
    with contextlib.suppress(GraphPeftError):
        RuleSet.from_dict(data)


@pytest.fixture(scope="module")
def llama_sites():
    return graphpeft.GraphPeftModel(tiny_llama(layers=2)).sites()


@FAST
@given(patterns(), st.booleans())
def test_matching_selects_exactly_the_sites_a_pattern_accepts(llama_sites, pattern, required):
    pattern = dataclasses.replace(pattern, op=pattern.op if pattern.op in ("linear", "embedding", None) else "linear")
    rule = Rule("r", "lora", (pattern,), {}, required)
    accepted = {s.key for s in llama_sites if pattern.matches(s.op, s.fqn, s.cls)}
    try:
        claims = match([ResolvedRule(rule, (("p", pattern),))], llama_sites, "default")
    except MatchError as error:  # a refusal is a valid outcome that must say why
        assert not accepted
        assert ("matches no site" if required else "would have no sites") in str(error)  # noqa: PT017
        return
    assert set(claims) == accepted
    assert all(claim.rule == "r" for _, claim in claims.values())


@FAST
@given(st.data())
def test_a_glob_naming_a_module_selects_its_sites_only(llama_sites, data):
    site = data.draw(st.sampled_from([s for s in llama_sites if s.op == "linear"]))
    pattern = Pattern(op="linear", module=site.fqn)
    claims = match([ResolvedRule(Rule("r", "lora", (pattern,)), (("p", pattern),))], llama_sites, "default")
    assert {s.fqn for s, _ in claims.values()} == {site.fqn}
