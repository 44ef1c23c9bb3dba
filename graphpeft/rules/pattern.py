"""Patterns: which graph sites a rule selects, by op kind, module FQN (glob or regex), class, layer, parameter.

A :class:`Pattern` is a value: it is checked and its globs and regex compiled (bounded, :mod:`.bounded_regex`)
when it is made, so a bad pattern fails where it is written, not where it matches. A rule file's pattern table
(``{op = "linear", module = "*.q_proj"}``) and a ``Pattern(...)`` in Python are the same object."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import RuleError, did_you_mean
from .bounded_regex import compile_glob, compile_regex
from .options import shown

OP_KINDS = ("linear", "embedding", "conv2d", "attention", "module", "matmul", "grouped_mm")
PATTERN_KEYS = ("op", "module", "regex", "class", "layers", "exclude", "param", "split")


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
            run in bounded time (:mod:`.bounded_regex`: RE2, or a time budget for lookarounds and
            backreferences).
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
    # compiled globs and regex (bounded: graphpeft.rules.bounded_regex), made from the fields above
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
        # compiled once here (bounded: graphpeft.rules.bounded_regex), so a bad pattern fails when the rule is
        # made, not when it matches
        globs = {
            key: tuple(compile_glob(g, "pattern glob", RuleError) for g in getattr(self, key) or ())
            for key in ("module", "exclude", "param")
        }
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
        return pattern_from_dict(data, where)


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
        raise RuleError(
            f"pattern split must map part names to sizes, e.g. {{q = 768, k = 768, v = 768}}, got {shown(split)}"
        )
    names = [name for name, _ in split]
    if not split:
        raise RuleError("pattern split is empty; name the parts, e.g. split = {q = 768, k = 768, v = 768}")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise RuleError(f"pattern split names must be distinct non-empty strings, got {shown(names)}")
    for name, size in split:
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) or size <= 0:
            raise RuleError(
                f"pattern split part {name!r} must be a finite positive size or proportion, got {shown(size)}"
            )


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(fqn: str) -> int | None:
    """The first integer component of a module FQN: ``model.layers.3.mlp`` -> 3."""
    found = _LAYER.search(fqn)
    return int(found.group(1)) if found else None


_PATTERN_KINDS: dict[str, type | tuple[type, ...]] = {
    "op": str,
    "module": (str, list),
    "regex": str,
    "class": str,
    "layers": (int, list),
    "exclude": (str, list),
    "param": (str, list),
    "split": Mapping,
}


def pattern_from_dict(data: Any, where: str) -> Pattern:
    if not isinstance(data, Mapping):
        raise RuleError(
            f'{where}: a pattern must be a table like {{op = "linear", module = "*.q_proj"}}, got {shown(data)}'
        )
    for key in data:
        if key not in PATTERN_KEYS:
            raise RuleError(
                f"{where}: unknown pattern key {shown(key)}{did_you_mean(str(key), PATTERN_KEYS)}; "
                f"valid keys are {', '.join(PATTERN_KEYS)}"
            )
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, _PATTERN_KINDS[key]):
            raise RuleError(f"{where}: pattern key {key!r} has the wrong type: {shown(value)}")
    layers = data.get("layers")
    try:
        return Pattern(
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
