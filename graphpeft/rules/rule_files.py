"""Reading rule files: TOML text -> tables -> model types, sites and rules (which
:class:`~.rule_set.RuleSet` assembles), with limits on what a file may be.

A rule file is small (the built-in ones are a few kilobytes), so a file over :data:`MAX_RULE_FILE_BYTES`, or
one nested deeper than Python's stack allows the TOML parser to go, is refused with a :class:`RuleError`
instead of running out of memory or stack. Every step after parsing is linear in the number of rules.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import RuleError, did_you_mean
from .options import shown
from .pattern import Pattern, pattern_from_dict
from .rule import RULE_KEYS, Rule

MAX_RULE_FILE_BYTES = 1 << 20


def read_rule_file(path: str | Path) -> tuple[str, str]:
    """``(text, source)`` of the rule file at ``path``: at most :data:`MAX_RULE_FILE_BYTES`, UTF-8."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RULE_FILE_BYTES + 1)  # never more, whatever the file is (/dev/zero)
    except OSError as exc:
        raise RuleError(f"cannot read rule file {path}: {exc.strerror or exc}") from None
    _check_size(len(data), str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError(f"rule file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return text, str(path)


def parse_rule_file(text: str, source: str = "<string>") -> dict[str, Any]:
    """The tables of a rule file's TOML ``text`` (``source`` names it in errors)."""
    if not isinstance(text, str):
        raise RuleError(f"{source}: rule file text must be a string, got {type(text).__name__}")
    _check_size(len(text), source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{source} is not valid TOML: {exc}") from None
    except RecursionError:
        raise RuleError(
            f"{source}: arrays or tables are nested too deeply to read; a rule file needs a few levels"
        ) from None
    return data


def _check_size(size: int, source: str) -> None:
    if size > MAX_RULE_FILE_BYTES:
        raise RuleError(
            f"rule file {source} is larger than {MAX_RULE_FILE_BYTES >> 20} MiB; a rule file holds a few sites "
            "and rules (name sites once in [sites] and refer to them by name)"
        )


def rule_file_parts(
    data: Mapping[str, Any], source: str = "<dict>"
) -> tuple[list[str], dict[str, Pattern], list[Rule]]:
    """``(model types, named sites, rules)`` of a rule file's tables, each checked (``source`` names it in errors)."""
    if not isinstance(data, Mapping):
        raise RuleError(f"{source}: a rule file is a table of [model], [sites] and [[rules]], got {shown(data)}")
    for key in data:
        if key not in ("model", "sites", "rules"):
            raise RuleError(
                f"{source}: unknown top-level table {shown(key)}{did_you_mean(str(key), ('model', 'sites', 'rules'))}; "
                "a rule file has [model], [sites] and [[rules]]"
            )
    types = _model_types(data.get("model", {}), source)
    raw_sites = data.get("sites", {})
    if not isinstance(raw_sites, Mapping):
        raise RuleError(f"{source}: [sites] must be a table of name = {{op = ..., module = ...}}")
    sites = {name: pattern_from_dict(p, f"{source}: site {shown(name)}") for name, p in raw_sites.items()}
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise RuleError(f"{source}: 'rules' must be an array of tables: write [[rules]]")
    rules = [_rule_from_dict(raw, f"{source}: rule #{i + 1}") for i, raw in enumerate(raw_rules)]
    return types, sites, rules


def _model_types(model: Any, source: str) -> list[str]:
    if not isinstance(model, Mapping):
        raise RuleError(f"{source}: [model] must be a table")
    for key in model:
        if key != "types":
            raise RuleError(f"{source}: unknown key {shown(key)} in [model]{did_you_mean(str(key), ('types',))}")
    types = model.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise RuleError(f"{source}: [model] types must be a list of strings, got {shown(types)}")
    return types


def _rule_from_dict(raw: Any, where: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise RuleError(f"{where}: must be a table")
    if "name" in raw and isinstance(raw["name"], str):
        where = f"{where.rsplit(': ', 1)[0]}: rule {shown(raw['name'])}"
    for key in ("name", "method", "targets"):
        if key not in raw:
            raise RuleError(f"{where}: missing key {key!r}; every rule needs name, method and targets")
    targets = raw["targets"]
    if isinstance(targets, (str, Mapping)):
        targets = [targets]
    if not isinstance(targets, list):
        raise RuleError(f"{where}: 'targets' must be a list of site names or patterns")
    resolved = [t if isinstance(t, str) else pattern_from_dict(t, f"{where}: target") for t in targets]
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
        raise RuleError(
            message if message.startswith(where.split(":")[0]) else f"{where.split(': rule')[0]}: {message}"
        ) from None
