"""A quantized frozen base (QLoRA-style), in plain torch: int8 per-channel absmax and blockwise NF4 codes.

:func:`quantize_base` finds the frozen base linear weights in the model's export graph: every parameter
that the graph reads only as the weight of ``aten.linear`` (``nn.Linear``: stored (out, in)) or of
``aten.addmm`` (GPT-2's ``Conv1D``: stored (in, out)). It stores each as codes plus scales of its
linear layout (out, in) on the owning module (``<name>_codes``, ``<name>_scales``) and leaves a
zero-storage placeholder of the parameter's shape, so ``torch.export`` still traces the model; the graph
pass :mod:`.graph_passes.quantize` then decodes them on the fly. What was quantized, and what was kept in
full precision and why, is the returned :class:`Quantization`.

- int8: codes (out, in) int8, scales (out, 1) = absmax(row) / 127.
- nf4: the weight (out, in) flattened and zero-padded to whole blocks of 64, each block scaled by its
  absmax and rounded to the nearest of the 16 NormalFloat-4 levels; codes (blocks · 32,) uint8 (two
  4-bit indices a byte), scales (blocks,) fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ..errors import AdapterError, CallError

SCHEMES = ("int8", "nf4")
NF4_BLOCK = 64
# The 16 NormalFloat-4 levels (quantiles of N(0, 1) scaled to [-1, 1], zero exact), from the QLoRA paper.
NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
STORED = "graphpeft_quantized"  # module attribute: {parameter name: StoredCodes}
# How a graph reads a parameter as a linear weight: op -> kind, and kind -> the weight's argument index.
WEIGHT_READS: dict[object, str] = {torch.ops.aten.linear.default: "linear", torch.ops.aten.addmm.default: "addmm"}
WEIGHT_INDEX = {"linear": 1, "addmm": 2}


@dataclass(frozen=True)
class Quantization:
    """What :func:`quantize_base` did: the scheme, the parameters now stored as codes, and the
    base linear weights it left in full precision, each with the reason."""

    scheme: str
    weights: tuple[str, ...]
    kept: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        text = f"{self.scheme}: {len(self.weights)} base linear weights quantized"
        if self.kept:
            text += "; kept in full precision: " + ", ".join(f"{name} ({why})" for name, why in self.kept)
        return text


@dataclass(frozen=True)
class StoredCodes:
    """How one parameter is stored: ``scheme`` codes of its linear layout ``shape`` (out, in);
    ``transposed`` when the parameter itself is (in, out) (``Conv1D``)."""

    scheme: str
    shape: tuple[int, int]
    transposed: bool


def quantize_weight(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of a weight (out, in); see the module docstring for the layouts."""
    w = weight.detach().float()
    if scheme == "int8":
        scales = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        return torch.round(w / scales).clamp(-127, 127).to(torch.int8), scales
    flat = w.reshape(-1)
    blocks = torch.cat([flat, flat.new_zeros(-flat.numel() % NF4_BLOCK)]).reshape(-1, NF4_BLOCK)
    scales = blocks.abs().amax(dim=1).clamp_min(1e-12)
    normalised = blocks / scales[:, None]
    index = (normalised[..., None] - NF4_LEVELS.to(w.device)).abs().argmin(dim=-1).to(torch.uint8).reshape(-1)
    return (index[0::2] << 4) | index[1::2], scales


def dequantize_weight(
    codes: torch.Tensor, scales: torch.Tensor, shape: Any, scheme: str, dtype: torch.dtype
) -> torch.Tensor:
    """The weight (out, in) in ``dtype`` from its codes and scales."""
    if scheme == "int8":
        return (codes.float() * scales).to(dtype)
    index = torch.stack(((codes >> 4) & 15, codes & 15), dim=-1).reshape(-1).long()
    values = NF4_LEVELS.to(scales.device)[index].reshape(-1, NF4_BLOCK) * scales[:, None]
    return values.reshape(-1)[: math.prod(shape)].reshape(shape).to(dtype)


# ---------------------------------------------------------------------- choosing and storing weights
def quantize_base(
    model: nn.Module, scheme: str, graph: fx.GraphModule, skip: tuple[str, ...] = ("lm_head",)
) -> Quantization:
    """Quantize every frozen base linear weight that ``graph`` (an export of ``model``) reads, but those of
    modules named in ``skip``; returns what was done. Raises, changing nothing, when the scheme is unknown,
    the base is already quantized, a chosen weight is on the meta device, or there is nothing to quantize."""
    if scheme not in SCHEMES:
        raise CallError(f"quantize must be one of {', '.join(map(repr, SCHEMES))}, got {scheme!r}")
    if is_quantized(model):
        raise AdapterError(
            f"the base is already quantized ({quantized_scheme(model)}); call model.dequantize() first to "
            "quantize it again"
        )
    chosen, kept = plan_weights(model, graph, skip)
    on_meta = [name for name, _ in chosen if model.get_parameter(name).device.type == "meta"]
    if on_meta:
        raise CallError(
            f"cannot quantize {on_meta[0]} (and {len(on_meta) - 1} more): its weights are on the meta device; "
            "load real weights into the model before quantize="
        )
    if not chosen:
        why = "; ".join(f"{name}: {reason}" for name, reason in kept) or "the graph reads no linear weight"
        raise CallError(
            f"quantize={scheme!r} found no base linear weight to quantize in {type(model).__name__} ({why}); "
            "drop quantize="
        )
    for name, transposed in chosen:
        _store_codes(model, name, scheme, transposed)
    return Quantization(scheme, tuple(name for name, _ in chosen), tuple(kept))


