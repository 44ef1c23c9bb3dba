"""PEFT's on-disk format: ``adapter_config.json`` and tensor keys, both directions.

PEFT 0.21 keys are ``base_model.model.<fqn>.<suffix>`` with the adapter name
removed (``lora_A.weight``, ``lora_embedding_A``, ``lora_magnitude_vector``,
``ia3_l``; ``modules_to_save`` copies under the module's own parameter names).
LoRA and IA3 adapters (each optionally with ``modules_to_save``) have a PEFT config;
any other adapter is saved in graphpeft's format only.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import LoadError
from ..rewrite.sites import Site
from ..rules.bounded_regex import compile_peft_key, compile_regex
from ..rules.pattern import Pattern
from ..rules.rule import Rule
from ..rules.rule_set import ResolvedRule

PREFIX = "base_model.model."
PEFT_VERSION = "0.21.2"

_TASK_BY_CLASS_SUFFIX = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
)

LORA_CONFIG_DEFAULTS: dict[str, Any] = {
    "alora_invocation_tokens": None,
    "alpha_pattern": {},
    "arrow_config": None,
    "auto_mapping": None,
    "base_model_name_or_path": None,
    "bias": "none",
    "corda_config": None,
    "ensure_weight_tying": False,
    "eva_config": None,
    "exclude_modules": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "kasa_config": None,
    "layer_replication": None,
    "layers_pattern": None,
    "layers_to_transform": None,
    "loftq_config": {},
    "lora_alpha": 8,
    "lora_bias": False,
    "lora_dropout": 0.0,
    "lora_ga_config": None,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "modules_to_save": None,
    "monteclora_config": None,
    "peft_type": "LORA",
    "peft_version": PEFT_VERSION,
    "qalora_group_size": 16,
    "r": 8,
    "rank_pattern": {},
    "revision": None,
    "target_modules": None,
    "target_parameters": None,
    "task_type": None,
    "trainable_token_indices": None,
    "use_bdlora": None,
    "use_dora": False,
    "use_qalora": False,
    "use_rslora": False,
    "velora_config": None,
}


def task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    for suffix, task in _TASK_BY_CLASS_SUFFIX:
        if name.endswith(suffix):
            return task
    return None


IA3_CONFIG_DEFAULTS: dict[str, Any] = {
    "auto_mapping": None,
    "base_model_name_or_path": None,
    "exclude_modules": None,
    "fan_in_fan_out": False,
    "feedforward_modules": None,
    "inference_mode": True,
    "init_ia3_weights": True,
    "modules_to_save": None,
    "peft_type": "IA3",
    "peft_version": PEFT_VERSION,
    "revision": None,
    "target_modules": None,
    "task_type": None,
}


def peft_config(model: nn.Module, claims: dict[str, tuple[Site, Any]]) -> dict[str, Any] | None:
    """PEFT's ``adapter_config.json`` for an adapter, or None if PEFT cannot express it."""
    methods = {c.method for _, c in claims.values()} - {"train"}
    if methods == {"lora"}:
        return lora_config(model, claims)
    if methods == {"ia3"}:
        return ia3_config(model, claims)
    return None


def ia3_config(model: nn.Module, claims: dict[str, tuple[Site, Any]]) -> dict[str, Any] | None:
    """PEFT's IA3 config: every IA3 site in ``target_modules``, input-scaled ones also in ``feedforward_modules``."""
    ia3 = [(s, c) for s, c in claims.values() if c.method == "ia3"]
    if len({s.fqn for s, _ in ia3}) != len(ia3) or any(c.options["init"] != "ones" for _, c in ia3):
        return None  # PEFT has one IA3 vector per module and initialises it to ones
    config = dict(IA3_CONFIG_DEFAULTS)
    config.update(
        {
            "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
            "task_type": task_type(model),
            "target_modules": sorted(s.fqn for s, _ in ia3),
            "feedforward_modules": sorted(s.fqn for s, c in ia3 if c.options["feedforward"]),
            "fan_in_fan_out": any(s.transposed for s, _ in ia3),
            "modules_to_save": sorted(s.fqn for s, c in claims.values() if c.method == "train") or None,
        }
    )
    return config


