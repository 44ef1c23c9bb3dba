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
from .rules import Pattern, Rule, RuleSet
from .runtime import GraphPeftModel
from .explain import explain  # noqa: E402  (after the submodule import, so the name is the function)
from .viz import to_networkx

__version__ = "0.1.0"
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
        **overrides: option overrides for the chosen rules (``r=16, dropout=0.1``).

    Only adapter parameters are trainable afterwards; the base weights are frozen, not copied.
    """
    from .rulebook import resolve_rules

    wrapped = GraphPeftModel(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes)
    resolved = resolve_rules(model, rules, overrides)
    try:
        wrapped.add_adapter(adapter_name, resolved)
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
    """Wrap ``model`` with the adapter saved in ``directory`` (graphpeft's or PEFT's format).

    With ``is_trainable=False`` the adapter is frozen and the model is put in eval mode.
    If loading fails, ``model`` is left exactly as it was.
    """
    from .checkpoint import load_into

    wrapped = GraphPeftModel(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes)
    load_into(wrapped, directory, adapter_name, is_trainable)
    if not is_trainable:
        wrapped.eval()
    return wrapped
