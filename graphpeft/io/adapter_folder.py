"""Save and load adapters: safetensors weights, PEFT's config, graphpeft's manifest.

A saved adapter directory holds
  - ``adapter_model.safetensors``: tensors under PEFT's keys (``base_model.model.<fqn>.<suffix>``);
  - ``adapter_config.json``: PEFT's config, when PEFT can express the adapter (PEFT then loads it);
  - ``graphpeft.json``: the manifest: rules, sites, tensor shapes, versions, base-graph fingerprint.
Adapters other than ``default`` go in sub-folders named after them (PEFT's layout).
Writes are atomic and replace only these files, keeping anything else in the folder (see
:mod:`graphpeft.io.atomic_dir`). Loading reads only JSON and safetensors; nothing is unpickled or
executed, and no link out of the folder is followed (see :mod:`graphpeft.io.adapter_paths`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from safetensors.torch import save_file

from ..errors import AdapterError, GraphPeftError, LoadError
from ..rewrite.adapter_names import check_adapter_name
from ..rewrite.sites import Site
from ..rules.registry import get_method
from ..rules.rule_set import ResolvedRule
from ..version import __version__
from .adapter_paths import check_adapter_files, check_folder, check_sub_folder, link_root
from .adapter_reading import (
    MANIFEST,
    PEFT_CONFIG,
    SavedAdapter,
    fingerprint,
    key_of,
    option_difference,
    read_saved,
    read_weights,
)
from .atomic_dir import recover, write_directory
from .manifest_schema import FORMAT, FORMAT_VERSION
from .peft_format import peft_config
from .peft_prompt_format import prompt_learning_config, virtual_claims
from .tensor_file import WEIGHTS, read_header
from .tensor_file import read_tensors as _read_checked

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel

OWNED_FILES = (MANIFEST, WEIGHTS, PEFT_CONFIG)


def tensor_key(model: GraphPeftModel, adapter: str, site: Site, method: str, suffix: str) -> str:
    """PEFT's key of one tensor of adapter ``adapter`` (see :func:`graphpeft.io.adapter_reading.key_of`)."""
    return key_of(model.adapter_specs[adapter].claims, site, method, suffix)


def adapter_tensors(model: GraphPeftModel, adapter: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors under PEFT's keys, ready to save (contiguous CPU copies)."""
    out = {}
    with torch.no_grad():
        for site, claim in model.adapter_specs[adapter].claims.values():
            for suffix, tensor in get_method(claim.method).state(site, model.adapters, adapter).items():
                out[tensor_key(model, adapter, site, claim.method, suffix)] = (
                    tensor.detach().to("cpu").contiguous().clone()
                )
    return out


def manifest(model: GraphPeftModel, adapter: str, tensors: dict[str, torch.Tensor], peft_ok: bool) -> dict[str, Any]:
    spec = model.adapter_specs[adapter]
    base = model.base_model
    return {
        "format": FORMAT,
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


def save_pretrained(
    model: GraphPeftModel, directory: str | os.PathLike, adapter_names: list[str] | None = None, overwrite: bool = False
) -> None:
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
    peft = (
        prompt_learning_config(model.base_model, claims)
        if virtual_claims(claims)
        else peft_config(model.base_model, claims)
    )
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    if peft is not None:
        (folder / PEFT_CONFIG).write_text(json.dumps(peft, indent=2, sort_keys=True) + "\n")
    (folder / MANIFEST).write_text(json.dumps(manifest(model, name, tensors, peft is not None), indent=2) + "\n")


# ---------------------------------------------------------------------- load
def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file (floating point and finite, else LoadError)."""
    read_header(path)
    return _read_checked(path)


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


def load_into(
    model: GraphPeftModel, directory: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False
) -> None:
    """Add the adapter saved in ``directory`` to ``model``; on any error ``model`` is unchanged.

    The folder is read and checked in full (every config key, the weights' header against the shapes
    the adapter needs, finite values, no tensor that would change a base weight) before any parameter
    is created.
    """
    check_adapter_name(adapter_name)
    if adapter_name in model.adapter_specs:
        raise AdapterError(
            f"adapter {adapter_name!r} already exists; "
            f"pass another adapter_name or delete_adapter({adapter_name!r}) first"
        )
    folder = _adapter_folder(directory)
    saved = read_saved(model, folder, adapter_name)
    tensors = read_weights(model, saved)
    grads = {id(p): p.requires_grad for p in model.base_model.parameters()}
    try:
        model.add_adapter(adapter_name, saved.rules)
        _copy_tensors(model, adapter_name, tensors)
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
    a training run). The folder must have been saved from an adapter with the same sites, methods and
    options (r, alpha, dropout, ...): weights trained under other options would compute other numbers.
    """
    spec = model._spec(adapter_name)
    folder = _adapter_folder(directory)
    saved = read_saved(model, folder, adapter_name)
    _check_same_adapter(saved, spec.claims, adapter_name)
    tensors = read_weights(model, saved)
    backup = {name: param.detach().clone() for name, param in model.adapter_parameters(adapter_name).items()}
    try:
        _copy_tensors(model, adapter_name, tensors)
    except BaseException:
        with torch.no_grad():
            for name, param in model.adapter_parameters(adapter_name).items():
                param.copy_(backup[name])
        raise


def _adapter_folder(directory: str | os.PathLike) -> Path:
    folder = Path(directory)
    prepare_folder(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder} is not a directory; pass the folder save_pretrained wrote")
    return folder


def _check_same_adapter(saved: SavedAdapter, claims: dict[str, tuple[Site, Any]], adapter: str) -> None:
    """The folder's adapter must be the live one but for its weights: same sites, methods and options."""
    if set(saved.claims) != set(claims):
        raise LoadError(
            f"{saved.folder} holds an adapter for other sites than adapter {adapter!r}; "
            "load it as a new adapter instead"
        )
    for key, (_, live) in claims.items():
        recorded = {"method": saved.claims[key][1].method, **saved.recorded[key]}
        difference = option_difference(recorded, {"method": live.method, **live.options})
        if difference:
            name, saved_value, value = difference
            raise LoadError(
                f"{saved.folder} was saved with {name}={saved_value!r} at {key}, but adapter {adapter!r} has "
                f"{name}={value!r}; restoring copies weights only: load the folder as a new adapter instead"
            )


def _copy_tensors(model: GraphPeftModel, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checked tensors (by PEFT key) into the adapter's parameters, in their device and dtype."""
    for site, claim in model.adapter_specs[adapter].claims.values():
        method = get_method(claim.method)
        wanted = {}
        for suffix, param in method.state(site, model.adapters, adapter).items():
            value = tensors[tensor_key(model, adapter, site, claim.method, suffix)]
            wanted[suffix] = value.to(device=param.device, dtype=param.dtype)
        method.load_state(site, model.adapters, adapter, wanted)
