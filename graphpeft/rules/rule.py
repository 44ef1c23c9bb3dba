"""Rules: which graph sites get which adapter.

A :class:`Pattern` selects sites; a :class:`Rule` applies one method to the
sites its patterns select; a :class:`RuleSet` is one rule file (``passes/*.toml``)
with the model types it serves, its named sites and its rules. TOML and Python
objects are equivalent: ``RuleSet.from_toml(path)`` builds the same objects a
user can write by hand.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import RuleError, did_you_mean
from .options import shown, validate_options
from .bounded_regex import compile_glob, compile_regex

OP_KINDS = ("linear", "embedding", "conv2d", "attention", "module", "matmul", "grouped_mm")
PATTERN_KEYS = ("op", "module", "regex", "class", "layers", "exclude", "param", "split")
RULE_KEYS = ("name", "method", "targets", "required", "also")
MAX_NAME_LENGTH = 128


@dataclass(frozen=True)
class Pattern:
    """Selects graph sites.

    Args:
        op: op kind: ``linear`` (``aten.linear`` and GPT-2 Conv1D ``aten.addmm``),
            ``embedding``, ``conv2d``, ``attention`` (scaled-dot-product attention), or
            ``module`` (a whole module, for the ``train`` method). ``None`` = any of
            linear/embedding/conv2d.
        module: glob(s) on the module FQN (``"*.self_attn.q_proj"``).
        regex: regular expression (Python syntax) that must match the whole FQN. Globs and regexes
            run in time linear in the FQN (:mod:`graphpeft.patterns`).
        cls: module class name (``"Linear"``) or its dotted path.
        layers: layer indices (the first integer component of the FQN).
        exclude: globs; a site whose FQN matches any of them is left out.
        param: glob(s) on the FQN of the parameter the op reads (``"*.experts.gate_up_proj"``);
            with ``op`` unset it selects every op kind that reads a parameter, including the
            parameter sites ``matmul`` (``x @ W`` with W a parameter or a view of one) and
            ``grouped_mm`` (MoE experts).
        split: how the site's output (last dim) is laid out when it fuses several projections,
            e.g. ``{"q": 768, "k": 768, "v": 768}``: sizes that sum to the output width, or
            proportions (``{"q": 1, "k": 1, "v": 1}``). Rules pick slices of it by name
            (LoRA's ``slices = ["q", "v"]``).
    """

    op: str | None = None
    module: tuple[str, ...] | None = None
    regex: str | None = None
    cls: str | None = None
    layers: tuple[int, ...] | None = None
    exclude: tuple[str, ...] = ()
    param: tuple[str, ...] | None = None
    split: tuple[tuple[str, int | float], ...] | None = None
    # compiled globs and regex (bounded: graphpeft.patterns), made from the fields above
    _matchers: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("module", "exclude", "param"):
            object.__setattr__(self, key, _as_globs(getattr(self, key), key))
        if self.exclude is None:
            object.__setattr__(self, "exclude", ())
        if isinstance(self.split, Mapping):
            object.__setattr__(self, "split", tuple(self.split.items()))
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            object.__setattr__(self, "layers", (self.layers,))
        elif isinstance(self.layers, (list, range)):
            object.__setattr__(self, "layers", tuple(self.layers))
        self._validate()

    def _validate(self) -> None:
        if self.op is not None and self.op not in OP_KINDS:
            raise RuleError(
                f"pattern op {shown(self.op)} is unknown{did_you_mean(str(self.op), OP_KINDS)}; "
                f"valid ops are {', '.join(OP_KINDS)}"
            )
        for glob in (self.module or ()) + self.exclude + (self.param or ()):
            if not glob:
                raise RuleError("pattern globs must be non-empty strings, got ''")
            if glob.count("[") != glob.count("]"):
                raise RuleError(f"pattern glob {shown(glob)} has unbalanced brackets")
        # compiled once here (bounded: RE2), so a bad pattern fails when the rule is made, not when it matches
        globs = {key: tuple(compile_glob(g, "pattern glob", RuleError) for g in getattr(self, key) or ())
                 for key in ("module", "exclude", "param")}
        regex = None if self.regex is None else compile_regex(self.regex, "pattern regex", RuleError)
        object.__setattr__(self, "_matchers", (globs, regex))
        if self.cls is not None and not isinstance(self.cls, str):
            raise RuleError(f"pattern class must be a class name string, got {shown(self.cls)}")
        if self.layers is not None:
            if not isinstance(self.layers, tuple):
                raise RuleError(f"pattern layers must be a list of non-negative integers, got {shown(self.layers)}")
            for layer in self.layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise RuleError(f"pattern layers must be non-negative integers, got {shown(layer)}")
        if self.split is not None:
            _check_split(self.split)
        if self.module is None and self.regex is None and self.cls is None and self.op is None and self.param is None:
            raise RuleError(
                "a pattern needs at least one of op, module, regex, class or param "
                "(an empty pattern would match every site)"
            )

    def matches(self, op: str, fqn: str, cls: str, param: str | None = None) -> bool:
        """Whether a site of kind ``op`` in module ``fqn`` of class ``cls`` (reading parameter
        ``param``) is selected."""
        globs, regex = self._matchers
        if self.param is not None and (param is None or not any(g.matches(param) for g in globs["param"])):
            return False
        if self.op is None:
            if op not in ("linear", "embedding", "conv2d") and not (self.param is not None and param is not None):
                return False
        elif op != self.op:
            return False
        if self.module is not None and not any(g.matches(fqn) for g in globs["module"]):
            return False
        if regex is not None and not regex.matches(fqn):
            return False
        if self.cls is not None and self.cls not in (cls, cls.rsplit(".", 1)[-1]):
            return False
        if self.layers is not None and layer_index(fqn) not in self.layers:
            return False
        return not any(g.matches(fqn) for g in globs["exclude"])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.op is not None:
            out["op"] = self.op
        if self.module is not None:
            out["module"] = list(self.module) if len(self.module) > 1 else self.module[0]
        if self.regex is not None:
            out["regex"] = self.regex
        if self.cls is not None:
            out["class"] = self.cls
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.exclude:
            out["exclude"] = list(self.exclude)
        if self.param is not None:
            out["param"] = list(self.param) if len(self.param) > 1 else self.param[0]
        if self.split is not None:
            out["split"] = dict(self.split)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Pattern:
        """The pattern a rule file's table ``{op = ..., module = ...}`` describes (``where`` names it in errors)."""
        from .rule_files import pattern_from_dict

        return pattern_from_dict(data, where)


def _as_tuple(value: Any, kinds: tuple[type, ...], what: str) -> tuple[Any, ...]:
    """One item or a list/tuple of items of ``kinds`` as a tuple."""
    items = (value,) if isinstance(value, kinds) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, kinds) for item in items):
        names = " or ".join(k.__name__ for k in kinds)
        raise RuleError(f"{what} must be a {names} or a list of them, got {shown(value)}")
    return tuple(items)


