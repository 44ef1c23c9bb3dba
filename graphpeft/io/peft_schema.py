"""What graphpeft reads from PEFT's ``adapter_config.json`` (PEFT 0.21.2), key by key.

Each PEFT config class has one schema here with an entry for every one of its dataclass fields
(``tests/test_peft_config_keys.py`` checks that against the installed PEFT). An entry either is
modeled (graphpeft honours the value), is harmless to ignore (bookkeeping, or a setting that only
shapes weights the file overwrites), or is not modeled: then only PEFT's default and its equivalents
are accepted (``inert``) and any other value is a LoadError naming the key.
"""

from __future__ import annotations

from typing import Any

from ..errors import LoadError
from .load_schema import Field, check_record, check_value, field, mapping_of, positive, probability

NAMES = ("string", "list of strings", "null")

# Keys of every PEFT config that say where the adapter came from, not what it computes.
BOOKKEEPING: dict[str, Field] = {
    "peft_type": field("string", required=True),
    "task_type": field("string", "null"),
    "auto_mapping": field("object", "null"),
    "peft_version": field("string", "null"),
    "base_model_name_or_path": field("string", "null"),
    "revision": field("string", "null"),
    "inference_mode": field("boolean"),
}


def _plain_names(value: Any) -> str | None:
    """PEFT reads ``layers_pattern`` as a regex; graphpeft reads it as plain module names, which match alike."""
    names = [value] if isinstance(value, str) else value or []
    for name in names:
        if not (name.isascii() and name.replace("_", "").isalnum()):
            return (
                "must name modules plainly (letters, digits, '_'), e.g. 'layers'; graphpeft does not read regexes there"
            )
    return None


_CHANGES_BASE = (
    "that initialisation changes the base weights (or adds a LoRA variant), so the adapter is only right "
    "on a base graphpeft does not reproduce; load it with PEFT"
)
_NEW_LAYERS = "it adds weights or layers plain LoRA does not have; load it with PEFT"

LORA_FIELDS: dict[str, Field] = {
    **BOOKKEEPING,
    "r": field("integer", check=positive),
    "target_modules": field(*NAMES),
    "exclude_modules": field(*NAMES),
    "lora_alpha": field("number", check=positive),
    "lora_dropout": field("number", check=probability),
    # PEFT sets the orientation from the module type (True for GPT-2's Conv1D), as graphpeft does from the site.
    "fan_in_fan_out": field("boolean"),
    "bias": field("string", inert=("none",), why="PEFT then trains and saves the layers' biases"),
    "use_rslora": field("boolean"),
    "modules_to_save": field("list of strings", "null"),
    # Initialisations that touch only A and B are harmless: the file's weights replace them.
    "init_lora_weights": field(
        "boolean", "string", inert=(True, False, "gaussian", "eva", "orthogonal"), why=_CHANGES_BASE
    ),
    "layers_to_transform": field("integer", "list of integers", "null"),
    "layers_pattern": field(*NAMES, check=_plain_names),
    "rank_pattern": field("object", check=mapping_of("integer", positive, "ranks > 0")),
    "alpha_pattern": field("object", check=mapping_of("number", positive, "finite alphas > 0")),
    "megatron_config": field("object", "null", inert=(None,), why="Megatron's parallel layers"),
    "megatron_core": field("string"),  # read only together with megatron_config
    "trainable_token_indices": field("list of integers", "object", "null", inert=(None,), why=_NEW_LAYERS),
    # Settings of one initialisation each; PEFT reads them only when init_lora_weights names it.
    "loftq_config": field("object", "null"),
    "eva_config": field("object", "null"),
    "corda_config": field("object", "null"),
    "lora_ga_config": field("object", "null"),
    "use_dora": field("boolean"),
    "velora_config": field("object", "null", inert=(None,), why=_NEW_LAYERS),
    "alora_invocation_tokens": field(
        "list of integers", "null", inert=(None,), why="activated LoRA changes which tokens the adapter sees"
    ),
    "use_qalora": field("boolean", inert=(False,), why="QA-LoRA pools the input before A"),
    "qalora_group_size": field("integer"),  # read only with use_qalora
    "monteclora_config": field("object", "null", inert=(None,), why=_NEW_LAYERS),
    "layer_replication": field("list", "null", inert=(None, []), why="it duplicates base layers"),
    "runtime_config": field("object", "null"),  # runtime settings (GPU offload): no effect on the numbers
    "lora_bias": field("boolean", inert=(False,), why=_NEW_LAYERS),
    "target_parameters": field("list of strings", "null", inert=(None, []), why="PEFT's parameter targeting"),
    "use_bdlora": field("object", "null", inert=(None,), why="block-diagonal LoRA"),
    "arrow_config": field("object", "null", inert=(None,), why="Arrow routes between several LoRAs"),
    "kasa_config": field("object", "null", inert=(None,), why=_NEW_LAYERS),
    "ensure_weight_tying": field("boolean", inert=(False,), why="it ties trained copies of tied layers"),
}

