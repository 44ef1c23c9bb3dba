"""A small TOML writer for rule files (tests only): RuleSet -> TOML text."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from graphpeft.rules.rule_set import RuleSet

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def value(item: Any) -> str:
    """One TOML value: strings, booleans, integers, finite floats, arrays and inline tables."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if not math.isfinite(item):
            raise ValueError(f"TOML rule files hold finite floats only, got {item}")
        return repr(item)
    if isinstance(item, str):
        return json.dumps(item)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(item, (list, tuple)):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }"
    raise TypeError(f"no TOML form for {type(item).__name__}")


def ruleset_toml(ruleset: RuleSet) -> str:
    lines = ["[model]", f"types = {value(list(ruleset.model_types))}", "", "[sites]"]
    lines += [f"{key(name)} = {value(pattern.to_dict())}" for name, pattern in ruleset.sites.items()]
    for rule in ruleset.rules:
        lines += ["", "[[rules]]"] + [f"{key(k)} = {value(v)}" for k, v in rule.to_dict().items()]
    return "\n".join(lines) + "\n"


def qv_lora_file(r: int, *options: str, model_types: list[str] | None = None) -> str:
    """A rule file with sites ``q`` and ``v`` (the attention's ``q_proj``/``v_proj``) and one rule ``lora``
    on both with rank ``r`` and ``options`` (TOML lines such as ``"alpha = 16"``); ``[model] types`` when given.
    Sections are separated by blank lines."""
    model = f"[model]\ntypes = {value(model_types)}\n\n" if model_types else ""
    sites = (
        '[sites]\nq = { op = "linear", module = "*.self_attn.q_proj" }\n'
        'v = { op = "linear", module = "*.self_attn.v_proj" }\n'
    )
    rule = "\n".join(["[[rules]]", 'name = "lora"', 'method = "lora"', 'targets = ["q", "v"]', f"r = {r}", *options])
    return f"{model}{sites}\n{rule}\n"