def _as_globs(value: Any, key: str) -> tuple[str, ...] | None:
    """A glob or a list of globs as a tuple (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(g, str) for g in value):
        return tuple(value)
    raise RuleError(f"pattern key {key!r} must be a glob or a list of globs (strings), got {shown(value)}")


def _check_split(split: Any) -> None:
    if not isinstance(split, tuple) or not all(isinstance(part, tuple) and len(part) == 2 for part in split):
        raise RuleError(f"pattern split must map part names to sizes, e.g. {{q = 768, k = 768, v = 768}}, got {shown(split)}")
    names = [name for name, _ in split]
    if not split:
        raise RuleError("pattern split is empty; name the parts, e.g. split = {q = 768, k = 768, v = 768}")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise RuleError(f"pattern split names must be distinct non-empty strings, got {shown(names)}")
    for name, size in split:
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) or size <= 0:
            raise RuleError(f"pattern split part {name!r} must be a finite positive size or proportion, got {shown(size)}")


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(fqn: str) -> int | None:
    """The first integer component of a module FQN: ``model.layers.3.mlp`` -> 3."""
    found = _LAYER.search(fqn)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Rule:
    """Apply ``method`` with ``options`` to every site its ``targets`` select.

    ``targets`` holds site names (resolved through the rule file's ``[sites]``) or
    :class:`Pattern` objects. ``required=False`` lets a rule match nothing (used for
    optional heads). ``also`` names other rules of the same file that are applied
    together with this one (``lora`` on a classifier also trains the head).
    """

    name: str
    method: str
    targets: tuple[str | Pattern, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True
    also: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME_LENGTH:
            raise RuleError(
                f"a rule needs a non-empty string name of at most {MAX_NAME_LENGTH} characters, got {shown(self.name)}"
            )
        where = f"rule {self.name!r}"
        object.__setattr__(self, "targets", _as_tuple(self.targets, (str, Pattern), f"{where}: 'targets'"))
        object.__setattr__(self, "also", _as_tuple(self.also, (str,), f"{where}: 'also'"))
        if not self.targets:
            raise RuleError(f"{where}: 'targets' is empty; name at least one site or pattern")
        if not isinstance(self.required, bool):
            raise RuleError(f"{where}: 'required' must be True or False, got {shown(self.required)}")
        from ..rewrite.methods import get_method

        method = get_method(self.method, where=where)
        object.__setattr__(self, "options", validate_options(method.options, self.options, where))

    def with_options(self, **overrides: Any) -> Rule:
        """A copy with some options replaced (validated like the originals)."""
        return replace(self, options={**self.options, **overrides})

    def to_dict(self) -> dict[str, Any]:
        targets = [t if isinstance(t, str) else t.to_dict() for t in self.targets]
        out = {"name": self.name, "method": self.method, "targets": targets, **dict(self.options)}
        if not self.required:
            out["required"] = False
        if self.also:
            out["also"] = list(self.also)
        return out


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
        object.__setattr__(self, "rules", _as_tuple(self.rules, (Rule,), f"{self.source}: rules"))
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
        """The rule file at ``path`` (see :mod:`graphpeft.rule_files` for its limits)."""
        from .rule_files import read_rule_file

        return read_rule_file(path)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<string>") -> RuleSet:
        from .rule_files import ruleset_from_text

        return ruleset_from_text(text, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RuleSet:
        from .rule_files import ruleset_from_dict

        return ruleset_from_dict(data, source)


def check_unique_names(names: Sequence[str], source: str) -> None:
    """Refuse two rules of one name: ``also``, ``file.toml#name`` and claims find rules by name."""
    seen: set[str] = set()
    twice = list(dict.fromkeys(name for name in names if name in seen or seen.add(name)))
    if twice:
        raise RuleError(
            f"{source}: rule names must be unique; {listed(twice)} {'appears' if len(twice) == 1 else 'appear'} "
            "more than once; rename the copies"
        )


def listed(names: Any, n: int = 8) -> str:
    """The first ``n`` of ``names`` for a message, and how many more there are."""
    names = list(names)
    shown_names = ", ".join(shown(name) for name in names[:n]) or "(none)"
    return shown_names + (f" (+{len(names) - n} more)" if len(names) > n else "")


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
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                path.append(child)
                stack.append(iter(rules[child].also))
    return None


def _describe(pattern: Pattern) -> str:
    parts = [f"{k}={v!r}" for k, v in pattern.to_dict().items()]
    return "{" + ", ".join(parts) + "}"


def as_rule_list(rules: Rule | Sequence[Rule]) -> list[Rule]:
    return [rules] if isinstance(rules, Rule) else list(rules)