def plan_weights(
    model: nn.Module, graph: fx.GraphModule, skip: tuple[str, ...]
) -> tuple[list[tuple[str, bool]], list[tuple[str, str]]]:
    """``(chosen, kept)``: the linear weights to quantize as ``(name, stored (in, out))`` and those to
    keep in full precision as ``(name, reason)``, in graph order."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    chosen, kept = [], []
    for name, kinds in _parameter_reads(graph).items():
        if not set(kinds) & set(WEIGHT_INDEX):
            continue
        try:
            param = model.get_parameter(name)
        except AttributeError:  # a tensor the export made up, not one of the model's parameters
            continue
        reason = _reason_to_keep(name, param, kinds, aliases[id(param)], skip)
        if reason:
            kept.append((name, reason))
        else:
            chosen.append((name, kinds[0] == "addmm"))
    return chosen, kept


def _parameter_reads(graph: fx.GraphModule) -> dict[str, list[str]]:
    """Per parameter the graph reads: how each op reads it (``"linear"`` / ``"addmm"`` as the weight
    operand, else the op's name)."""
    params = dict(graph.named_parameters(remove_duplicate=False))
    reads: dict[str, list[str]] = {}
    for node in graph.graph.nodes:
        if node.op == "get_attr" and node.target in params:
            reads.setdefault(node.target, []).extend(read_kind(user, node) for user in node.users)
    return reads


def read_kind(user: fx.Node, param: fx.Node) -> str:
    kind = WEIGHT_READS.get(user.target)
    if kind is not None and not user.kwargs and len(user.args) > WEIGHT_INDEX[kind]:
        others = [a for i, a in enumerate(user.args) if i != WEIGHT_INDEX[kind]]
        if user.args[WEIGHT_INDEX[kind]] is param and param not in others:
            return kind
    return str(user.target) if user.op == "call_function" else user.op


def _reason_to_keep(
    name: str, param: torch.Tensor, kinds: list[str], names: list[str], skip: tuple[str, ...]
) -> str | None:
    module = name.rpartition(".")[0]
    if module.rpartition(".")[2] in skip:
        return "output head, kept in full precision as QLoRA does"
    if len(set(kinds)) > 1:
        return "also read by " + ", ".join(sorted(set(kinds) - {kinds[0]}))
    if len(names) > 1:
        return "tied to " + ", ".join(n for n in names if n != name)
    if param.dim() != 2:
        return f"{param.dim()}-D"
    if param.requires_grad:
        return "trainable"
    return None


def _store_codes(model: nn.Module, name: str, scheme: str, transposed: bool) -> None:
    module_name, _, param_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    weight = module.get_parameter(param_name)
    as_linear = weight.t() if transposed else weight
    codes, scales = quantize_weight(as_linear, scheme)
    module.register_buffer(f"{param_name}_codes", codes)
    module.register_buffer(f"{param_name}_scales", scales)
    stored = module.__dict__.setdefault(STORED, {})
    rows, columns = as_linear.shape
    stored[param_name] = StoredCodes(scheme, (rows, columns), transposed)
    placeholder = torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)
    setattr(module, param_name, nn.Parameter(placeholder, requires_grad=False))


def dequantize_base(model: nn.Module) -> None:
    """Give every quantized parameter a real weight again (decoded from its codes) and drop the codes."""
    for module in model.modules():
        for param_name, stored in module.__dict__.pop(STORED, {}).items():
            codes, scales = getattr(module, f"{param_name}_codes"), getattr(module, f"{param_name}_scales")
            dtype = getattr(module, param_name).dtype
            weight = dequantize_weight(codes, scales, stored.shape, stored.scheme, dtype)
            weight = weight.t().contiguous() if stored.transposed else weight
            setattr(module, param_name, nn.Parameter(weight, requires_grad=False))
            delattr(module, f"{param_name}_codes")
            delattr(module, f"{param_name}_scales")


def is_quantized(model: nn.Module) -> bool:
    return any(module.__dict__.get(STORED) for module in model.modules())


def quantized_scheme(model: nn.Module) -> str | None:
    """The scheme the base's quantized parameters use (None if none is)."""
    schemes = {s.scheme for m in model.modules() for s in m.__dict__.get(STORED, {}).values()}
    return ", ".join(sorted(schemes)) or None


def stored_codes(model: nn.Module, target: str) -> tuple[nn.Module, str, StoredCodes] | None:
    """``(module, parameter name, how it is stored)`` of the parameter ``target`` if it is stored as codes,
    else None."""
    module_name, _, param_name = str(target).rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    stored = module.__dict__.get(STORED, {}).get(param_name)
    return (module, param_name, stored) if stored is not None else None


def refuse_on_quantized(model: nn.Module, action: str, why: str) -> None:
    """Raise if ``model``'s base is quantized: ``action`` (``"merge()"``) needs full-precision weights."""
    if is_quantized(model):
        raise AdapterError(
            f"{action} needs the full-precision base weights, but they are quantized ({why}); "
            "call model.dequantize() first (decodes the codes into full-precision weights)"
        )
