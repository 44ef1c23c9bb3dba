"""Match rules against a model's sites, with near-miss hints when nothing matches."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from ..errors import MatchError, closest
from ..rules.pattern import Pattern, layer_index
from ..rules.registry import get_method
from ..rules.rule import check_unique_names
from ..rules.rule_set import ResolvedRule
from .claims import Claim
from .sites import Site


def match(resolved: Sequence[ResolvedRule], sites: Sequence[Site], adapter: str) -> dict[str, tuple[Site, Claim]]:
    """Site key -> (site, claim) for one adapter.

    Raises :class:`RuleError` when two rules share a name, and :class:`MatchError` when a required rule
    matches nothing, when no rule matches anything (an adapter with no sites adapts nothing), when a rule
    selects a site its method cannot adapt, or when two rules claim one site.
    """
    claimed = claim_sites(resolved, sites, adapter)
    if not claimed and resolved:
        raise MatchError(no_sites_message(resolved, sites, adapter))
    return claimed


def claim_sites(resolved: Sequence[ResolvedRule], sites: Sequence[Site], adapter: str) -> dict[str, tuple[Site, Claim]]:
    """:func:`match`, except that rules which are all optional may claim nothing (``explain`` reports that)."""
    check_unique_names([item.rule.name for item in resolved], ", ".join(dict.fromkeys(i.source for i in resolved)))
    claimed: dict[str, tuple[Site, Claim]] = {}
    for item in resolved:
        rule = item.rule
        method = get_method(rule.method)
        chosen: dict[str, Site] = {}
        splits: dict[str, dict[str, int | float]] = {}
        unmatched = []
        for label, pattern in item.patterns:
            hits = [s for s in sites if pattern.matches(s.op, s.fqn, s.cls, param=s.weight)]
            if not hits:
                unmatched.append((label, pattern))
            for s in hits:
                if s.key not in chosen:
                    chosen[s.key] = s
                    if pattern.split is not None:
                        splits[s.key] = dict(pattern.split)
        selected = list(chosen.values())
        if rule.method == "train":
            selected = _outermost(selected)
        if unmatched and rule.required:
            # A target that matches nothing is a typo even when the rule's other targets match.
            raise MatchError(no_match_message(item, sites, unmatched))
        if not selected:
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


def no_sites_message(resolved: Sequence[ResolvedRule], sites: Sequence[Site], adapter: str) -> str:
    """Why adapter ``adapter`` would have no sites: every rule (all optional) matches nothing."""
    names = ", ".join(repr(item.rule.name) for item in resolved[:4]) + (" ..." if len(resolved) > 4 else "")
    source = resolved[0].source
    rules = (
        f"its rule {names} ({source}) is optional and matches"
        if len(resolved) == 1
        else f"its rules {names} ({source}) are optional and match"
    )
    lines = [
        (
            f"adapter {adapter!r} would have no sites: {rules} no site in this model; "
            "an adapter with no sites adapts nothing."
        )
    ]
    targets = [(item.rule.name, label, pattern) for item in resolved for label, pattern in item.patterns]
    for rule, label, pattern in targets[:3]:
        lines.append(f"  rule {rule!r} target {label}: {target_hint(pattern, sites)}")
    present = sorted({s.op for s in sites})
    lines.append(f"  op kinds in this graph: {', '.join(present)}. Fix the module glob/regex, op or layers.")
    return "\n".join(lines)


def _outermost(selected: list[Site]) -> list[Site]:
    fqns = [s.fqn for s in selected]
    return [s for s in selected if not any(s.fqn.startswith(f + ".") for f in fqns if f != s.fqn)]


def no_match_message(
    item: ResolvedRule, sites: Sequence[Site], unmatched: Sequence[tuple[str, Pattern]] | None = None
) -> str:
    rule = item.rule
    unmatched = list(item.patterns) if unmatched is None else list(unmatched)
    if len(unmatched) == len(item.patterns):
        lines = [f"rule {rule.name!r} ({item.source}) matches no site in this model."]
    else:
        labels = ", ".join(label for label, _ in unmatched)
        lines = [f"rule {rule.name!r} ({item.source}): target {labels} matches no site in this model."]
    for label, pattern in unmatched:
        lines.append(f"  target {label}: {target_hint(pattern, sites)}")
    present = sorted({s.op for s in sites})
    lines.append(f"  op kinds in this graph: {', '.join(present)}. Fix the module glob/regex, op or layers.")
    return "\n".join(lines)


def _near_parameters(op: str | None, param_glob: str, sites: Sequence[Site]) -> str:
    """Hint for a ``param`` glob: the parameters ``op`` ops (any when None) read that look most like it."""
    weights = list(dict.fromkeys(s.weight for s in sites if s.weight and (op is None or s.op == op)))
    probe = param_glob.replace("*", "").strip(".")
    near = (closest(probe, weights, n=3) if probe else []) or weights[:3]
    return f"closest parameters read by {op or 'any'} ops: {', '.join(near) or '(none)'}"


def target_hint(pattern: Pattern, sites: Sequence[Site]) -> str:
    """Why ``pattern`` selects nothing: the key that excludes near-matching sites, else the closest FQNs."""
    if pattern.param:
        return _near_parameters(pattern.op, pattern.param[0], sites)
    if pattern.op is not None:
        other_ops = [s for s in sites if s.op != pattern.op and replace(pattern, op=s.op).matches(s.op, s.fqn, s.cls)]
        if other_ops:
            kinds = sorted({s.op for s in other_ops if s.op != "module"}) or ["module"]
            other_ops = [s for s in other_ops if s.op in kinds]
            return (
                f"selects {_listing([s.fqn for s in other_ops])}, but op kind there is {', '.join(kinds)}, "
                f"not {pattern.op}; set op = {kinds[0]!r}"
            )
    if pattern.layers is not None:
        unlayered = [s for s in sites if replace(pattern, layers=None).matches(s.op, s.fqn, s.cls)]
        if unlayered:
            present = sorted({i for i in (layer_index(s.fqn) for s in unlayered) if i is not None})
            return (
                f"without layers = {list(pattern.layers)} it selects {_listing([s.fqn for s in unlayered])}; "
                f"this model's layers there are {', '.join(map(str, present)) or '(none)'}"
            )
    near = closest_fqns(pattern, sites)
    kinds = sorted({s.op for s in sites if s.fqn in near and s.op != "module"})
    return f"closest FQNs {', '.join(near) or '(none)'}; op kinds there: {', '.join(kinds) or '(none)'}"


def closest_fqns(pattern: Pattern, sites: Sequence[Site], n: int = 3) -> list[str]:
    """FQNs of ``pattern``'s op kinds that look most like its glob/regex/class.

    The probe's last components are compared with the same number of trailing
    components of each FQN (``self_attn.q_projj`` vs ``self_attn.q_proj``), one
    FQN per distinct suffix, so the hints name different modules, not layer copies.
    """
    ops = [pattern.op] if pattern.op else ["linear", "embedding", "conv2d"]
    candidates = list(dict.fromkeys(s.fqn for s in sites if s.op in ops))
    probe = _probe(pattern)
    if not probe:
        return candidates[:n]
    depth = probe.count(".") + 1
    by_suffix: dict[str, str] = {}
    for fqn in candidates:
        by_suffix.setdefault(".".join(fqn.split(".")[-depth:]), fqn)
    near = [by_suffix[s] for s in closest(probe, by_suffix, n=n)]
    return near or closest(probe, candidates, n=n) or candidates[:n]


def _listing(fqns: list[str], n: int = 3) -> str:
    unique = list(dict.fromkeys(fqns))
    shown = ", ".join(unique[:n])
    return shown + (f" (+{len(unique) - n} more)" if len(unique) > n else "")


def _probe(pattern: Pattern) -> str:
    if pattern.module:
        return pattern.module[0].replace("*", "").strip(".")
    if pattern.regex:
        return re.sub(r"[\\^$()|?*+\[\]{}]", "", pattern.regex).replace("..", ".").strip(".")
    return pattern.cls or ""