IA3_FIELDS: dict[str, Field] = {
    **BOOKKEEPING,
    "target_modules": field(*NAMES),
    "exclude_modules": field(*NAMES),
    "feedforward_modules": field(*NAMES),
    "fan_in_fan_out": field("boolean"),
    "modules_to_save": field("list of strings", "null"),
    "init_ia3_weights": field("boolean"),  # ones or random: the file's vectors replace them
}

# Prompt learning: the geometry keys are compared with the model by peft_prompt_format.
_PROMPT_COMMON: dict[str, Field] = {
    **BOOKKEEPING,
    "num_virtual_tokens": field("integer", check=positive, required=True),
    "token_dim": field("integer", "null"),
    "num_transformer_submodules": field("integer", "null"),
    "num_attention_heads": field("integer", "null"),
    "num_layers": field("integer", "null"),
    "modules_to_save": field("list of strings", "null"),
}

PROMPT_FIELDS: dict[str, dict[str, Field]] = {
    "PROMPT_TUNING": {
        **_PROMPT_COMMON,
        # How the table was initialised; the file's table replaces it.
        "prompt_tuning_init": field(
            "string",
            check=lambda v: None if v in ("RANDOM", "SAMPLE_VOCAB", "TEXT") else "must be RANDOM, SAMPLE_VOCAB or TEXT",
        ),
        "prompt_tuning_init_text": field("string", "null"),
        "tokenizer_name_or_path": field("string", "null"),
        "tokenizer_kwargs": field("object", "null"),
    },
    "P_TUNING": {
        **_PROMPT_COMMON,
        "encoder_reparameterization_type": field(
            "string", check=lambda v: None if v in ("MLP", "LSTM") else "must be MLP or LSTM"
        ),
        "encoder_hidden_size": field("integer", "null", check=lambda v: None if v is None or v > 0 else "must be > 0"),
        "encoder_num_layers": field("integer", check=positive),
        "encoder_dropout": field("number", check=probability),
    },
    "PREFIX_TUNING": {
        **_PROMPT_COMMON,
        "init_weights": field("string", "null"),  # how the table was initialised; the file's table replaces it
        "encoder_hidden_size": field("integer", "null", check=lambda v: None if v is None or v > 0 else "must be > 0"),
        "prefix_projection": field("boolean"),
    },
}

SCHEMAS: dict[str, tuple[str, dict[str, Field]]] = {
    "LORA": ("PEFT's LoraConfig", LORA_FIELDS),
    "IA3": ("PEFT's IA3Config", IA3_FIELDS),
    "PROMPT_TUNING": ("PEFT's PromptTuningConfig", PROMPT_FIELDS["PROMPT_TUNING"]),
    "P_TUNING": ("PEFT's PromptEncoderConfig", PROMPT_FIELDS["P_TUNING"]),
    "PREFIX_TUNING": ("PEFT's PrefixTuningConfig", PROMPT_FIELDS["PREFIX_TUNING"]),
}


def check_peft_config(config: dict[str, Any], where: str) -> str:
    """Check ``config`` against the schema of its ``peft_type``; return the peft_type."""
    if "peft_type" not in config:
        raise LoadError(f"{where} is malformed: key 'peft_type' is missing; it is not a PEFT adapter config")
    check_value(config["peft_type"], BOOKKEEPING["peft_type"], where, "peft_type")
    peft_type = config["peft_type"]
    if peft_type not in SCHEMAS:
        raise LoadError(
            f"PEFT adapter type {peft_type!r} is not supported by graphpeft.load yet "
            f"({', '.join(SCHEMAS)} are); load it with PEFT"
        )
    what, schema = SCHEMAS[peft_type]
    check_record(config, schema, where, what)
    return peft_type
