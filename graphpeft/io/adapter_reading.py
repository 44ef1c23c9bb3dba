"""Reading an adapter folder and checking all of it against a model before anything is created.

:func:`read_saved` turns the folder's manifest (or PEFT config) into rules and the sites they select,
after checking every key; :func:`read_weights` checks the weights file's header against the shapes
those claims need (a dry run, nothing allocated), then reads the tensors and refuses non-finite values
and any tensor that would change a base weight. Only then does the loader create the adapter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GraphPeftError, LoadError
from ..rewrite.claims import Claim
from ..rewrite.match import match
from ..rewrite.sites import Site
from ..rules.pattern import Pattern
from ..rules.registry import get_method
from ..rules.rule import Rule
from ..rules.rule_set import ResolvedRule
from .manifest_schema import check_manifest_record
from .peft_format import PEFT_OPTIONS, PREFIX, rules_from_peft_config
from .peft_prompt_format import METHOD_BY_PEFT_TYPE, PROMPT_PREFIX, rules_from_prompt_config, virtual_claims
from .peft_schema import check_peft_config
from .tensor_file import WEIGHTS, Header, pickle_hint, read_header, read_tensors

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel

MANIFEST = "graphpeft.json"
PEFT_CONFIG = "adapter_config.json"
MAX_JSON_BYTES = 64 * 2**20  # a manifest of every site of a 70B model is a few MB

Claims = dict[str, tuple[Site, Claim]]


@dataclass
class SavedAdapter:
    """What an adapter folder holds, read and checked against one model; nothing created yet.

    ``claims``: the sites the folder's rules select on the model (site key -> (site, claim)).
    ``recorded``: per site key, the options the folder records (the manifest's, or those PEFT's config holds).
    """

    folder: Path
    rules: list[ResolvedRule]
    claims: Claims
    recorded: dict[str, dict[str, Any]]
    manifest: dict[str, Any] | None


def fingerprint(model: GraphPeftModel) -> str:
    """sha256 over the base graph's op sites (key, module class, weight shape)."""
    rows = [[s.key, s.cls.rsplit(".", 1)[-1], list(s.weight_shape or ())] for s in model.sites() if s.op != "module"]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def key_of(claims: Claims, site: Site, method: str, suffix: str) -> str:
    """PEFT's key of one tensor: ``base_model.model.<host>.<suffix>``; prompt learning: ``prompt_embeddings``
    and ``base_model.<host>.<param>`` for fully trained modules."""
    if get_method(method).virtual_tokens:
        return suffix
    return f"{PROMPT_PREFIX if virtual_claims(claims) else PREFIX}{site.host}.{suffix}"


def read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise LoadError(
                f"{path} is {path.stat().st_size:,} bytes, more than any adapter config or manifest; it is not one"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"{path} is not valid JSON ({exc}); the file is corrupted, save the adapter again") from None
    except RecursionError:
        raise LoadError(
            f"{path} nests JSON deeper than Python can read; it is not an adapter config or manifest"
        ) from None
    if not isinstance(data, dict):
        raise LoadError(f"{path} must hold a JSON object")
    return data


# ---------------------------------------------------------------------- rules and sites
def read_saved(model: GraphPeftModel, folder: Path, adapter: str) -> SavedAdapter:
    """The folder's rules and the sites they select on ``model``, every record checked."""
    try:
        if (folder / MANIFEST).is_file():
            manifest = read_json(folder / MANIFEST)
            check_manifest_record(manifest, folder / MANIFEST)
            rules = _rules_from_manifest(manifest, folder)
        elif (folder / PEFT_CONFIG).is_file():
            manifest = None
            rules = _rules_from_peft_config(model, folder)
        else:
            raise LoadError(
                f"{folder} holds neither {MANIFEST} nor {PEFT_CONFIG}; "
                f"it is not an adapter directory{pickle_hint(folder)}"
            )
        claims = match(rules, model.sites(), adapter)
    except LoadError:
        raise
    except GraphPeftError as exc:
        raise LoadError(f"cannot load {folder} onto {type(model.base_model).__name__}: {exc}") from exc
    if manifest is None:
        recorded = {key: _peft_recorded(claim) for key, (_, claim) in claims.items()}
    else:
        _check_manifest(model, claims, manifest, folder)
        recorded = {key: site["options"] for key, site in manifest["sites"].items()}
    return SavedAdapter(folder, rules, claims, recorded, manifest)


