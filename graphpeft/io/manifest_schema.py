"""The schema of graphpeft's manifest (``graphpeft.json``), checked before any of it is used.

The manifest's rules are checked further by :class:`~graphpeft.rules.rule.Rule` itself (methods, options,
patterns); this module checks the record around them: every key's JSON kind, the nested ``model``,
``rules`` and ``sites`` records, and the format and its version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LoadError
from .load_schema import check_record, check_value, field, mapping_of

FORMAT = "graphpeft-adapter"
FORMAT_VERSION = 1
WHAT = "a graphpeft manifest"


def _non_negative_dims(shape: list[int]) -> str | None:
    return None if all(size >= 0 for size in shape) else "has a negative size"


_TOP = {
    "format": field("string", required=True),
    "format_version": field("integer", required=True),
    "adapter_name": field("string"),
    "versions": field("object", check=mapping_of("string", lambda v: None, "version strings")),
    "model": field("object", required=True),
    "rules": field("list of objects", required=True),
    "sites": field("object", required=True, check=mapping_of("object", lambda v: None, "site records (objects)")),
    "weights": field(
        "string",
        check=lambda v: (
            None
            if v == "adapter_model.safetensors"
            else "must be 'adapter_model.safetensors', the only weights file graphpeft reads"
        ),
    ),
    "peft_compatible": field("boolean"),
}
_MODEL = {
    "class": field("string", "null"),
    "model_type": field("string", "null"),
    "fingerprint": field("string", required=True),
}
# A rule record holds these keys and the rule's options (checked by Rule).
_RULE = {
    "name": field("string", required=True),
    "method": field("string", required=True),
    "targets": field("list", required=True),
    "required": field("boolean"),
    "source": field("string"),
    "also": field("list of strings"),
}
_SITE = {
    "rule": field("string", required=True),
    "method": field("string", required=True),
    "options": field("object", required=True),
    "tensors": field(
        "object",
        required=True,
        check=mapping_of("list of integers", _non_negative_dims, "shapes (lists of sizes >= 0)"),
    ),
}


def check_manifest_record(record: dict[str, Any], path: Path) -> None:
    """Raise LoadError naming the file and key of the first thing in ``record`` that is not a manifest's."""
    where = str(path)
    for key in ("format", "format_version"):
        if key in record:
            check_value(record[key], _TOP[key], where, key)
    version = record.get("format_version")
    if record.get("format") != FORMAT or version is None:
        raise LoadError(f"{where} is not a graphpeft manifest")
    if version > FORMAT_VERSION:
        raise LoadError(
            f"{where} has format_version {version}, "
            f"newer than this graphpeft reads ({FORMAT_VERSION}); upgrade graphpeft"
        )
    check_record(record, _TOP, where, WHAT)
    check_record(record["model"], _MODEL, f"{where} (model)", WHAT)
    for i, rule in enumerate(record["rules"]):
        check_record({k: v for k, v in rule.items() if k in _RULE}, _RULE, f"{where} (rules[{i}])", WHAT)
    for key, site in record["sites"].items():
        check_record(site, _SITE, f"{where} (sites[{key!r}])", WHAT)
