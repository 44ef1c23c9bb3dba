"""Save and load adapters: safetensors weights, PEFT's config, graphpeft's manifest.

A saved adapter directory holds
  - ``adapter_model.safetensors``: tensors under PEFT's keys (``base_model.model.<fqn>.<suffix>``);
  - ``adapter_config.json``: PEFT's config, when PEFT can express the adapter (PEFT then loads it);
  - ``graphpeft.json``: the manifest: rules, sites, tensor shapes, versions, base-graph fingerprint.
Adapters other than ``default`` go in sub-folders named after them (PEFT's layout).
Writes are atomic and replace only these files, keeping anything else in the folder (see
:mod:`graphpeft.atomic_dir`). Loading reads only JSON and safetensors; nothing is unpickled or
executed, and no link out of the folder is followed (see :mod:`graphpeft.adapter_paths`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adapter_paths import check_adapter_files, check_folder, check_sub_folder, link_root
from .atomic_dir import recover, write_directory
from .errors import AdapterError, GraphPeftError, LoadError
from .match import ResolvedRule
from .methods import get_method
from .peft_format import PREFIX, peft_config, rules_from_peft_config
from .peft_prompt_format import METHOD_BY_PEFT_TYPE, PROMPT_PREFIX, prompt_learning_config, rules_from_prompt_config, virtual_claims
from .rules import Pattern, Rule
from .runtime import GraphPeftModel, check_adapter_name
from .sites import Site

MANIFEST = "graphpeft.json"
WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
FORMAT_VERSION = 1
OWNED_FILES = (MANIFEST, WEIGHTS, PEFT_CONFIG)


def fingerprint(model: GraphPeftModel) -> str:
    """sha256 over the base graph's op sites (key, module class, weight shape)."""
    rows = [[s.key, s.cls.rsplit(".", 1)[-1], list(s.weight_shape or ())] for s in model.sites() if s.op != "module"]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def tensor_key(model: GraphPeftModel, adapter: str, site: Site, method: str, suffix: str) -> str:
    """PEFT's key of one tensor: ``base_model.model.<fqn>.<suffix>``; prompt learning: ``prompt_embeddings``
    and ``base_model.<fqn>.<param>`` for fully trained modules."""
    if get_method(method).virtual_tokens:
        return suffix
    prompt_learning = bool(virtual_claims(model.adapter_specs[adapter].claims))
    return f"{PROMPT_PREFIX if prompt_learning else PREFIX}{site.host}.{suffix}"