def _peft_recorded(claim: Claim) -> dict[str, Any]:
    kept = PEFT_OPTIONS[claim.method]
    return {name: value for name, value in claim.options.items() if name in kept}


def _rules_from_peft_config(model: GraphPeftModel, folder: Path) -> list[ResolvedRule]:
    where = str(folder / PEFT_CONFIG)
    config = read_json(folder / PEFT_CONFIG)
    if check_peft_config(config, where) in METHOD_BY_PEFT_TYPE:
        return rules_from_prompt_config(config, model.base_model, where)
    return rules_from_peft_config(config, model.sites(), where)


def _rules_from_manifest(record: dict[str, Any], folder: Path) -> list[ResolvedRule]:
    resolved = []
    try:
        for raw in record["rules"]:
            patterns = tuple(Pattern.from_dict(t, f"manifest rule {raw['name']!r}") for t in raw["targets"])
            options = {
                k: v for k, v in raw.items() if k not in ("name", "method", "targets", "required", "source", "also")
            }
            rule = Rule(raw["name"], raw["method"], patterns, options, raw.get("required", True))
            resolved.append(
                ResolvedRule(rule, tuple((repr(p.to_dict()), p) for p in patterns), raw.get("source", MANIFEST))
            )
    except GraphPeftError as exc:
        raise LoadError(f"{folder / MANIFEST} holds an invalid rule: {exc}") from None
    return resolved


def _check_manifest(model: GraphPeftModel, claims: Claims, record: dict[str, Any], folder: Path) -> None:
    """The manifest must be for this base graph, and its sites must be what its rules select, with their options."""
    saved = record["model"]
    if saved["fingerprint"] != fingerprint(model):
        raise LoadError(
            f"{folder} was saved for a different base graph (fingerprint mismatch: saved for "
            f"{saved.get('class')} / {saved.get('model_type')}, loading onto {type(model.base_model).__name__}); "
            "load it onto the base model it was trained on"
        )
    expected = record["sites"]
    if set(claims) != set(expected):
        missing = sorted(set(expected) ^ set(claims))[:3]
        raise LoadError(
            f"{folder}: the rules select other sites on this model than when saved (e.g. {missing}); wrong base model?"
        )
    for key, (_, claim) in claims.items():
        site = expected[key]
        difference = option_difference(
            {"method": site["method"], **site["options"]}, {"method": claim.method, **claim.options}
        )
        if difference:
            name, saved_value, value = difference
            raise LoadError(
                f"{folder / MANIFEST} records {name}={saved_value!r} for site {key}, "
                f"but its rules give {name}={value!r}; "
                "the manifest was edited or damaged, save the adapter again"
            )


