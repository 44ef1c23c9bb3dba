"""PEFT's on-disk format for prompt learning (PROMPT_TUNING, P_TUNING, PREFIX_TUNING), both directions.

PEFT saves one tensor, ``prompt_embeddings`` (the encoder's output, no module prefix), and the
modules a sequence classifier trains in full under ``base_model.<fqn>.<param>`` (no ``.model``:
prompt learning wraps the base model directly). Loading a PEFT directory uses the built-in rule of
the same name for the model type (its sites say where the tokens go) with the config's options.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import LoadError
from ..rewrite.sites import Site
from ..rules.builtin import resolve_rules
from ..rules.registry import get_method
from ..rules.rule_set import ResolvedRule
from ..tracing.model_facts import is_encoder_decoder, model_geometry
from .peft_format import PEFT_VERSION, task_type

PROMPT_PREFIX = "base_model."
METHOD_BY_PEFT_TYPE = {"PROMPT_TUNING": "prompt_tuning", "P_TUNING": "p_tuning", "PREFIX_TUNING": "prefix_tuning"}
_INIT = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB", "text": "TEXT"}


def virtual_claims(claims: dict[str, tuple[Site, Any]]) -> list[tuple[Site, Any]]:
    return [(s, c) for s, c in claims.values() if get_method(c.method).virtual_tokens]


def prompt_learning_config(model: nn.Module, claims: dict[str, tuple[Site, Any]]) -> dict[str, Any] | None:
    """PEFT's ``adapter_config.json`` for a virtual-token adapter, or None if PEFT cannot express it."""
    virtual = virtual_claims(claims)
    if not virtual or any(c.method != "train" and not get_method(c.method).virtual_tokens for _, c in claims.values()):
        return None
    _, claim = virtual[0]
    options = claim.options
    geometry = model_geometry(model.config)
    trained = sorted(s.fqn for s, c in claims.values() if c.method == "train")
    config: dict[str, Any] = {
        "auto_mapping": None,
        "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None,
        "inference_mode": True,
        "modules_to_save": trained or None,
        "num_layers": geometry["layers"],
        "num_virtual_tokens": options["num_virtual_tokens"],
        "peft_type": get_method(claim.method).peft_type,
        "peft_version": PEFT_VERSION,
        "revision": None,
        "task_type": task_type(model),
        "num_transformer_submodules": 2 if is_encoder_decoder(model) else 1,
        "num_attention_heads": geometry["heads"],
        "token_dim": geometry["width"],
    }
    if claim.method == "prompt_tuning":
        by_text = options["init"] == "text" and options["init_text"] and options["tokenizer"]
        config.update(
            {
                "prompt_tuning_init": _INIT[options["init"]] if options["init"] != "text" or by_text else "RANDOM",
                "prompt_tuning_init_text": options["init_text"] or None,
                "tokenizer_name_or_path": options["tokenizer"] or None,
                "tokenizer_kwargs": None,
            }
        )
    elif claim.method == "p_tuning":
        config.update(
            {
                "encoder_reparameterization_type": options["encoder"].upper(),
                "encoder_hidden_size": options["encoder_hidden_size"] or geometry["width"],
                "encoder_num_layers": options["encoder_num_layers"],
                "encoder_dropout": options["encoder_dropout"],
            }
        )
    else:
        kv_width = geometry["kv_heads"] * geometry["head_dim"]
        config.update(
            {
                "num_attention_heads": geometry["kv_heads"],
                "token_dim": kv_width,
                "prefix_projection": options["prefix_projection"],
                "encoder_hidden_size": options["encoder_hidden_size"] or kv_width,
                "init_weights": None,
            }
        )
    return config


def rules_from_prompt_config(config: dict[str, Any], model: nn.Module, where: str) -> list[ResolvedRule]:
    """The built-in rule for the PEFT type (and its ``also`` rules), with the config's options.

    ``config`` passed :func:`graphpeft.io.peft_schema.check_peft_config`; ``where`` names its file.
    """
    method = METHOD_BY_PEFT_TYPE[config["peft_type"]]
    _check_geometry(config, model, method, where)
    options: dict[str, Any] = {"num_virtual_tokens": config["num_virtual_tokens"]}
    if method == "p_tuning":
        options.update(
            {
                "encoder": config.get("encoder_reparameterization_type", "MLP").lower(),
                "encoder_hidden_size": config.get("encoder_hidden_size") or 0,
                "encoder_num_layers": config.get("encoder_num_layers", 2),
                "encoder_dropout": float(config.get("encoder_dropout", 0.0)),
            }
        )
    elif method == "prefix_tuning":
        options.update(
            {
                "prefix_projection": config.get("prefix_projection", False),
                "encoder_hidden_size": config.get("encoder_hidden_size") or 0,
            }
        )
    return resolve_rules(model, method, options)


def _check_geometry(config: dict[str, Any], model: nn.Module, method: str, where: str) -> None:
    """The config's sizes that lay out the saved table must be this model's (PEFT writes them from the model)."""
    for key, value in _layout_keys(model, method).items():
        if config.get(key) is not None and config[key] != value:
            raise LoadError(
                f"{where} sets {key}={config[key]!r}, but this {type(model).__name__} has {key}={value}; "
                "the adapter was made for another model"
            )


def _layout_keys(model: nn.Module, method: str) -> dict[str, int]:
    """The config keys that decide how ``prompt_embeddings`` is laid out, as PEFT writes them for ``model``."""
    geometry = model_geometry(model.config)
    if method == "prefix_tuning":
        return {
            "num_layers": geometry["layers"],
            "num_attention_heads": geometry["kv_heads"],
            "token_dim": geometry["kv_heads"] * geometry["head_dim"],
        }
    return {"token_dim": geometry["width"], "num_transformer_submodules": 2 if is_encoder_decoder(model) else 1}