def adapter_tensors(model: GraphPeftModel, adapter: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors under PEFT's keys, ready to save (contiguous CPU copies)."""
    out = {}
    with torch.no_grad():
        for site, claim in model.adapter_specs[adapter].claims.values():
            for suffix, tensor in get_method(claim.method).state(site, model.adapters, adapter).items():
                out[tensor_key(model, adapter, site, claim.method, suffix)] = tensor.detach().to("cpu").contiguous().clone()
    return out


def manifest(model: GraphPeftModel, adapter: str, tensors: dict[str, torch.Tensor], peft_ok: bool) -> dict[str, Any]:
    import transformers

    from . import __version__

    spec = model.adapter_specs[adapter]
    base = model.base_model
    return {
        "format": "graphpeft-adapter",
        "format_version": FORMAT_VERSION,
        "adapter_name": adapter,
        "versions": {"graphpeft": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "model": {
            "class": type(base).__name__,
            "model_type": getattr(getattr(base, "config", None), "model_type", None),
            "fingerprint": fingerprint(model),
        },
        "rules": [_rule_record(r) for r in spec.rules],
        "sites": {
            key: {
                "rule": claim.rule,
                "method": claim.method,
                "options": claim.options,
                "tensors": {
                    suffix: list(tensors[tensor_key(model, adapter, site, claim.method, suffix)].shape)
                    for suffix in get_method(claim.method).state(site, model.adapters, adapter)
                },
            }
            for key, (site, claim) in spec.claims.items()
        },
        "weights": WEIGHTS,
        "peft_compatible": peft_ok,
    }


def _rule_record(resolved: ResolvedRule) -> dict[str, Any]:
    record = resolved.rule.to_dict()
    record["targets"] = [p.to_dict() for _, p in resolved.patterns]
    record["source"] = resolved.source
    return record


def save_pretrained(model: GraphPeftModel, directory: str | os.PathLike, adapter_names: list[str] | None = None, overwrite: bool = False) -> None:
    """Write the adapters to ``directory`` (default at the top, others in sub-folders), atomically.

    With ``overwrite=True`` only the adapter files are replaced: other files and folders in
    ``directory`` (a trainer's ``optimizer.pt``, ``checkpoint-*/``) stay as they are. A ``directory``
    that is a symbolic link is written through: the files land in its target, the link stays.
    """
    names = list(adapter_names) if adapter_names is not None else list(model.adapter_specs)
    for name in names:
        model._spec(name)

    def write(staging: Path) -> None:
        for name in names:
            folder = staging if name == "default" else staging / name
            folder.mkdir(exist_ok=True)
            _write_adapter(model, name, folder)

    write_directory(directory, write, overwrite, OWNED_FILES)


def _write_adapter(model: GraphPeftModel, name: str, folder: Path) -> None:
    tensors = adapter_tensors(model, name)
    claims = model.adapter_specs[name].claims
    peft = prompt_learning_config(model.base_model, claims) if virtual_claims(claims) else peft_config(model.base_model, claims)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    if peft is not None:
        (folder / PEFT_CONFIG).write_text(json.dumps(peft, indent=2, sort_keys=True) + "\n")
    (folder / MANIFEST).write_text(json.dumps(manifest(model, name, tensors, peft is not None), indent=2) + "\n")


# ---------------------------------------------------------------------- load
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise LoadError(f"{path} is not valid JSON ({exc}); the file is corrupted, save the adapter again") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path} must hold a JSON object")
    return data


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LoadError(f"{path} is missing; an adapter directory needs {WEIGHTS}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise LoadError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may be truncated or corrupted") from None


def is_adapter_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an adapter's manifest or PEFT config (of any file type: the load checks it)."""
    return os.path.lexists(folder / MANIFEST) or os.path.lexists(folder / PEFT_CONFIG)


def adapter_folders(directory: str | os.PathLike, top_name: str = "default") -> list[tuple[str, Path]]:
    """``(adapter name, folder)`` for the adapter at the top of ``directory`` and each sub-folder adapter.

    A sub-folder that is a symbolic link out of ``directory`` (and out of its Hugging Face cache
    repo) is refused with a LoadError if it holds an adapter, and ignored otherwise.
    """
    folder = Path(directory)
    check_folder(folder)
    found = [(top_name, folder)] if is_adapter_folder(folder) else []
    if folder.is_dir():
        root = link_root(folder)
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and is_adapter_folder(sub):
                check_sub_folder(sub, root)
                found.append((sub.name, sub))
    return found or [(top_name, folder)]  # load_into explains why the folder is not an adapter


def prepare_folder(folder: Path) -> None:
    """Before reading ``folder``: repair a killed save of it, then refuse adapter files that are links
    out of the folder or not regular files (a FIFO would block the read)."""
    recover(folder, OWNED_FILES)
    check_adapter_files(folder, OWNED_FILES)


def load_into(model: GraphPeftModel, directory: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False) -> None:
    """Add the adapter saved in ``directory`` to ``model``; on any error ``model`` is unchanged."""
    check_adapter_name(adapter_name)
    if adapter_name in model.adapter_specs:
        raise AdapterError(
            f"adapter {adapter_name!r} already exists; pass another adapter_name or delete_adapter({adapter_name!r}) first"
        )
    folder = Path(directory)
    prepare_folder(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder} is not a directory; pass the folder save_pretrained wrote")
    if (folder / MANIFEST).is_file():
        record = read_json(folder / MANIFEST)
        rules = _rules_from_manifest(record, folder)
    elif (folder / PEFT_CONFIG).is_file():
        record = None
        config = read_json(folder / PEFT_CONFIG)
        if config.get("peft_type") in METHOD_BY_PEFT_TYPE:
            rules = rules_from_prompt_config(config, model.base_model)
        else:
            rules = rules_from_peft_config(config, model.sites())
    else:
        raise LoadError(f"{folder} holds neither {MANIFEST} nor {PEFT_CONFIG}; it is not an adapter directory")
    tensors = read_tensors(folder / WEIGHTS)
    grads = {id(p): p.requires_grad for p in model.base_model.parameters()}
    try:
        model.add_adapter(adapter_name, rules)
        if record is not None:
            _check_manifest(model, adapter_name, record, folder)
        _copy_tensors(model, adapter_name, tensors, folder)
    except BaseException as exc:
        model.delete_adapter_state(adapter_name)
        for param in model.base_model.parameters():
            param.requires_grad_(grads.get(id(param), param.requires_grad))
        if isinstance(exc, GraphPeftError) and not isinstance(exc, LoadError):
            raise LoadError(f"cannot load {folder} onto {type(model.base_model).__name__}: {exc}") from exc
        raise
    if not is_trainable:
        for param in model.adapter_parameters(adapter_name).values():
            param.requires_grad_(False)


def restore_weights(model: GraphPeftModel, directory: str | os.PathLike, adapter_name: str = "default") -> None:
    """Copy the weights saved in ``directory`` into the existing adapter ``adapter_name``, in place.

    The parameters stay the same objects, so an optimizer that holds them keeps working (resuming
    a training run). The folder must have been saved from an adapter with the same sites.
    """
    spec = model._spec(adapter_name)
    folder = Path(directory)
    prepare_folder(folder)
    if (folder / MANIFEST).is_file():
        saved_sites = set(read_json(folder / MANIFEST).get("sites", {}))
        if saved_sites != set(spec.claims):
            raise LoadError(f"{folder} holds an adapter for other sites than adapter {adapter_name!r}; load it as a new adapter instead")
    tensors = read_tensors(folder / WEIGHTS)
    backup = {name: param.detach().clone() for name, param in model.adapter_parameters(adapter_name).items()}
    try:
        _copy_tensors(model, adapter_name, tensors, folder)
    except BaseException:
        with torch.no_grad():
            for name, param in model.adapter_parameters(adapter_name).items():
                param.copy_(backup[name])
        raise


def _rules_from_manifest(record: dict[str, Any], folder: Path) -> list[ResolvedRule]:
    version = record.get("format_version")
    if record.get("format") != "graphpeft-adapter" or not isinstance(version, int):
        raise LoadError(f"{folder / MANIFEST} is not a graphpeft manifest")
    if version > FORMAT_VERSION:
        raise LoadError(
            f"{folder / MANIFEST} has format_version {version}, newer than this graphpeft reads ({FORMAT_VERSION}); "
            "upgrade graphpeft"
        )
    resolved = []
    try:
        for raw in record["rules"]:
            patterns = tuple(Pattern.from_dict(t, f"manifest rule {raw['name']!r}") for t in raw["targets"])
            options = {k: v for k, v in raw.items() if k not in ("name", "method", "targets", "required", "source", "also")}
            rule = Rule(raw["name"], raw["method"], patterns, options, raw.get("required", True))
            resolved.append(ResolvedRule(rule, tuple((p.to_dict().__repr__(), p) for p in patterns), raw.get("source", MANIFEST)))
    except (KeyError, TypeError) as exc:
        raise LoadError(f"{folder / MANIFEST} is malformed (missing or wrong field {exc}); save the adapter again") from None
    except GraphPeftError as exc:
        raise LoadError(f"{folder / MANIFEST} holds an invalid rule: {exc}") from None
    return resolved


def _check_manifest(model: GraphPeftModel, adapter: str, record: dict[str, Any], folder: Path) -> None:
    saved = record.get("model", {})
    if saved.get("fingerprint") != fingerprint(model):
        raise LoadError(
            f"{folder} was saved for a different base graph (fingerprint mismatch: saved for "
            f"{saved.get('class')} / {saved.get('model_type')}, loading onto {type(model.base_model).__name__}); "
            "load it onto the base model it was trained on"
        )
    claimed = set(model.adapter_specs[adapter].claims)
    expected = set(record.get("sites", {}))
    if claimed != expected:
        missing = sorted(expected - claimed)[:3]
        raise LoadError(f"{folder}: the rules select other sites on this model than when saved (e.g. {missing}); wrong base model?")


def _copy_tensors(model: GraphPeftModel, adapter: str, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    used = set()
    for site, claim in model.adapter_specs[adapter].claims.values():
        method = get_method(claim.method)
        wanted = {}
        for suffix, param in method.state(site, model.adapters, adapter).items():
            key = tensor_key(model, adapter, site, claim.method, suffix)
            if key not in tensors:
                raise LoadError(f"{folder / WEIGHTS} lacks tensor {key!r}; the file does not belong to this adapter config")
            if tuple(tensors[key].shape) != tuple(param.shape):
                raise LoadError(
                    f"{folder / WEIGHTS}: tensor {key!r} has shape {tuple(tensors[key].shape)}, but this model needs "
                    f"{tuple(param.shape)}; the adapter was made for a base model of another size"
                )
            wanted[suffix] = tensors[key].to(device=param.device, dtype=param.dtype)
            used.add(key)
        method.load_state(site, model.adapters, adapter, wanted)
    base_copies = _base_layer_tensors(model, tensors, used, folder)
    unused = sorted(set(tensors) - used)
    if unused:
        raise LoadError(f"{folder / WEIGHTS} holds tensors no site of this model takes, e.g. {unused[:3]}; wrong base model?")
    with torch.no_grad():
        for param, value in base_copies:
            param.copy_(value)


def _base_layer_tensors(model: GraphPeftModel, tensors: dict[str, torch.Tensor], used: set[str], folder: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PEFT saves adapted embedding layers' own weights (``<fqn>.base_layer.weight``) too; load them as PEFT does."""
    out = []
    for key, value in tensors.items():
        if key in used or ".base_layer." not in key or not key.startswith(PREFIX):
            continue
        fqn = key[len(PREFIX):].replace(".base_layer.", ".")
        try:
            param = model.base_model.get_parameter(fqn)
        except AttributeError:
            continue
        if tuple(param.shape) != tuple(value.shape):
            raise LoadError(f"{folder / WEIGHTS}: {key!r} has shape {tuple(value.shape)}, the model's {fqn} is {tuple(param.shape)}")
        used.add(key)
        if not torch.equal(param.detach().cpu(), value.to(param.dtype)):
            out.append((param, value.to(device=param.device, dtype=param.dtype)))
    return out
