"""Rules: which graph sites get which adapter.

A :class:`Pattern` selects sites; a :class:`Rule` applies one method to the
sites its patterns select; a :class:`RuleSet` is one rule file (``passes/*.toml``)
with the model types it serves, its named sites and its rules. TOML and Python
objects are equivalent: ``RuleSet.from_toml(path)`` builds the same objects a
user can write by hand.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import RuleError, did_you_mean

OP_KINDS = ("linear", "embedding", "conv2d", "attention", "module", "matmul", "grouped_mm")
PATTERN_KEYS = ("op", "module", "regex", "class", "layers", "exclude", "param", "split")
RULE_KEYS = ("name", "method", "targets", "required", "also")


@dataclass(frozen=True)
class Pattern:
    """Selects graph sites.

    Args:
        op: op kind: ``linear`` (``aten.linear`` and GPT-2 Conv1D ``aten.addmm``),
            ``embedding``, ``conv2d``, ``attention`` (scaled-dot-product attention), or
            ``module`` (a whole module, for the ``train`` method). ``None`` = any of
            linear/embedding/conv2d.
        module: glob(s) on the module FQN (``"*.self_attn.q_proj"``).
        regex: regular expression that must match the whole FQN.
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

    def __post_init__(self) -> None:
        if isinstance(self.param, (str, list)):
            object.__setattr__(self, "param", (self.param,) if isinstance(self.param, str) else tuple(self.param))
        if isinstance(self.split, Mapping):
            object.__setattr__(self, "split", tuple(self.split.items()))
        if isinstance(self.module, str):
            object.__setattr__(self, "module", (self.module,))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        if self.layers is not None and not isinstance(self.layers, tuple):
            object.__setattr__(self, "layers", tuple(self.layers))
        if isinstance(self.exclude, list):
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if isinstance(self.module, list):
            object.__setattr__(self, "module", tuple(self.module))
        self._validate()

    def _validate(self) -> None:
        if self.op is not None and self.op not in OP_KINDS:
            raise RuleError(
                f"pattern op {self.op!r} is unknown{did_you_mean(self.op, OP_KINDS)}; "
                f"valid ops are {', '.join(OP_KINDS)}"
            )
        for glob in (self.module or ()) + self.exclude + (self.param or ()):
            if not isinstance(glob, str) or not glob:
                raise RuleError(f"pattern globs must be non-empty strings, got {glob!r}")
            if glob.count("[") != glob.count("]"):
                raise RuleError(f"pattern glob {glob!r} has unbalanced brackets")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise RuleError(f"pattern regex {self.regex!r} does not compile: {exc}") from None
        if self.layers is not None:
            for layer in self.layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise RuleError(f"pattern layers must be non-negative integers, got {layer!r}")
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
        if self.param is not None and (param is None or not any(fnmatch.fnmatchcase(param, g) for g in self.param)):
            return False
        if self.op is None:
            if op not in ("linear", "embedding", "conv2d") and not (self.param is not None and param is not None):
                return False
        elif op != self.op:
            return False
        if self.module is not None and not any(fnmatch.fnmatchcase(fqn, g) for g in self.module):
            return False
        if self.regex is not None and not re.fullmatch(self.regex, fqn):
            return False
        if self.cls is not None and self.cls not in (cls, cls.rsplit(".", 1)[-1]):
            return False
        if self.layers is not None and layer_index(fqn) not in self.layers:
            return False
        return not any(fnmatch.fnmatchcase(fqn, g) for g in self.exclude)

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
        if not isinstance(data, Mapping):
            raise RuleError(f"{where}: a pattern must be a table like {{op = \"linear\", module = \"*.q_proj\"}}, got {data!r}")
        for key in data:
            if key not in PATTERN_KEYS:
                raise RuleError(
                    f"{where}: unknown pattern key {key!r}{did_you_mean(key, PATTERN_KEYS)}; "
                    f"valid keys are {', '.join(PATTERN_KEYS)}"
                )
        kinds = {
            "op": str, "module": (str, list), "regex": str, "class": str, "layers": (int, list),
            "exclude": (str, list), "param": (str, list), "split": Mapping,
        }
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, kinds[key]):
                raise RuleError(f"{where}: pattern key {key!r} has the wrong type: {value!r}")
        layers = data.get("layers")
        try:
            return cls(
                op=data.get("op"),
                module=data.get("module"),
                regex=data.get("regex"),
                cls=data.get("class"),
                layers=(layers,) if isinstance(layers, int) else layers,
                exclude=data.get("exclude", ()),
                param=data.get("param"),
                split=data.get("split"),
            )
        except RuleError as exc:
            raise RuleError(f"{where}: {exc}") from None


