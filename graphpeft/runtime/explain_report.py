"""The explain report: which sites an adapter set claims, by which rules, with which tensor shapes and counts.

``GraphPeftModel.explain()`` reports the adapters a model already has (:func:`explain_model`);
``graphpeft.explain(model, rules)`` (:mod:`graphpeft.tools.explain`) builds the same report in a dry run.
Print an :class:`ExplainReport` with rich (``rich.print(report)``), or read its fields.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from torch import nn

from ..errors import UsageError
from ..rewrite.claims import Claim
from ..rewrite.match import closest_fqns, no_match_message
from ..rewrite.sites import Site
from ..rules.registry import get_method
from ..rules.rule_set import ResolvedRule
from ..tracing.graph_utils import container

if TYPE_CHECKING:
    from .model import GraphPeftModel


@dataclass(frozen=True)
class SiteReport:
    """One claimed site: who claimed it and the adapter tensors it gets (slot -> shape)."""

    site: Site
    adapter: str
    rule: str
    method: str
    shapes: dict[str, tuple[int, ...]]
    params: int
    quantized: str | None = None  # the scheme the site's base weight is stored in, if quantized


@dataclass(frozen=True)
class UnmatchedRule:
    """A rule that selects nothing, with the FQNs closest to each of its targets."""

    rule: str
    method: str
    required: bool
    message: str
    closest: tuple[str, ...]


@dataclass
class ExplainReport:
    """Everything :func:`explain` found. ``problems`` holds what ``apply`` would raise."""

    model: str
    base_params: int
    sites: list[SiteReport]
    rules: list[ResolvedRule]
    unmatched: list[UnmatchedRule] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)
    quantization: str | None = None  # what quantize() did to the base (GraphPeftModel.explain only)

    @property
    def ok(self) -> bool:
        """Whether ``apply`` with these rules would succeed."""
        return not self.problems and not any(u.required for u in self.unmatched)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per method: ``{"rules": n, "sites": n, "params": n}``."""
        out: dict[str, dict[str, Any]] = {}
        for item in self.sites:
            row = out.setdefault(item.method, {"rules": set(), "sites": 0, "params": 0})
            row["rules"].add(item.rule)
            row["sites"] += 1
            row["params"] += item.params
        return {m: {**row, "rules": len(row["rules"])} for m, row in out.items()}

    @property
    def adapter_params(self) -> int:
        return sum(item.params for item in self.sites)

    # ------------------------------------------------------------------ rendering
    def tree(self) -> Tree:
        """The module hierarchy down to every claimed site."""
        root = Tree(Text.assemble((self.model, "bold"), f"  {self.adapter_params:,} adapter params"))
        branches: dict[str, Tree] = {"": root}
        for item in self.sites:
            parent = _branch(branches, root, item.site.fqn, self.classes)
            parent.add(_site_label(item))
        return root

    def summary_table(self) -> Table:
        table = Table(title="Summary per method", title_justify="left")
        for column in ("method", "rules", "sites", "adapter params", "% of base"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for method, row in sorted(self.summary().items()):
            share = 100 * row["params"] / self.base_params if self.base_params else 0.0
            table.add_row(method, str(row["rules"]), str(row["sites"]), f"{row['params']:,}", f"{share:.4f}")
        return table

    def rules_table(self) -> Table:
        table = Table(title="Rules", title_justify="left")
        for column in ("rule", "method", "sites", "options (non-default in bold)", "source"):
            table.add_column(column)
        counts: dict[str, int] = {}
        for item in self.sites:
            counts[item.rule] = counts.get(item.rule, 0) + 1
        for resolved in self.rules:
            rule = resolved.rule
            schema = get_method(rule.method).options
            options = Text()
            for key, value in rule.options.items():
                changed = key in schema and schema[key].default != value
                options.append(f"{key}={value!r} ", style="bold" if changed else "dim")
            table.add_row(rule.name, rule.method, str(counts.get(rule.name, 0)), options, Path(resolved.source).name)
        return table

    def unmatched_panel(self) -> Panel | None:
        if not self.unmatched and not self.problems:
            return None
        body = Text()
        for item in self.unmatched:
            style = "red" if item.required else "yellow"
            tag = "required, apply would fail" if item.required else "optional"
            body.append(f"{item.rule} ({item.method}, {tag})\n", style=style)
            body.append("\n".join(item.message.splitlines()[1:]) + "\n")
        for problem in self.problems:
            body.append(problem + "\n", style="red")
        body.rstrip()
        return Panel(body, title="Unmatched rules and problems", title_align="left")

    def renderable(self) -> Group:
        parts: list[Any] = [self.tree(), self.summary_table(), self.rules_table()]
        if self.quantization:
            parts.append(Text(f"quantized base: {self.quantization}"))
        panel = self.unmatched_panel()
        if panel is not None:
            parts.append(panel)
        return Group(*parts)

    def __rich__(self) -> Group:
        return self.renderable()

    def text(self, width: int = 120) -> str:
        """The view as plain text (what ``graphpeft inspect`` prints)."""
        console = Console(file=io.StringIO(), width=width, color_system=None, record=True, force_terminal=False)
        console.print(self.renderable())
        return console.export_text()

    def print(self, console: Console | None = None) -> None:
        (console or Console()).print(self.renderable())


def explain_model(model: GraphPeftModel, adapter_names: Sequence[str] | None = None) -> ExplainReport:
    """The report of the adapters ``model`` already has (all of them by default)."""
    if isinstance(adapter_names, str):
        raise UsageError(
            f"adapter_names takes a list of names, got the string {adapter_names!r}; write [{adapter_names!r}]"
        )
    names = list(adapter_names) if adapter_names is not None else list(model.adapter_specs)
    quantization = model.quantization
    quantized = set(quantization.weights) if quantization else set()
    reports, rules, unmatched = [], [], []
    for name in names:
        spec = model._spec(name)
        for site, claim in spec.claims.values():
            scheme = quantization.scheme if quantization and site.weight in quantized else None
            reports.append(replace(site_report(site, claim, model.adapters), quantized=scheme))
        claimed = {claim.rule for _, claim in spec.claims.values()}
        for item in spec.rules:
            rules.append(item)
            if item.rule.name not in claimed:
                unmatched.append(unmatched_rule(item, model.sites()))
    report = build_report(model.base_model, reports, rules, unmatched, [])
    report.quantization = str(model.quantization) if model.quantization else None
    return report


def unmatched_rule(item: ResolvedRule, sites: list[Site]) -> UnmatchedRule:
    near = [fqn for _, pattern in item.patterns for fqn in closest_fqns(pattern, sites)]
    return UnmatchedRule(
        item.rule.name, item.rule.method, item.rule.required, no_match_message(item, sites), tuple(dict.fromkeys(near))
    )


def site_report(site: Site, claim: Claim, store: nn.Module) -> SiteReport:
    shapes: dict[str, tuple[int, ...]] = {}
    host = container(store, site.host, create=False)
    for slot, holder in host._modules.items():
        if not isinstance(holder, (nn.ParameterDict, nn.ModuleDict)) or claim.adapter not in holder:
            continue
        value = holder[claim.adapter]
        if isinstance(value, nn.Module):
            shapes.update({f"{slot}.{name}": tuple(p.shape) for name, p in value.named_parameters()})
        else:
            shapes[slot] = tuple(value.shape)
    params = sum(_numel(shape) for shape in shapes.values())
    return SiteReport(site, claim.adapter, claim.rule, claim.method, shapes, params)


def build_report(model: nn.Module, sites, rules, unmatched, problems) -> ExplainReport:
    classes = {fqn: type(module).__name__ for fqn, module in model.named_modules()}
    base_params = sum(p.numel() for p in model.parameters())
    return ExplainReport(type(model).__name__, base_params, sites, list(rules), unmatched, problems, classes)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


# ---------------------------------------------------------------------- tree helpers
_CONTAINERS = ("ModuleList", "ModuleDict", "Sequential")


def _branch(branches: dict[str, Tree], root: Tree, fqn: str, classes: dict[str, str]) -> Tree:
    """The tree node of the module owning ``fqn``'s parent, creating the path; list containers
    fold into their child (``layers.0``)."""
    parts = fqn.split(".")[:-1] if fqn else []
    node, path, pending = root, "", ""
    for part in parts:
        path = f"{path}.{part}" if path else part
        label = f"{pending}.{part}" if pending else part
        if classes.get(path) in _CONTAINERS:
            pending = label
            continue
        pending = ""
        if path not in branches:
            branches[path] = node.add(Text.assemble((label, "bold"), (f" ({classes.get(path, '?')})", "dim")))
        node = branches[path]
    return node


def _site_label(item: SiteReport) -> Text:
    site = item.site
    name = site.fqn.rsplit(".", 1)[-1] if site.fqn else "<root>"
    text = Text.assemble((name, "bold cyan"), (f" {site.op}", "dim"))
    if site.occurrence:
        text.append(f"#{site.occurrence}", style="dim")
    if site.weight_shape is not None and site.op in ("linear", "conv2d", "matmul", "grouped_mm"):
        text.append(f" {site.in_features}→{site.out_features}", style="dim")
    if item.quantized:
        text.append(f" [{item.quantized}]", style="yellow")
    text.append(f"  ← {item.method}", style="green")
    text.append(f" rule {item.rule!r} @{item.adapter}  ")
    shown = list(item.shapes.items())
    text.append(", ".join(f"{slot} {'×'.join(map(str, shape))}" for slot, shape in shown[:4]))
    if len(shown) > 4:
        text.append(f", +{len(shown) - 4} more")
    text.append(f"  = {item.params:,} params", style="magenta")
    return text
