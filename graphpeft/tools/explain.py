"""``graphpeft.explain(model, rules)``: a dry run of ``graphpeft.apply`` that reports what would be adapted.

It traces the model, matches the rules and sizes every adapter on the meta device, but freezes
nothing and adds no parameter. It returns the :class:`~graphpeft.runtime.explain_report.ExplainReport`
that ``GraphPeftModel.explain()`` gives for the adapters a model already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import MatchError
from ..rewrite.adapter_names import check_adapter_name
from ..rewrite.claims import Claim
from ..rewrite.match import claim_sites, no_sites_message
from ..rewrite.methods.dry_run import MetaShadow
from ..rewrite.sites import Site
from ..rules.builtin import resolve_rules
from ..rules.registry import get_method
from ..rules.rule_set import ResolvedRule
from ..runtime.explain_report import ExplainReport, UnmatchedRule, build_report, site_report, unmatched_rule
from ..runtime.model import GraphPeftModel

if TYPE_CHECKING:
    from ..rules.rule import Rule
    from ..rules.rule_set import RuleSet


def explain(
    model: nn.Module,
    rules: str | Path | Rule | RuleSet | Sequence[Rule],
    *,
    adapter_name: str = "default",
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    show: bool = False,
    **overrides: Any,
) -> ExplainReport:
    """Dry run of ``graphpeft.apply(model, rules, **overrides)``: what would be adapted, and how.

    The model is not modified: no parameter is frozen, no adapter created. Rules that
    match nothing are reported (with the closest FQNs) instead of raised, and so are
    conflicts, so one call shows every problem. ``show=True`` also prints the view.
    """
    check_adapter_name(adapter_name)
    resolved = resolve_rules(model, rules, overrides)
    probe = GraphPeftModel(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes)
    sites = probe.sites()
    claims, unmatched, problems = _dry_match(resolved, sites, adapter_name)
    view = MetaShadow(model)
    reports = []
    for site, claim in claims:
        scratch = nn.Module()
        get_method(claim.method).create(site, claim.options, view, scratch, adapter_name)
        reports.append(site_report(site, claim, scratch))
    report = build_report(model, reports, resolved, unmatched, problems)
    if show:
        report.print()
    return report


def _dry_match(
    resolved: list[ResolvedRule], sites: list[Site], adapter: str
) -> tuple[list[tuple[Site, Claim]], list[UnmatchedRule], list[str]]:
    """Claims as ``match`` makes them, with misses and conflicts collected instead of raised."""
    optional = [replace(item, rule=replace(item.rule, required=False)) for item in resolved]
    unmatched: list[UnmatchedRule] = []
    problems: list[str] = []
    per_rule: list[tuple[Site, Claim]] = []
    for original, item in zip(resolved, optional, strict=True):
        try:
            found = claim_sites([item], sites, adapter)
        except MatchError as exc:
            problems.append(str(exc))
            continue
        if not found:
            unmatched.append(unmatched_rule(original, sites))
        per_rule.extend(found.values())
    try:
        combined = list(claim_sites(optional, sites, adapter).values())
    except MatchError as exc:
        if str(exc) not in problems:
            problems.append(str(exc))
        combined = per_rule
    if resolved and not combined and not problems and not any(u.required for u in unmatched):
        problems.append(no_sites_message(resolved, sites, adapter))  # apply refuses an adapter with no sites
    return combined, unmatched, problems