def _check_split(split: tuple[tuple[str, Any], ...]) -> None:
    names = [name for name, _ in split]
    if not split:
        raise RuleError("pattern split is empty; name the parts, e.g. split = {q = 768, k = 768, v = 768}")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise RuleError(f"pattern split names must be distinct non-empty strings, got {names!r}")
    for name, size in split:
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
            raise RuleError(f"pattern split part {name!r} must be a positive size or proportion, got {size!r}")


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
        if isinstance(self.targets, (str, Pattern)):
            object.__setattr__(self, "targets", (self.targets,))
        elif not isinstance(self.targets, tuple):
            object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.name, str) or not self.name:
            raise RuleError(f"a rule needs a non-empty string name, got {self.name!r}")
        if isinstance(self.also, str):
            object.__setattr__(self, "also", (self.also,))
        elif not isinstance(self.also, tuple):
            object.__setattr__(self, "also", tuple(self.also))
        if not self.targets:
            raise RuleError(f"rule {self.name!r}: 'targets' is empty; name at least one site or pattern")
        from .methods import get_method

        method = get_method(self.method, where=f"rule {self.name!r}")
        from .options import validate_options

        object.__setattr__(
            self, "options", validate_options(method.options, dict(self.options), f"rule {self.name!r}")
        )

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

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        names = [r.name for r in self.rules]
        raise RuleError(
            f"{self.source} has no rule named {name!r}{did_you_mean(name, names)}; "
            f"its rules are {', '.join(names) or '(none)'}"
        )

    def with_also(self, rule: Rule) -> list[Rule]:
        """``rule`` followed by the rules its ``also`` names (transitively, each once)."""
        out, pending = [], [rule]
        while pending:
            current = pending.pop(0)
            if current in out:
                continue
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
                    f"rule {rule.name!r} in {self.source}: target {target!r} is not a site"
                    f"{did_you_mean(target, self.sites)}; the file's sites are "
                    f"{', '.join(self.sites) or '(none)'}"
                )
        return out

    @classmethod
    def from_toml(cls, path: str | Path) -> RuleSet:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"cannot read rule file {path}: {exc.strerror or exc}") from None
        return cls.from_toml_text(text, source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<string>") -> RuleSet:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RuleError(f"{source} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RuleSet:
        for key in data:
            if key not in ("model", "sites", "rules"):
                raise RuleError(
                    f"{source}: unknown top-level table {key!r}{did_you_mean(key, ('model', 'sites', 'rules'))}; "
                    "a rule file has [model], [sites] and [[rules]]"
                )
        model = data.get("model", {})
        if not isinstance(model, Mapping):
            raise RuleError(f"{source}: [model] must be a table")
        for key in model:
            if key != "types":
                raise RuleError(f"{source}: unknown key {key!r} in [model]{did_you_mean(key, ('types',))}")
        types = model.get("types", [])
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise RuleError(f"{source}: [model] types must be a list of strings, got {types!r}")
        raw_sites = data.get("sites", {})
        if not isinstance(raw_sites, Mapping):
            raise RuleError(f"{source}: [sites] must be a table of name = {{op = ..., module = ...}}")
        sites = {name: Pattern.from_dict(p, f"{source}: site {name!r}") for name, p in raw_sites.items()}
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise RuleError(f"{source}: 'rules' must be an array of tables: write [[rules]]")
        rules = []
        for i, raw in enumerate(raw_rules):
            rules.append(_rule_from_dict(raw, f"{source}: rule #{i + 1}"))
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RuleError(f"{source}: rule names must be unique; {', '.join(map(repr, dupes))} appear twice")
        ruleset = cls(tuple(types), sites, tuple(rules), source)
        for rule in rules:
            ruleset.resolve(rule)
            for name in rule.also:
                ruleset.rule(name)
        return ruleset


def _rule_from_dict(raw: Any, where: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise RuleError(f"{where}: must be a table")
    if "name" in raw and isinstance(raw["name"], str):
        where = f"{where.rsplit(': ', 1)[0]}: rule {raw['name']!r}"
    for key in ("name", "method", "targets"):
        if key not in raw:
            raise RuleError(f"{where}: missing key {key!r}; every rule needs name, method and targets")
    targets = raw["targets"]
    if isinstance(targets, (str, Mapping)):
        targets = [targets]
    if not isinstance(targets, list):
        raise RuleError(f"{where}: 'targets' must be a list of site names or patterns")
    resolved: list[str | Pattern] = []
    for target in targets:
        if isinstance(target, str):
            resolved.append(target)
        else:
            resolved.append(Pattern.from_dict(target, f"{where}: target"))
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise RuleError(f"{where}: 'required' must be true or false")
    also = raw.get("also", [])
    if isinstance(also, str):
        also = [also]
    if not isinstance(also, list) or not all(isinstance(a, str) for a in also):
        raise RuleError(f"{where}: 'also' must be a list of rule names")
    options = {k: v for k, v in raw.items() if k not in RULE_KEYS}
    try:
        return Rule(raw["name"], raw["method"], tuple(resolved), options, required, tuple(also))
    except RuleError as exc:
        message = str(exc)
        raise RuleError(message if message.startswith(where.split(":")[0]) else f"{where.split(': rule')[0]}: {message}") from None


def _describe(pattern: Pattern) -> str:
    parts = [f"{k}={v!r}" for k, v in pattern.to_dict().items()]
    return "{" + ", ".join(parts) + "}"


def as_rule_list(rules: Rule | Sequence[Rule]) -> list[Rule]:
    return [rules] if isinstance(rules, Rule) else list(rules)