def option_difference(recorded: dict[str, Any], options: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """``(name, recorded value, value in options)`` of the first recorded option that ``options`` does not share."""
    for name, value in recorded.items():
        if _as_json(value) != _as_json(options.get(name)):
            return name, value, options.get(name)
    return None


def _as_json(value: Any) -> Any:
    """``value`` as the manifest stores it (tuples become lists), so saved and live options compare."""
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------- tensors
def read_weights(model: GraphPeftModel, saved: SavedAdapter) -> dict[str, torch.Tensor]:
    """The tensors the claims need, by PEFT key; the header is checked before any data is read."""
    path = saved.folder / WEIGHTS
    header = read_header(path)
    expected = _expected(model, saved.claims)
    for key, (site, claim, suffix, shape) in expected.items():
        if key not in header:
            raise LoadError(f"{path} lacks tensor {key!r}; the file does not belong to this adapter config")
        if header[key][0] != shape:
            raise _shape_error(model, path, key, header[key][0], shape, site, claim, suffix)
    if saved.manifest is not None:
        _check_recorded_shapes(saved, saved.manifest, header, path)
    copies = _base_layer_keys(model, saved.claims, header, set(expected), path)
    unused = sorted(set(header) - set(expected) - set(copies))
    if unused:
        raise LoadError(f"{path} holds tensors no site of this model takes, e.g. {unused[:3]}; wrong base model?")
    tensors = read_tensors(path)
    for key, param in copies.items():
        _check_equal_to_base(key, tensors[key], param, path)
    return {key: tensors[key] for key in expected}


def _expected(model: GraphPeftModel, claims: Claims) -> dict[str, tuple[Site, Claim, str, tuple[int, ...]]]:
    out = {}
    for site, claim in claims.values():
        shapes = get_method(claim.method).state_shapes(site, claim.options, model.base_model)
        for suffix, shape in shapes.items():
            out[key_of(claims, site, claim.method, suffix)] = (site, claim, suffix, shape)
    return out


def _shape_error(
    model: GraphPeftModel,
    path: Path,
    key: str,
    got: tuple[int, ...],
    want: tuple[int, ...],
    site: Site,
    claim: Claim,
    suffix: str,
) -> LoadError:
    behind = _option_behind(model, site, claim, suffix, got, want)
    if behind is None:
        return LoadError(
            f"{path}: tensor {key!r} has shape {got}, but this model needs {want}; "
            "the adapter was made for a base model of another size"
        )
    name, value, dim = behind
    saved = f", tensors {name}={got[dim]}" if want[dim] == value else ""
    return LoadError(
        f"{path}: tensor {key!r} has shape {got}, but {name}={value} needs {want} (config {name}={value}{saved})"
    )


def _option_behind(
    model: GraphPeftModel, site: Site, claim: Claim, suffix: str, got: tuple[int, ...], want: tuple[int, ...]
) -> tuple[str, int, int] | None:
    """The integer option that sets exactly the sizes where ``got`` and ``want`` differ: ``(name, value, a dim)``.

    Found by asking the method for its shapes with that option one larger (a dry run, nothing allocated).
    """
    if len(got) != len(want):
        return None
    differ = {i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w}
    method = get_method(claim.method)
    for name, value in claim.options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            continue
        moved = method.state_shapes(site, {**claim.options, name: value + 1}, model.base_model).get(suffix, want)
        if {i for i, (m, w) in enumerate(zip(moved, want, strict=False)) if m != w} == differ:
            return name, value, min(differ)
    return None


def _check_recorded_shapes(saved: SavedAdapter, manifest: dict[str, Any], header: Header, path: Path) -> None:
    for key, (site, claim) in saved.claims.items():
        for suffix, shape in manifest["sites"][key]["tensors"].items():
            name = key_of(saved.claims, site, claim.method, suffix)
            if name not in header or header[name][0] != tuple(shape):
                found = header[name][0] if name in header else "nothing"
                raise LoadError(
                    f"{saved.folder / MANIFEST} records tensor {name!r} with shape {tuple(shape)}, "
                    f"but {path.name} holds "
                    f"{found}; the two files do not belong together"
                )


def _base_layer_keys(
    model: GraphPeftModel, claims: Claims, header: Header, expected: set[str], path: Path
) -> dict[str, torch.Tensor]:
    """``key -> base parameter`` for PEFT's copies of adapted layers' own weights (``<host>.base_layer.<param>``).

    PEFT saves them for targeted embedding layers and writes them into the base on load; graphpeft never
    changes a base weight from a file: such a key must name an adapted site, and (checked once the data
    is read) hold exactly the base's values.
    """
    hosts = {site.host for site, claim in claims.values() if not get_method(claim.method).virtual_tokens}
    out: dict[str, torch.Tensor] = {}
    for key in set(header) - expected:
        if not key.startswith(PREFIX) or ".base_layer." not in key:
            continue
        host, name = key[len(PREFIX) :].split(".base_layer.", 1)
        if host not in hosts:
            raise LoadError(
                f"{path}: tensor {key!r} would overwrite base weight {host}.{name}, which this adapter does not adapt; "
                "graphpeft never changes base weights from an adapter file"
            )
        try:
            param = model.base_model.get_parameter(f"{host}.{name}")
        except AttributeError:
            raise LoadError(f"{path}: tensor {key!r} names no parameter of {host}; wrong base model?") from None
        if header[key][0] != tuple(param.shape):
            raise LoadError(
                f"{path}: {key!r} has shape {header[key][0]}, "
                f"the model's {host}.{name} is {tuple(param.shape)}; wrong base model?"
            )
        out[key] = param
    return out


def _check_equal_to_base(key: str, value: torch.Tensor, param: torch.Tensor, path: Path) -> None:
    if not torch.equal(param.detach().cpu(), value.to(param.dtype)):
        raise LoadError(
            f"{path}: tensor {key!r} differs from the base model's own weight; PEFT would overwrite the base with it, "
            "graphpeft never changes base weights from an adapter file: load onto the base it was saved with"
        )
