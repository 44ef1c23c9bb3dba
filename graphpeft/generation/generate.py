"""``generate``: greedy or sampled decoding on the adapted generation graphs (:mod:`.graphs`).

The prompt is checked, the sampling settings resolved (:mod:`.sampling`), the graphs chosen for the
call (the active adapters', a mixed batch's (:mod:`.mixed`), or a virtual-token adapter's prefill
(:mod:`.virtual`)), and the decoding loop (:mod:`.steps`) runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import CallError
from ..tracing.example_inputs import max_positions
from .graphs import check_generative, generation_graphs
from .mixed import mixed_generation
from .sampling import GENERATE_OPTIONS, resolve_settings
from .steps import CausalSteps, Seq2SeqSteps, decode_loop
from .virtual import virtual_steps

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel


def generate(
    model: GraphPeftModel, input_ids: Any, attention_mask: Any = None, adapter_names: Any = None, **options: Any
) -> torch.Tensor:
    """Greedy or sampled decoding through the generation graphs (see ``GraphPeftModel.generate``).

    ``adapter_names`` (one per row, ``"__base__"`` for none) generates each row with its own adapter
    in one batched computation (:mod:`.mixed`).

    Returns (B, S + new) ids for decoder-only models, (B, 1 + new) decoder ids (start token
    first) for encoder-decoders; rows that finished early are filled with ``pad_token_id``.
    """
    base = model.base_model
    check_generative(base)
    encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
    device = next(base.parameters()).device
    input_ids, attention_mask = _check_prompt(input_ids, attention_mask, encoder_decoder, device)
    given = {name: options.pop(name) for name in list(options) if name in GENERATE_OPTIONS}
    limit = max_positions(base.config)
    settings = resolve_settings(base.generation_config, input_ids.shape[1], encoder_decoder, limit, given, options)
    if limit is not None and not encoder_decoder and input_ids.shape[1] + settings.max_new_tokens > limit:
        raise CallError(
            f"a {input_ids.shape[1]}-token prompt plus max_new_tokens={settings.max_new_tokens} exceeds the "
            f"model's {limit} positions (max_position_embeddings); shorten the prompt or lower max_new_tokens"
        )
    extra: dict[str, torch.Tensor]
    if adapter_names is None:
        graphs, extra = generation_graphs(model), {}
    else:
        graphs, extra = mixed_generation(model, adapter_names, input_ids.shape[0])
    with torch.no_grad():
        steps = virtual_steps(model, graphs, extra) or (
            Seq2SeqSteps(graphs, base, extra) if encoder_decoder else CausalSteps(graphs, extra)
        )
        return decode_loop(steps, input_ids, attention_mask, settings)


def _check_prompt(
    input_ids: Any, attention_mask: Any, encoder_decoder: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if (
        not isinstance(input_ids, torch.Tensor)
        or input_ids.dim() != 2
        or input_ids.dtype not in (torch.long, torch.int)
    ):
        got = (
            f"a {input_ids.dim()}-d {input_ids.dtype} tensor"
            if isinstance(input_ids, torch.Tensor)
            else type(input_ids).__name__
        )
        raise CallError(
            f"input_ids must be a 2-d integer tensor (batch, length), got {got}; tokenize with return_tensors='pt'"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise CallError(f"input_ids is empty (shape {tuple(input_ids.shape)}); pass at least one prompt token per row")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = (
            tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        )
        raise CallError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
    if not encoder_decoder and bool((attention_mask[:, -1] == 0).any()):
        raise CallError(
            "attention_mask has padding at the end of a row; decoder-only models generate after the last position, "
            "so pad prompts on the left (tokenizer.padding_side = 'left')"
        )
    return input_ids.to(device=device, dtype=torch.long), attention_mask.to(device=device, dtype=torch.long)