def lora_config(model: nn.Module, claims: dict[str, tuple[Site, Any]]) -> dict[str, Any] | None:
    """PEFT's LoRA config for an adapter of LoRA (and train) claims, or None if PEFT cannot express it."""
    lora = [(s, c) for s, c in claims.values() if c.method == "lora"]
    trained = [s.fqn for s, c in claims.values() if c.method == "train"]
    if not lora or any(c.method not in ("lora", "train") for _, c in claims.values()):
        return None
    shared = {(c.options["dropout"], c.options["rslora"], c.options["dora"]) for _, c in lora}
    if len(shared) > 1 or len({s.fqn for s, _ in lora}) != len(lora):
        return None  # PEFT has one dropout/rslora/dora per adapter and one LoRA per module
    if any(
        s.host != s.fqn or s.op not in ("linear", "embedding", "conv2d") or c.options.get("slices") for s, c in lora
    ):
        return None  # parameter sites and fused-output slices have no PEFT module to load into
    first = lora[0][1].options
    config = dict(LORA_CONFIG_DEFAULTS)
    config.update(
        {
            "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
            "task_type": task_type(model),
            "r": first["r"],
            "lora_alpha": first["alpha"],
            "lora_dropout": first["dropout"],
            "use_rslora": first["rslora"],
            "use_dora": first["dora"],
            "init_lora_weights": {"default": True, "gaussian": "gaussian", "random": False}[first["init"]],
            "fan_in_fan_out": any(s.transposed for s, _ in lora),
            "target_modules": sorted(s.fqn for s, _ in lora),
            "rank_pattern": {s.fqn: c.options["r"] for s, c in lora if c.options["r"] != first["r"]},
            "alpha_pattern": {s.fqn: c.options["alpha"] for s, c in lora if c.options["alpha"] != first["alpha"]},
            "modules_to_save": sorted(trained) or None,
        }
    )
    return config


# The graphpeft options a PEFT config records, per method, that decide what saved weights compute
# (what restoring weights into a live adapter compares; a prompt table is the encoder's output).
PEFT_OPTIONS = {
    "lora": ("r", "alpha", "dropout", "rslora", "dora"),
    "ia3": ("feedforward",),
    "train": (),
    "prompt_tuning": ("num_virtual_tokens",),
    "p_tuning": ("num_virtual_tokens",),
    "prefix_tuning": ("num_virtual_tokens",),
}


def rules_from_peft_config(config: dict[str, Any], sites: list[Site], where: str) -> list[ResolvedRule]:
    """Rules that select exactly the modules PEFT would adapt with this LoRA or IA3 config.

    ``config`` passed :func:`graphpeft.io.peft_schema.check_peft_config`; ``where`` names its file.
    """
    if config["peft_type"] == "IA3":
        return _ia3_rules(config, sites)
    targets = config.get("target_modules")
    if isinstance(targets, str) and config.get("layers_to_transform") not in (None, []):
        raise LoadError(f"{where} sets layers_to_transform with target_modules as a regex; PEFT refuses that too")
    candidates = [s for s in sites if s.op in ("linear", "embedding", "conv2d")]
    chosen = [s for s in candidates if _peft_targets(s.fqn, targets, config)]
    if not chosen:
        raise LoadError(
            f"PEFT config target_modules={targets!r} selects no linear/embedding/conv2d module of this model; "
            "is this adapter for another architecture?"
        )
    groups: dict[tuple[int, float], list[str]] = {}
    for site in chosen:
        r = _pattern_value(site.fqn, config.get("rank_pattern") or {}, config.get("r", 8))
        alpha = _pattern_value(site.fqn, config.get("alpha_pattern") or {}, config.get("lora_alpha", 8))
        groups.setdefault((r, alpha), []).append(site.fqn)
    resolved = []
    for i, ((r, alpha), fqns) in enumerate(groups.items()):
        options = {
            "r": r,
            "alpha": alpha,
            "dropout": config.get("lora_dropout", 0.0),
            "rslora": config.get("use_rslora", False),
            "dora": config.get("use_dora", False),
        }
        pattern = Pattern(module=tuple(_escape_glob(f) for f in dict.fromkeys(fqns)))
        rule = Rule(f"peft_lora_{i}" if i else "peft_lora", "lora", (pattern,), options)
        resolved.append(ResolvedRule(rule, (("target_modules", pattern),), "adapter_config.json"))
    return resolved + _modules_to_save_rules(config)


