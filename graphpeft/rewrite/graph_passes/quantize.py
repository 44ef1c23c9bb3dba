"""The graph side of a quantized base: linears on quantized weights decode them on the fly.

:func:`quantize_graph` turns each ``aten.linear`` / ``aten.addmm`` that reads a weight stored as codes
(:mod:`graphpeft.rewrite.quantized_base`) into :func:`quantized_linear`, which dequantizes the weight in
forward and again in backward (it is never kept for autograd). Adapters placed on those sites read the
site's input and output as usual, so LoRA trains on top of the codes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from ...errors import TraceError
from ..materialize import finish
from ..quantized_base import WEIGHT_INDEX, WEIGHT_READS, dequantize_weight, read_kind, stored_codes


class _QuantizedLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias: Any, shape: Any, scheme: str
    ) -> torch.Tensor:
        ctx.save_for_backward(codes, scales)
        ctx.shape, ctx.scheme, ctx.has_bias = shape, scheme, bias is not None
        return torch.nn.functional.linear(x, dequantize_weight(codes, scales, shape, scheme, x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        codes, scales = ctx.saved_tensors
        weight = dequantize_weight(codes, scales, ctx.shape, ctx.scheme, grad.dtype)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad @ weight, None, None, grad_bias, None, None


def quantized_linear(
    x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias: Any, shape: Any, scheme: str
) -> torch.Tensor:
    """``linear(x, W, bias)`` with W (out, in) dequantized from (codes, scales) in forward and in backward."""
    return _QuantizedLinear.apply(x, codes, scales, bias, tuple(shape), scheme)


# ---------------------------------------------------------------------- the graph pass
def quantize_graph(gm: fx.GraphModule, model: nn.Module) -> fx.GraphModule:
    """Replace each ``aten.linear`` / ``aten.addmm`` reading a quantized placeholder by
    :func:`quantized_linear`; any other read of a placeholder is an error (it would read zeros)."""
    for node in list(gm.graph.nodes):
        kind = WEIGHT_READS.get(node.target)
        weight = node.args[WEIGHT_INDEX[kind]] if kind and len(node.args) > WEIGHT_INDEX[kind] else None
        if weight is None or getattr(weight, "op", None) != "get_attr" or read_kind(node, weight) != kind:
            continue
        found = stored_codes(model, weight.target)
        if found is None:
            continue
        module, param_name, stored = found
        if kind == "linear":  # linear(x, W (out, in), bias)
            x, bias = node.args[0], node.args[2] if len(node.args) > 2 else None
        else:  # addmm(bias, x, W (in, out))
            bias, x = node.args[0], node.args[1]
        with gm.graph.inserting_before(node):
            codes = _buffer(gm, f"{weight.target}_codes", getattr(module, f"{param_name}_codes"))
            scales = _buffer(gm, f"{weight.target}_scales", getattr(module, f"{param_name}_scales"))
            new = gm.graph.call_function(quantized_linear, (x, codes, scales, bias, stored.shape, stored.scheme))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    _refuse_other_reads(gm, model)
    return finish(gm)


def _refuse_other_reads(gm: fx.GraphModule, model: nn.Module) -> None:
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users and stored_codes(model, node.target) is not None:
            op = next(iter(node.users)).target
            raise TraceError(
                f"{node.target} is stored quantized, but this call's graph reads it through {op}, which cannot "
                "decode it; call model.dequantize() before this call"
            )


def _buffer(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> fx.Node:
    name = "graphpeft_q_" + target.replace(".", "_")
    if not hasattr(gm, name):
        gm.register_buffer(name, tensor)
    return gm.graph.get_attr(name)
