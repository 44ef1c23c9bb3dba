"""Quantized frozen base (QLoRA-style), in plain torch: int8 per-channel absmax and blockwise NF4.

:func:`quantize_base` replaces each chosen ``nn.Linear`` weight (out, in) by codes plus scales kept
on the module (``weight_codes``, ``weight_scales``) and leaves a zero-storage placeholder of the same
shape as the parameter, so ``torch.export`` still traces the model. :func:`quantize_graph` then turns
every ``aten.linear`` reading a quantized weight into :func:`quantized_linear`, which dequantizes
the weight on the fly in forward and again in backward (it is never kept for autograd). Adapters placed
on those sites read the site's input and output as usual, so LoRA trains on top of the codes.

- int8: codes (out, in) int8, scales (out, 1) = absmax(row) / 127.
- nf4: the weight flattened in blocks of 64, each scaled by its absmax and rounded to the nearest
  of the 16 NormalFloat-4 levels; codes (numel / 2,) uint8 (two 4-bit indices a byte), scales
  (numel / 64,) fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from .errors import AdapterError, CallError
from .rewrite import finish

SCHEMES = ("int8", "nf4")
NF4_BLOCK = 64
# The 16 NormalFloat-4 levels (quantiles of N(0, 1) scaled to [-1, 1], zero exact), from the QLoRA paper.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


def quantize_weight(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of a weight (out, in); see the module docstring for the layouts."""
    w = weight.detach().float()
    if scheme == "int8":
        scales = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        return torch.round(w / scales).clamp(-127, 127).to(torch.int8), scales
    blocks = w.reshape(-1, NF4_BLOCK)
    scales = blocks.abs().amax(dim=1).clamp_min(1e-12)
    normalised = blocks / scales[:, None]
    index = (normalised[..., None] - NF4_LEVELS.to(w.device)).abs().argmin(dim=-1).to(torch.uint8).reshape(-1)
    return (index[0::2] << 4) | index[1::2], scales


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, shape: Any, scheme: str, dtype: torch.dtype) -> torch.Tensor:
    """The weight (out, in) in ``dtype`` from its codes and scales."""
    if scheme == "int8":
        return (codes.float() * scales).to(dtype)
    index = torch.stack(((codes >> 4) & 15, codes & 15), dim=-1).reshape(-1).long()
    values = NF4_LEVELS.to(scales.device)[index].reshape(-1, NF4_BLOCK) * scales[:, None]
    return values.reshape(shape).to(dtype)


class _QuantizedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias: Any, shape: Any, scheme: str) -> torch.Tensor:
        ctx.save_for_backward(codes, scales)
        ctx.shape, ctx.scheme, ctx.has_bias = shape, scheme, bias is not None
        return torch.nn.functional.linear(x, dequantize_weight(codes, scales, shape, scheme, x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        codes, scales = ctx.saved_tensors
        weight = dequantize_weight(codes, scales, ctx.shape, ctx.scheme, grad.dtype)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad @ weight, None, None, grad_bias, None, None


def quantized_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias: Any, shape: Any, scheme: str) -> torch.Tensor:
    """``linear(x, W, bias)`` with W dequantized from (codes, scales) in forward and in backward."""
    return _QuantizedLinear.apply(x, codes, scales, bias, tuple(shape), scheme)


def quantize_base(model: nn.Module, scheme: str, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Quantize the weights of every ``nn.Linear`` of ``model`` (but those named in ``skip``); returns their names.

    Each weight's block count must divide (nf4: ``numel % 64 == 0``); others are left in full precision.
    """
    if scheme not in SCHEMES:
        raise CallError(f"quantize must be one of {', '.join(map(repr, SCHEMES))}, got {scheme!r}")
    done = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] in skip or hasattr(module, "weight_codes"):
            continue
        weight = module.weight
        if weight.device.type == "meta" or (scheme == "nf4" and weight.numel() % NF4_BLOCK):
            continue
        codes, scales = quantize_weight(weight, scheme)
        module.register_buffer("weight_codes", codes)
        module.register_buffer("weight_scales", scales)
        module.quantization = scheme
        placeholder = torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)
        module.weight = nn.Parameter(placeholder, requires_grad=False)
        done.append(f"{name}.weight")
    return done


def dequantize_base(model: nn.Module) -> None:
    """Give every quantized linear a real weight again (from its codes) and drop the codes."""
    for module in model.modules():
        if hasattr(module, "weight_codes"):
            shape, dtype = module.weight.shape, module.weight.dtype
            weight = dequantize_weight(module.weight_codes, module.weight_scales, shape, module.quantization, dtype)
            module.weight = nn.Parameter(weight, requires_grad=False)
            del module.weight_codes, module.weight_scales, module.quantization


def is_quantized(model: nn.Module) -> bool:
    return any(hasattr(m, "weight_codes") for m in model.modules())


def quantize_graph(gm: fx.GraphModule, model: nn.Module) -> fx.GraphModule:
    """Replace each ``aten.linear`` whose weight is a quantized placeholder by :func:`quantized_linear`."""
    for node in list(gm.graph.nodes):
        if node.target is not torch.ops.aten.linear.default or getattr(node.args[1], "op", None) != "get_attr":
            continue
        fqn = node.args[1].target.rpartition(".")[0]
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            continue
        if not hasattr(module, "weight_codes"):
            continue
        with gm.graph.inserting_before(node):
            codes = _buffer(gm, f"{fqn}.weight_codes", module.weight_codes)
            scales = _buffer(gm, f"{fqn}.weight_scales", module.weight_scales)
            bias = node.args[2] if len(node.args) > 2 else None
            new = gm.graph.call_function(
                quantized_linear, (node.args[0], codes, scales, bias, tuple(module.weight.shape), module.quantization)
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    return finish(gm)


def _buffer(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> fx.Node:
    name = "graphpeft_q_" + target.replace(".", "_")
    if not hasattr(gm, name):
        gm.register_buffer(name, tensor)
    return gm.graph.get_attr(name)


def refuse_on_quantized(model: nn.Module, action: str, why: str) -> None:
    """Raise if ``model``'s base is quantized: ``action`` (``"merge()"``) needs full-precision weights."""
    if is_quantized(model):
        raise AdapterError(
            f"{action} needs the full-precision base weights, but they are quantized ({why}); "
            "call model.dequantize() first (decodes the codes into full-precision weights)"
        )
