"""Grouped-query attention without repeated keys and values.

A model with fewer key/value heads than query heads (Llama, Mistral, Qwen: ``num_key_value_heads``)
repeats K and V to the query head count before attention. transformers skips the copy in eager mode
(SDPA's ``enable_gqa``) only when the attention mask can be dropped, which a traced graph never
can, so an exported graph materializes K and V ``n_rep`` times per layer and keeps them for
backward. :func:`use_native_gqa` rewrites

    sdpa(q, reshape(expand(unsqueeze(k, 2), (B, kv, n_rep, S, D)), (B, kv * n_rep, S, D)), <same for v>, ...)

into ``sdpa(q, k, v, ..., enable_gqa=True)``: the same attention (each query head reads key/value
head ``h // n_rep``), without the (B, heads, S, D) copies.
"""

from __future__ import annotations

import torch
from torch import fx

_SDPA = torch.ops.aten.scaled_dot_product_attention.default
_NO_OP_SLICE = 2**63 - 1


def _repeated_source(node: object) -> tuple[fx.Node, int] | None:
    """``(k, n_rep)`` when ``node`` is ``k`` (B, kv, S, D) repeated along heads; else None."""
    if not (isinstance(node, fx.Node) and node.target is torch.ops.aten.reshape.default):
        return None
    expand = node.args[0]
    if not (isinstance(expand, fx.Node) and expand.target is torch.ops.aten.expand.default and len(expand.users) == 1):
        return None
    unsqueeze = expand.args[0]
    if not (
        isinstance(unsqueeze, fx.Node)
        and unsqueeze.target is torch.ops.aten.unsqueeze.default
        and unsqueeze.args[1] == 2
        and len(unsqueeze.users) == 1
    ):
        return None
    sizes, merged = expand.args[1], node.args[1]
    if not (isinstance(sizes, (list, tuple)) and isinstance(merged, (list, tuple))):
        return None
    if len(sizes) != 5 or len(merged) != 4:
        return None
    batch, kv_heads, n_rep, length, head_dim = sizes
    if not isinstance(kv_heads, int) or not isinstance(n_rep, int):
        return None
    same = [
        merged[0] is batch or merged[0] == batch,
        merged[1] == kv_heads * n_rep,
        merged[2] is length or merged[2] == length,
        merged[3] == head_dim,
    ]
    if not all(same):
        return None
    source = unsqueeze.args[0]
    if not isinstance(source, fx.Node):
        return None
    if source.target is torch.ops.aten.slice.Tensor and source.args[1:] == (0, 0, _NO_OP_SLICE):
        sliced = source.args[0]  # repeat_kv's ``hidden[:, :, None]`` starts with a full slice of dim 0
        assert isinstance(sliced, fx.Node)
        source = sliced
    return source, n_rep


def use_native_gqa(gm: fx.GraphModule) -> int:
    """Rewrite every repeated-K/V attention of ``gm`` to SDPA's ``enable_gqa``; returns how many."""
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not _SDPA or node.kwargs.get("enable_gqa"):
            continue
        key, value = (_repeated_source(arg) for arg in node.args[1:3])
        if key is None or value is None or key[1] != value[1] or key[1] < 2:
            continue
        old_key, old_value = node.args[1], node.args[2]
        node.args = (node.args[0], key[0], value[0], *node.args[3:])
        node.kwargs = {**node.kwargs, "enable_gqa": True}
        for dead in (old_key, old_value):
            link = dead  # reshape <- expand <- unsqueeze <- (slice), each used only by the next
            while isinstance(link, fx.Node) and not link.users and link.op == "call_function":
                source = link.args[0]
                gm.graph.erase_node(link)
                link = source
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten
