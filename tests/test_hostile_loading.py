"""Hostile adapter folders: every one fails with a LoadError that names the cause, reads nothing it should
not (no pickle, no tensor before its header is checked), allocates nothing the file does not hold, and
leaves every model exactly as it was. The machinery is in ``tests/catalogue.py``.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from catalogue import Case, apply, check_case, load, make_world, peft_config, without_manifest
from safetensors.torch import save_file

from graphpeft.checkpoint import restore_weights
from graphpeft.errors import LoadError, MatchError

Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_BASE = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"


def peft(w, **changes) -> Path:
    """The world's adapter as a PEFT-only folder, its adapter_config.json changed."""
    return peft_config(without_manifest(w.copy()), **changes)


def dropped(w, key: str) -> Path:
    """The PEFT-only folder without config key ``key``."""
    folder = without_manifest(w.copy())
    data = json.loads((folder / "adapter_config.json").read_text())
    data.pop(key)
    (folder / "adapter_config.json").write_text(json.dumps(data))
    return folder


def with_tensor(w, key: str, value: torch.Tensor) -> Path:
    return w.tensors(lambda t: t.update({key: value}))


def prompt_folder(w, table: torch.Tensor, **changes) -> Path:
    """A PEFT prompt-tuning folder for the tiny llama, written by hand: config and ``prompt_embeddings``."""
    folder = w.tmp / "prompt"
    folder.mkdir()
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": table.shape[0],
              "token_dim": 32, "num_transformer_submodules": 1, "num_attention_heads": 4, "num_layers": 1, **changes}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({"prompt_embeddings": table}, folder / "adapter_model.safetensors")
    return folder


def pickled_only(w, with_config: bool) -> Path:
    """A folder whose weights are a pickle (that would write a file if unpickled)."""
    folder = without_manifest(w.copy())
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    if not with_config:
        (folder / "adapter_config.json").unlink()
    return folder


def header_length(claimed: int):
    """The weights file with its 8-byte header length replaced by ``claimed``."""
    return lambda data: struct.pack("<Q", claimed) + data[8:]


def declared_shape(shape: list[int]):
    """The weights file with the first tensor's header shape replaced (the data stays as it is)."""

    def change(data: bytes) -> bytes:
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + length])
        header[sorted(k for k in header if k != "__metadata__")[0]]["shape"] = shape
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data[8 + length:]

    return change


def manifest_site(w, change) -> Path:
    """The folder with the manifest's record of the q_proj site changed by ``change(site record)``."""
    return w.manifest(lambda d: change(d["sites"]["model.layers.0.self_attn.q_proj:linear"]))


def restore(folder) -> callable:
    return lambda w: restore_weights(w.wrapped, folder(w), "default")


def both_alphas(alpha: int):
    """Manifest edits that give the saved adapter another alpha, consistently (rule and sites)."""

    def change(data: dict) -> None:
        data["rules"][0]["alpha"] = alpha
        for site in data["sites"].values():
            site["options"]["alpha"] = alpha

    return change


CASES = [
    Case("apply_rank_larger_than_layer", apply("lora", r=200), MatchError, "r=200 is larger than its 32x32 weight allows"),
    Case("apply_rank_memory_bomb", apply("lora", r=2**26), MatchError, "r=67108864 is larger", timeout=30),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return make_world(tmp_path_factory)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_raises_named_error_and_leaves_model_unchanged(case, shared, tmp_path, capfd):
    check_case(case, shared, tmp_path, capfd)