def _ia3_rules(config: dict[str, Any], sites: list[Site]) -> list[ResolvedRule]:
    targets = config.get("target_modules")
    chosen = [s for s in sites if s.op == "linear" and _peft_targets(s.fqn, targets, config)]
    if not chosen:
        raise LoadError(
            f"PEFT IA3 config target_modules={targets!r} selects no linear module of this model; "
            "is this adapter for another architecture?"
        )
    feedforward = config.get("feedforward_modules") or []
    resolved = []
    for is_ff in (False, True):
        fqns = [s.fqn for s in chosen if _peft_feedforward(s.fqn, feedforward) == is_ff]
        if not fqns:
            continue
        pattern = Pattern(op="linear", module=tuple(_escape_glob(f) for f in dict.fromkeys(fqns)))
        name = "peft_ia3_feedforward" if is_ff else "peft_ia3"
        rule = Rule(name, "ia3", (pattern,), {"feedforward": is_ff})
        label = "feedforward_modules" if is_ff else "target_modules"
        resolved.append(ResolvedRule(rule, ((label, pattern),), "adapter_config.json"))
    return resolved + _modules_to_save_rules(config)


def _peft_feedforward(fqn: str, feedforward: Any) -> bool:
    """PEFT's test: a regex must match the whole key; list entries match by suffix."""
    if isinstance(feedforward, str):
        return compile_regex(feedforward, "feedforward_modules", LoadError).matches(fqn)
    return any(fqn.endswith(name) for name in feedforward)


def _modules_to_save_rules(config: dict[str, Any]) -> list[ResolvedRule]:
    saved = config.get("modules_to_save") or []
    if not saved:
        return []
    names = "|".join(re.escape(n) for n in saved)
    pattern = Pattern(op="module", regex=rf"(.*\.)?({names})")
    rule = Rule("peft_modules_to_save", "train", (pattern,), {}, required=False)
    return [ResolvedRule(rule, (("modules_to_save", pattern),), "adapter_config.json")]


def _escape_glob(fqn: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", fqn)


def _peft_targets(fqn: str, targets: Any, config: dict[str, Any]) -> bool:
    if targets is None:
        return False
    if isinstance(targets, str):
        hit = compile_regex(targets, "target_modules", LoadError).matches(fqn)
    else:
        hit = any(fqn == t or fqn.endswith("." + t) for t in targets)
    exclude = config.get("exclude_modules")
    if hit and exclude:
        if isinstance(exclude, str):
            hit = not compile_regex(exclude, "exclude_modules", LoadError).matches(fqn)
        else:
            hit = not any(fqn == e or fqn.endswith("." + e) for e in exclude)
    if hit and not isinstance(targets, str) and fqn not in targets:
        hit = _in_transformed_layers(fqn, config)  # PEFT filters layers only for suffix matches
    return hit and not _inside_saved_module(fqn, config.get("modules_to_save"))


def _in_transformed_layers(fqn: str, config: dict[str, Any]) -> bool:
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _peft_layer_index(fqn, config.get("layers_pattern"))
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def _peft_layer_index(fqn: str, patterns: Any) -> int | None:
    """PEFT's layer index: the first all-digit part of ``fqn`` after a part named in ``patterns`` (after any
    part but the first when there are none) and before the last part."""
    parts = fqn.split(".")
    names = [patterns] if isinstance(patterns, str) else list(patterns or [])
    for name in [n for n in names if n] or [None]:
        for i in range(0 if name else 1, len(parts) - 2):
            if (name is None or parts[i] == name) and parts[i + 1].isdecimal():
                return int(parts[i + 1])
    return None


def _inside_saved_module(fqn: str, saved: Any) -> bool:
    """PEFT adapts nothing inside (or named as) a module of ``modules_to_save``: its parts appear in a row
    in ``fqn``."""
    parts = fqn.split(".")
    for name in saved or []:
        wanted = name.split(".")
        if any(parts[i : i + len(wanted)] == wanted for i in range(len(parts) - len(wanted) + 1)):
            return True
    return False


def _pattern_value(fqn: str, patterns: dict[str, Any], default: Any) -> Any:
    for key, value in patterns.items():
        if compile_peft_key(key, "rank_pattern/alpha_pattern key", LoadError).matches(fqn):
            return value
    return default
