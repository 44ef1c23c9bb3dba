"""Rule sets: one rule file's model types, named sites and rules, and rules with their targets resolved to patterns."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RuleError, did_you_mean
from .options import shown
from .pattern import Pattern
from .rule import Rule, as_tuple, check_unique_names, listed
from .rule_files import parse_rule_file, read_rule_file, rule_file_parts


@dataclass(frozen=True)
class RuleSet:
    """One rule file: the model types it serves, named sites, and rules."""

    model_types: tuple[str, ...]
    sites: Mapping[str, Pattern]
    rules: tuple[Rule, ...]
    source: str = "<python>"
    _by_name: Mapping[str, Rule] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.sites, Mapping) or not all(isinstance(p, Pattern) for p in self.sites.values()):
            raise RuleError(f"{self.source}: sites must map site names to Pattern objects, got {shown(self.sites)}")
        object.__setattr__(self, "rules", as_tuple(self.rules, (Rule,), f"{self.source}: rules"))
        check_unique_names([rule.name for rule in self.rules], self.source)
        object.__setattr__(self, "_by_name", {rule.name: rule for rule in self.rules})
        for rule in self.rules:
            for name in rule.also:
                self.rule(name)
        cycle = _also_cycle(self._by_name)
        if cycle:
            path = " -> ".join(map(repr, cycle)) if len(cycle) <= 6 else " -> ".join(map(repr, cycle[:5])) + " -> ..."
            raise RuleError(
                f"{self.source}: 'also' forms a cycle ({path}); also names rules applied together with a rule, "
                "and none of them may lead back to it"
            )

    def rule(self, name: str) -> Rule:
        if isinstance(name, str) and name in self._by_name:
            return self._by_name[name]
        names = list(self._by_name)
        raise RuleError(
            f"{self.source} has no rule named {shown(name)}{did_you_mean(str(name), names)}; "
            f"its rules are {listed(names)}"
        )

    def with_also(self, rule: Rule) -> list[Rule]:
        """``rule`` followed by the rules its ``also`` names (transitively, each once)."""
        out, seen, pending = [], set(), deque([rule])
        while pending:
            current = pending.popleft()
            if current.name in seen:
                continue
            seen.add(current.name)
            out.append(current)
            pending.extend(self.rule(name) for name in current.also)
        return out

    def resolve(self, rule: Rule) -> list[tuple[str, Pattern]]:
        """The rule's targets as ``(label, Pattern)`` pairs, site names looked up."""
        out = []
        for target in rule.targets:
            if isinstance(target, Pattern):
                out.append((_describe(target), target))
            elif target in self.sites:
                out.append((target, self.sites[target]))
            else:
                raise RuleError(
                    f"rule {rule.name!r} in {self.source}: target {shown(target)} is not a site"
                    f"{did_you_mean(target, self.sites)}; the file's sites are {listed(self.sites)}"
                )
        return out

    @classmethod
    def from_toml(cls, path: str | Path) -> RuleSet:
        """The rule file at ``path`` (see :mod:`.rule_files` for its limits)."""
        return cls.from_toml_text(*read_rule_file(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<string>") -> RuleSet:
        return cls.from_dict(parse_rule_file(text, source), source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RuleSet:
        """The rule set a rule file's tables describe; every rule's targets must resolve."""
        types, sites, rules = rule_file_parts(data, source)
        ruleset = cls(tuple(types), sites, tuple(rules), source)
        for rule in rules:
            ruleset.resolve(rule)
        return ruleset


@dataclass(frozen=True)
class ResolvedRule:
    """A rule with its targets resolved to patterns (site names looked up)."""

    rule: Rule
    patterns: tuple[tuple[str, Pattern], ...]
    source: str = "<python>"


def _also_cycle(rules: Mapping[str, Rule]) -> list[str] | None:
    """Names along a cycle of ``also`` links (first name repeated at the end), or None; iterative, so a chain
    of any depth is walked once."""
    state: dict[str, str] = {}
    for root in rules:
        if root in state:
            continue
        path, stack = [root], [iter(rules[root].also)]
        state[root] = "open"
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(child) == "open":
                return [*path[path.index(child) :], child]
            elif child not in state:
                state[child] = "open"
                path.append(child)
                stack.append(iter(rules[child].also))
    return None


def _describe(pattern: Pattern) -> str:
    parts = [f"{k}={v!r}" for k, v in pattern.to_dict().items()]
    return "{" + ", ".join(parts) + "}"
