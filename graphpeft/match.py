"""Match rules against a model's sites, with near-miss hints when nothing matches."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import MatchError, closest
from .methods import get_method
from .rewrite import Claim
from .rules import Pattern, Rule
from .sites import Site


@dataclass(frozen=True)
class ResolvedRule:
    """A rule with its targets resolved to patterns (site names looked up)."""

    rule: Rule
    patterns: tuple[tuple[str, Pattern], ...]
    source: str = "<python>"


def match(
    resolved: Sequence[ResolvedRule], sites: Sequence[Site], adapter: str
) -> dict[str, tuple[Site, Claim]]:
    """Site key -> (site, claim) for one adapter.

    Raises :class:`MatchError` when a required rule matches nothing, when a rule
    selects a site its method cannot adapt, or when two rules claim one site.
    """
    claimed: dict[str, tuple[Site, Claim]] = {}
    for item in resolved:
        rule = item.rule
        method = get_method(rule.method)
        selected: list[Site] = []
        splits: dict[str, dict[str, int | float]] = {}
        for _, pattern in item.patterns:
            for s in sites:
                if pattern.matches(s.op, s.fqn, s.cls, param=s.weight) and s not in selected:
                    selected.append(s)
                    if pattern.split is not None:
                        splits[s.key] = dict(pattern.split)
        if rule.method == "train":
            selected = _outermost(selected)
        if not selected:
            if rule.required:
                raise MatchError(no_match_message(item, sites))
            continue
        for site in selected:
            options = dict(rule.options)
            if site.key in splits:
                options["split"] = splits[site.key]  # the site's layout travels with the claim
            problem = method.check_site(site, options)
            if problem:
                raise MatchError(f"rule {rule.name!r} ({item.source}) selects {site.key}, but {problem}")
            if site.key in claimed:
                other = claimed[site.key][1].rule
                raise MatchError(
                    f"rules {other!r} and {rule.name!r} both claim site {site.key} for adapter {adapter!r}; "
                    "narrow one rule's pattern (module glob, layers or exclude) or put the rules in separate adapters"
                )
            claimed[site.key] = (site, Claim(adapter, rule.name, rule.method, options))
    return claimed


def _outermost(selected: list[Site]) -> list[Site]:
    fqns = [s.fqn for s in selected]
    return [s for s in selected if not any(s.fqn.startswith(f + ".") for f in fqns if f != s.fqn)]


def no_match_message(item: ResolvedRule, sites: Sequence[Site]) -> str:
    rule = item.rule
    lines = [f"rule {rule.name!r} ({item.source}) matches no site in this model."]
    for label, pattern in item.patterns:
        if pattern.param:
            lines.append(f"  target {label}: {_near_parameters(pattern, sites)}")
            continue
        ops = [pattern.op] if pattern.op else ["linear", "embedding", "conv2d"]
        candidates = [s for s in sites if s.op in ops]
        probe = _probe(pattern)
        near = closest(probe, [s.fqn for s in candidates], n=3) if probe else []
        if not near:
            near = [s.fqn for s in candidates[:3]]
        kinds = sorted({s.op for s in sites if s.fqn in near}) or sorted({s.op for s in sites})
        lines.append(
            f"  target {label}: closest FQNs {', '.join(near) or '(none)'}; op kinds there: {', '.join(kinds)}"
        )
    present = sorted({s.op for s in sites})
    lines.append(f"  op kinds in this graph: {', '.join(present)}. Fix the module glob/regex, op or layers.")
    return "\n".join(lines)


def _near_parameters(pattern: Pattern, sites: Sequence[Site]) -> str:
    """Hint for a ``param`` glob: the parameters ops read that look most like it."""
    weights = list(dict.fromkeys(s.weight for s in sites if s.weight and (pattern.op is None or s.op == pattern.op)))
    probe = pattern.param[0].replace("*", "").strip(".")
    near = (closest(probe, weights, n=3) if probe else []) or weights[:3]
    return f"closest parameters read by {pattern.op or 'any'} ops: {', '.join(near) or '(none)'}"


def _probe(pattern: Pattern) -> str:
    if pattern.module:
        return pattern.module[0].replace("*", "").strip(".")
    if pattern.regex:
        return re.sub(r"[\\^$()|?*+\[\]{}]", "", pattern.regex).replace("..", ".").strip(".")
    return pattern.cls or ""
