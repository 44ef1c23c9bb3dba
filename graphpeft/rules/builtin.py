"""Built-in rule files (``passes/*.toml``, shipped inside the package) and rule resolution."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

from torch import nn

from ..errors import RuleError, did_you_mean
from .registry import get_method
from .rule import Rule, check_unique_names
from .rule_set import ResolvedRule, RuleSet


def passes_dir() -> Path:
    """Folder of the built-in rule files (installed package data, or the source tree)."""
    try:
        spec = importlib.util.find_spec("graphpeft.passes")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if any(Path(location).glob("*.toml")):
            return Path(location)
    return Path(__file__).resolve().parents[2] / "passes"


@functools.cache
def builtin_rulesets() -> tuple[RuleSet, ...]:
    return tuple(RuleSet.from_toml(p) for p in sorted(passes_dir().glob("*.toml")))


def ruleset_for(model_type: str) -> RuleSet:
    """The built-in rule file serving ``config.model_type``."""
    known: list[str] = []
    for ruleset in builtin_rulesets():
        if model_type in ruleset.model_types:
            return ruleset
        known.extend(ruleset.model_types)
    raise RuleError(
        f"no built-in rule file serves model type {model_type!r}{did_you_mean(model_type, known)}; "
        f"built-in types are {', '.join(sorted(known))}. Write a rule file and pass its path, or pass Rule objects."
    )


def _is_rule_list(rules: object) -> TypeGuard[Sequence[Rule]]:
    """A non-empty list (or tuple) of :class:`Rule` objects."""
    return (
        isinstance(rules, Sequence)
        and not isinstance(rules, str)
        and bool(rules)
        and all(isinstance(r, Rule) for r in rules)
    )


def resolve_rules(
    model: nn.Module, rules: str | Path | Rule | RuleSet | Sequence[Rule], overrides: dict[str, Any]
) -> list[ResolvedRule]:
    """Turn what ``graphpeft.apply`` was given into resolved rules, overrides applied.

    ``rules`` may be a rule-file path (its first rule applies; ``file.toml#name`` picks
    another), a rule name
    (looked up in the built-in file for ``model.config.model_type``), a
    :class:`RuleSet`, a :class:`Rule` or a list of rules.
    """
    if isinstance(rules, (str, Path)) and (".toml" in str(rules) or Path(rules).is_file()):
        path, name = str(rules), ""
        if ".toml#" in path:
            path, name = path.split(".toml#", 1)
            path += ".toml"
        ruleset = RuleSet.from_toml(path)
        if not ruleset.rules:
            raise RuleError(f"{ruleset.source} has no [[rules]]; add at least one rule")
        chosen = ruleset.with_also(ruleset.rule(name) if name else ruleset.rules[0])
    elif isinstance(rules, str):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type is None:
            raise RuleError(
                f"rule name {rules!r} is looked up through model.config.model_type, but "
                f"{type(model).__name__} has no config; pass a rule-file path or Rule objects"
            )
        ruleset = ruleset_for(model_type)
        chosen = ruleset.with_also(ruleset.rule(rules))
    elif isinstance(rules, RuleSet):
        if not rules.rules:
            raise RuleError(f"{rules.source} has no rules")
        ruleset, chosen = rules, rules.with_also(rules.rules[0])
    elif isinstance(rules, Rule):
        ruleset, chosen = _ruleset_of(model), [rules]
    elif _is_rule_list(rules):
        check_unique_names([r.name for r in rules], "the rules passed")
        ruleset, chosen = _ruleset_of(model), list(rules)
    else:
        raise RuleError(
            f"rules must be a rule-file path, a rule name, a RuleSet, a Rule or a list of Rules; got {rules!r}"
        )
    if overrides:
        chosen = _override(chosen, overrides)
    source = "<python>" if isinstance(rules, Rule) or not isinstance(rules, (str, Path, RuleSet)) else ruleset.source
    return [ResolvedRule(r, tuple(ruleset.resolve(r)), source) for r in chosen]


def _override(chosen: list[Rule], overrides: dict[str, Any]) -> list[Rule]:
    known = {key for r in chosen for key in get_method(r.method).options}
    for key in overrides:
        if key not in known:
            raise RuleError(
                f"override {key!r} is not an option of the chosen rules ({', '.join(r.name for r in chosen)})"
                f"{did_you_mean(key, known)}; their options are {', '.join(sorted(known)) or '(none)'}"
            )
    out = []
    for rule in chosen:
        mine = {k: v for k, v in overrides.items() if k in get_method(rule.method).options}
        out.append(rule.with_options(**mine) if mine else rule)
    return out


def _ruleset_of(model: nn.Module) -> RuleSet:
    """The built-in rule file of the model if any (for site names in Python rules), else an empty one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None:
        for ruleset in builtin_rulesets():
            if model_type in ruleset.model_types:
                return ruleset
    return RuleSet((), {}, (), "<python>")
