"""Hostile adapter folders: every one fails with a LoadError that names the cause, reads nothing it should
not (no pickle, no tensor before its header is checked), allocates nothing the file does not hold, and
leaves every model exactly as it was. The machinery is in ``tests/catalogue.py``.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

import mlp
from catalogue import Case, apply, case_test, load, peft_config, without_manifest
from graphpeft.errors import LoadError, MatchError
from graphpeft.io.adapter_folder import restore_weights

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
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": table.shape[0],
        "token_dim": 32,
        "num_transformer_submodules": 1,
        "num_attention_heads": 4,
        "num_layers": 1,
        **changes,
    }
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
        header = json.loads(data[8 : 8 + length])
        header[min(k for k in header if k != "__metadata__")]["shape"] = shape
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data[8 + length :]

    return change


def oversized(folder: Path, name: str) -> Path:
    """``name`` made a 100 MB file (sparse: no disk space is used)."""
    with open(folder / name, "r+b") as handle:
        handle.truncate(100 * 2**20)
    return folder


def manifest_site(w, change) -> Path:
    """The folder with the manifest's record of the q_proj site changed by ``change(site record)``."""
    return w.manifest(lambda d: change(d["sites"]["model.layers.0.self_attn.q_proj:linear"]))


def restore(folder: Callable) -> Callable:
    return lambda w: restore_weights(w.wrapped, folder(w), "default")


def both_alphas(alpha: int):
    """Manifest edits that give the saved adapter another alpha, consistently (rule and sites)."""

    def change(data: dict) -> None:
        data["rules"][0]["alpha"] = alpha
        for site in data["sites"].values():
            site["options"]["alpha"] = alpha

    return change


# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
CASES = [
    # ------------------------------------------------ PEFT config keys graphpeft does not model (finding 1)
    Case("peft_init_pissa", load(lambda w: peft(w, init_lora_weights="pissa")), LoadError, "init_lora_weights='pissa'"),
    Case("peft_init_olora", load(lambda w: peft(w, init_lora_weights="olora")), LoadError, "init_lora_weights='olora'"),
    Case("peft_init_corda", load(lambda w: peft(w, init_lora_weights="corda")), LoadError, "init_lora_weights='corda'"),
    Case("peft_lora_bias", load(lambda w: peft(w, lora_bias=True)), LoadError, "lora_bias=True"),
    Case("peft_bias_all", load(lambda w: peft(w, bias="all")), LoadError, "bias='all'"),
    Case("peft_use_qalora", load(lambda w: peft(w, use_qalora=True)), LoadError, "use_qalora=True"),
    Case("peft_trainable_token_indices", load(lambda w: peft(w, trainable_token_indices=[3, 4])), LoadError, "trainable_token_indices=[3, 4]"),
    Case("peft_layer_replication", load(lambda w: peft(w, layer_replication=[[0, 1]])), LoadError, "layer_replication=[[0, 1]]"),
    Case("peft_megatron_config", load(lambda w: peft(w, megatron_config={"tensor_parallel": 2})), LoadError, "megatron_config="),
    Case("peft_target_parameters", load(lambda w: peft(w, target_parameters=["model.norm.weight"])), LoadError, "target_parameters=['model.norm.weight']"),
    Case("peft_alora_invocation_tokens", load(lambda w: peft(w, alora_invocation_tokens=[5, 6])), LoadError, "alora_invocation_tokens=[5, 6]"),
    Case("peft_ensure_weight_tying", load(lambda w: peft(w, ensure_weight_tying=True)), LoadError, "ensure_weight_tying=True"),
    Case("peft_unknown_key", load(lambda w: peft(w, lora_alfa=16)), LoadError, "unknown key 'lora_alfa' (did you mean 'lora_alpha'"),
    Case("peft_layers_pattern_regex", load(lambda w: peft(w, layers_to_transform=[0], layers_pattern="lay.rs")), LoadError, "key 'layers_pattern'"),
    # ------------------------------------------------ PEFT config types and values (findings 13, 15)
    Case("peft_r_as_word", load(lambda w: peft(w, r="four")), LoadError, "key 'r' must be integer, got 'four'"),
    Case("peft_r_fractional", load(lambda w: peft(w, r=4.5)), LoadError, "key 'r' must be integer, got 4.5"),
    Case("peft_use_rslora_as_string", load(lambda w: peft(w, use_rslora="false")), LoadError, "key 'use_rslora' must be boolean, got 'false'"),
    Case("peft_alpha_infinite", load(lambda w: peft(w, lora_alpha=float("inf"))), LoadError, "key 'lora_alpha' must be number, got inf"),
    Case("peft_dropout_out_of_range", load(lambda w: peft(w, lora_dropout=1.5)), LoadError, "key 'lora_dropout' = 1.5 must be in [0, 1)"),
    Case("peft_target_modules_number", load(lambda w: peft(w, target_modules=5)), LoadError, "key 'target_modules' must be string or list of strings or null, got 5"),
    Case("peft_type_as_list", load(lambda w: peft(w, peft_type=["LORA"])), LoadError, "key 'peft_type' must be string"),
    Case("peft_type_missing", load(lambda w: dropped(w, "peft_type")), LoadError, "key 'peft_type' is missing"),
    Case("peft_rank_pattern_fractional", load(lambda w: peft(w, rank_pattern={"q_proj": 2.5})), LoadError, "'q_proj' has 2.5"),
    Case("peft_modules_to_save_string", load(lambda w: peft(w, modules_to_save="lm_head")), LoadError, "key 'modules_to_save' must be list of strings or null"),
    # ------------------------------------------------ ranks: mismatched and memory bombs (findings 8, 16)
    Case("peft_rank_differs_from_tensors", load(lambda w: peft(w, r=8)), LoadError, "(config r=8, tensors r=4)"),
    Case("peft_rank_memory_bomb", load(lambda w: peft(w, r=2**26)), LoadError, "r=67108864 is larger than its 32x32 weight allows", timeout=30),
    Case("peft_rank_larger_than_layer", load(lambda w: peft(w, r=200)), LoadError, "r=200 is larger than its 32x32 weight allows"),
    Case("apply_rank_larger_than_layer", apply("lora", r=200), MatchError, "r=200 is larger than its 32x32 weight allows"),
    Case("apply_rank_memory_bomb", apply("lora", r=2**26), MatchError, "r=67108864 is larger", timeout=30),
    Case("manifest_rank_memory_bomb", load(lambda w: w.manifest(lambda d: d["rules"][0].update(r=2**26))), LoadError, "r=67108864 is larger", timeout=30),
    Case("prompt_tokens_memory_bomb", load(lambda w: prompt_folder(w, torch.zeros(4, 32), num_virtual_tokens=2**30)), LoadError,
         "(config num_virtual_tokens=1073741824, tensors num_virtual_tokens=4)", timeout=30),
    Case("prompt_token_dim_of_other_model", load(lambda w: prompt_folder(w, torch.zeros(4, 32), token_dim=64)), LoadError, "token_dim=64"),
    # ------------------------------------------------ weights files
    Case("weights_only_as_pickle", load(lambda w: pickled_only(w, with_config=True)), LoadError, "graphpeft never unpickles"),
    Case("folder_with_only_a_pickle", load(lambda w: pickled_only(w, with_config=False)), LoadError, "graphpeft never unpickles"),
    Case("safetensors_header_length_of_a_terabyte", load(lambda w: w.file("adapter_model.safetensors", header_length(2**40))), LoadError,
         "not a readable safetensors file", timeout=30),
    Case("safetensors_tensor_declared_huge", load(lambda w: w.file("adapter_model.safetensors", declared_shape([2**20, 2**20]))), LoadError,
         "not a readable safetensors file", timeout=30),
    Case("tensor_int64", load(lambda w: with_tensor(w, Q_A, torch.zeros(4, 32, dtype=torch.int64))), LoadError, "has dtype I64"),
    Case("tensor_bool", load(lambda w: with_tensor(w, Q_A, torch.zeros(4, 32, dtype=torch.bool))), LoadError, "has dtype BOOL"),
    Case("tensor_complex", load(lambda w: with_tensor(w, Q_A, torch.zeros(4, 32, dtype=torch.complex64))), LoadError, "has dtype C64"),
    Case("tensor_with_nan", load(lambda w: with_tensor(w, Q_A, torch.full((4, 32), float("nan")))), LoadError, "holds 128 NaN or infinite values"),
    Case("tensor_with_inf", load(lambda w: w.tensors(lambda t: t[Q_A].__setitem__((0, 0), float("inf")))), LoadError, "holds 1 NaN or infinite values"),
    # ------------------------------------------------ tensors that would change the base model (finding 6)
    Case("base_layer_key_of_unadapted_module", load(lambda w: with_tensor(w, "base_model.model.model.norm.base_layer.weight", torch.zeros(32))),
         LoadError, "would overwrite base weight model.norm.weight, which this adapter does not adapt"),
    Case("base_layer_key_of_adapted_site_with_other_values", load(lambda w: with_tensor(w, Q_BASE, torch.ones(32, 32))), LoadError,
         "differs from the base model's own weight"),
    Case("base_layer_key_in_peft_folder", load(lambda w: without_manifest(with_tensor(w, Q_BASE, torch.ones(32, 32)))), LoadError,
         "graphpeft never changes base weights"),
    # ------------------------------------------------ manifests (finding 15)
    Case("manifest_nested_too_deep", load(lambda w: w.file("graphpeft.json", lambda b: b"[" * 200_000 + b"]" * 200_000)), LoadError, "nests JSON deeper"),
    Case("manifest_of_a_hundred_megabytes", load(lambda w: oversized(w.copy(), "graphpeft.json")), LoadError, "more than any adapter config or manifest"),
    Case("manifest_model_not_an_object", load(lambda w: w.manifest(lambda d: d.update(model="x"))), LoadError, "key 'model' must be object, got 'x'"),
    Case("manifest_sites_not_an_object", load(lambda w: w.manifest(lambda d: d.update(sites=7))), LoadError, "key 'sites' must be object, got 7"),
    Case("manifest_site_not_an_object", load(lambda w: w.manifest(lambda d: d["sites"].update({"x": 1}))), LoadError, "'x' has 1"),
    Case("manifest_rule_name_not_a_string", load(lambda w: w.manifest(lambda d: d["rules"][0].update(name=3))), LoadError, "key 'name' must be string"),
    Case("manifest_fingerprint_missing", load(lambda w: w.manifest(lambda d: d["model"].pop("fingerprint"))), LoadError, "key 'fingerprint' is missing"),
    Case("manifest_format_version_as_string", load(lambda w: w.manifest(lambda d: d.update(format_version="1"))), LoadError, "key 'format_version' must be integer"),
    Case("manifest_names_another_weights_file", load(lambda w: w.manifest(lambda d: d.update(weights="../model.bin"))), LoadError, "must be 'adapter_model.safetensors'"),
    Case("manifest_unknown_key", load(lambda w: w.manifest(lambda d: d.update(weigths="x"))), LoadError, "unknown key 'weigths'"),
    Case("manifest_tensor_shape_disagrees_with_weights", load(lambda w: manifest_site(w, lambda s: s["tensors"].update({"lora_A.weight": [5, 32]}))),
         LoadError, "the two files do not belong together"),
    Case("manifest_site_options_disagree_with_rules", load(lambda w: manifest_site(w, lambda s: s["options"].update(alpha=99))), LoadError,
         "records alpha=99 for site model.layers.0.self_attn.q_proj:linear"),
    Case("manifest_of_other_base_sites", load(lambda w: w.manifest(lambda d: d["sites"].update({"model.layers.7.mlp.up_proj:linear": d["sites"].popitem()[1]}))),
         LoadError, "the rules select other sites"),
    # ------------------------------------------------ restoring into a live adapter (finding 3)
    Case("restore_with_other_alpha", restore(lambda w: w.manifest(both_alphas(16))), LoadError, "saved with alpha=16"),
    Case("restore_peft_folder_with_other_alpha", restore(lambda w: peft(w, lora_alpha=16)), LoadError, "saved with alpha=16"),
    Case("restore_peft_folder_with_rslora", restore(lambda w: peft(w, use_rslora=True)), LoadError, "saved with rslora=True"),
    Case("restore_with_nan_weights", restore(lambda w: with_tensor(w, Q_A, torch.full((4, 32), float("nan")))), LoadError, "NaN or infinite"),
]
# fmt: on


test_hostile_input_raises_named_error_and_leaves_model_unchanged = case_test(CASES)


def test_restore_from_a_peft_folder_with_the_same_options_copies_its_weights_into_the_same_parameters(tmp_path):
    mlp.adapted(seed=0).save_pretrained(str(tmp_path / "saved"))
    (tmp_path / "saved" / "graphpeft.json").unlink()
    live = mlp.adapted(seed=1)
    parameters = live.adapter_parameters()
    restore_weights(live, tmp_path / "saved")
    saved = mlp.adapted(seed=0).adapter_parameters()
    for name, param in live.adapter_parameters().items():
        assert param is parameters[name]
        assert torch.equal(param, saved[name]), name
