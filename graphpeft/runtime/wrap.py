"""``graphpeft.apply`` and ``graphpeft.load``: wrap a base model in a :class:`~.model.GraphPeftModel` with new or
saved adapters, refusing a base another live wrapper holds (:mod:`.ownership`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import AdapterError, CallError
from ..io.adapter_folder import adapter_folders, load_into
from ..rules.rule import Rule
from ..rules.rule_set import RuleSet
from .model import GraphPeftModel
from .ownership import held_message, holder_of


def apply(
    model: nn.Module,
    rules: str | Path | Rule | RuleSet | Sequence[Rule],
    *,
    adapter_name: str = "default",
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    checkpointing: bool = False,
    quantize: str | None = None,
    reuse_blocks: bool = True,
    **overrides: Any,
) -> GraphPeftModel:
    """Trace ``model``, match ``rules`` and return it wrapped with new adapters.

    Args:
        model: a transformers model, or any ``nn.Module`` together with ``example_inputs``.
        rules: a rule-file path, a rule name from the built-in file for ``config.model_type``
            (``"lora"``), a :class:`RuleSet`, a :class:`Rule` or a list of rules.
        adapter_name: name of the new adapter.
        example_inputs: for non-transformers modules: a tensor, tuple or dict of forward inputs.
        dynamic_shapes: for non-transformers modules: ``torch.export`` dynamic shapes of those inputs.
        checkpointing: recompute each transformer block in backward instead of keeping its
            activations (training graphs only; see :mod:`graphpeft.rewrite.graph_passes.activation_checkpointing`).
        quantize: ``"int8"`` or ``"nf4"`` stores the frozen base linear weights quantized (QLoRA;
            see :mod:`graphpeft.rewrite.quantized_base`); merging then needs ``model.dequantize()`` first.
        reuse_blocks: export a deep model with 3 of its identical blocks and copy the rest into the
            graph (falls back to the full export when that is not provably exact; see
            :mod:`graphpeft.tracing.block_reuse`). False always exports every block.
        **overrides: option overrides for the chosen rules (``r=16, dropout=0.1``).

    Only adapter parameters are trainable afterwards; the base weights are frozen, not copied.
    """
    refuse_held(model, "apply", "add_adapter")
    for flag, value in (("checkpointing", checkpointing), ("reuse_blocks", reuse_blocks)):
        if not isinstance(value, bool):
            raise CallError(f"{flag} must be True or False, got {value!r}")
    wrapped = GraphPeftModel(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes)
    wrapped.checkpointing = checkpointing
    wrapped.reuse_blocks = reuse_blocks
    try:
        wrapped.add_adapter(adapter_name, rules, **overrides)
        if quantize is not None:
            if any(c.options.get("dora") for _, c in wrapped.adapter_specs[adapter_name].claims.values()):
                raise CallError(
                    "DoRA reads the base weight itself, so it cannot run on a quantized base; "
                    "drop dora=True or quantize="
                )
            wrapped.quantize(quantize)
    except BaseException:
        wrapped.unload()
        raise
    return wrapped


def load(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    is_trainable: bool = False,
    adapter_name: str = "default",
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
) -> GraphPeftModel:
    """Wrap ``model`` with the adapters saved in ``directory`` (graphpeft's or PEFT's format).

    The adapter at the top of ``directory`` is loaded as ``adapter_name``; every sub-folder
    holding an adapter (``save_pretrained`` puts non-default adapters there, as PEFT does)
    is loaded too, under the sub-folder's name. The top one (else the first) is active.
    With ``is_trainable=False`` the adapters are frozen and the model is put in eval mode.
    If loading fails, ``model`` is left exactly as it was.
    """
    refuse_held(model, "load", "load_adapter")
    wrapped = GraphPeftModel(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes)
    try:
        for name, folder in adapter_folders(directory, adapter_name):
            load_into(wrapped, folder, name, is_trainable)
    except BaseException:
        wrapped.unload()
        raise
    if not is_trainable:
        wrapped.eval()
    return wrapped


def refuse_held(model: nn.Module, entry: str, add: str) -> None:
    """Raise unless ``model`` can be wrapped by ``graphpeft.<entry>()`` (``add``: the method to use instead)."""
    if isinstance(model, GraphPeftModel):
        raise AdapterError(
            f"graphpeft.{entry}() was given a GraphPeftModel: it is already adapted; "
            f"add another adapter to it with model.{add}(...) instead"
        )
    if holder_of(model) is not None:
        raise AdapterError(held_message(model, f"graphpeft.{entry}()", add))
