"""graphpeft: parameter-efficient fine-tuning as a torch.fx graph-rewriting pass.

    model = graphpeft.apply(hf_model, "lora")          # rule name, rule file, Rule objects
    model.save_pretrained("out/")                        # PEFT-compatible adapter + manifest
    model = graphpeft.load(hf_model, "out/")             # graphpeft or plain PEFT directory
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .errors import GraphPeftError
from .rewrite import methods  # noqa: F401  (importing it registers every built-in method)
from .runtime.ownership import refuse_held
from .rules.pattern import Pattern
from .rules.rule import Rule
from .rules.rule_set import RuleSet
from .runtime.model import GraphPeftModel
from .tools.explain import explain  # noqa: E402  (after the submodule import, so the name is the function)
from .tools.viz import to_networkx
from .version import __version__

__all__ = [
    "apply", "load", "explain", "to_networkx", "GraphPeftModel", "Rule", "Pattern", "RuleSet", "GraphPeftError",
    "__version__",
]


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
            activations (training graphs only; see :mod:`graphpeft.checkpointing`).
        quantize: ``"int8"`` or ``"nf4"`` stores the frozen base linear weights quantized (QLoRA;
            see :mod:`graphpeft.quantize`); merging then needs ``model.dequantize()`` first.
        reuse_blocks: export a deep model with 3 of its identical blocks and copy the rest into the
            graph (falls back to the full export when that is not provably exact; see
            :mod:`graphpeft.block_reuse`). False always exports every block.
        **overrides: option overrides for the chosen rules (``r=16, dropout=0.1``).

    Only adapter parameters are trainable afterwards; the base weights are frozen, not copied.
    """
    refuse_held(model, "apply", "add_adapter")
    for flag, value in (("checkpointing", checkpointing), ("reuse_blocks", reuse_blocks)):
        if not isinstance(value, bool):
            from .errors import CallError

            raise CallError(f"{flag} must be True or False, got {value!r}")
    wrapped = GraphPeftModel(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes)
    wrapped.checkpointing = checkpointing
    wrapped.reuse_blocks = reuse_blocks
    try:
        wrapped.add_adapter(adapter_name, rules, **overrides)
        if quantize is not None:
            if any(c.options.get("dora") for _, c in wrapped.adapter_specs[adapter_name].claims.values()):
                from .errors import CallError

                raise CallError("DoRA reads the base weight itself, so it cannot run on a quantized base; drop dora=True or quantize=")
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
    from .io.adapter_folder import adapter_folders, load_into

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
