"""The language-model head's cross-entropy without vocabulary-sized tensors kept for backward.

Eager PyTorch keeps, for backward, the log-softmax of the logits (N x V floats, N = batch x
sequence) and builds two more tensors of that size in backward (the gradients of the
log-softmax and of the logits) before the head's matmul reduces them to N x H. With a 49k
vocabulary these are the largest tensors of a small model's training step.

:func:`fuse_head_loss` rewrites a training graph's
``cross_entropy_loss(view(to?(linear(h, W, b?)), (-1, V)), labels)`` into
``head_cross_entropy(h, W, b, logits.detach(), labels)``: the loss is read from the logits the
graph returns anyway, and backward computes ``dL/dh = ((softmax - onehot) * scale) @ W`` a few
rows at a time. The logits output keeps its own autograd path (a loss a user builds on it still
reaches the adapters). The loss equals the unfused graph's exactly when the logits fit in one
chunk, and to float rounding otherwise (the sum over rows is then taken chunk by chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

CHUNK_ELEMENTS = 1 << 21  # rows per chunk x vocabulary: an 8 MiB fp32 slice at a time

_MEAN, _SUM = 1, 2  # ATen's reduction enum (0 is "none", which is left unfused)
_NAMES = {_MEAN: "mean", _SUM: "sum"}
_CASTS = {torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype_layout}


def _chunks(rows: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, logits, labels, ignore_index: int, reduction: int):
        """``hidden`` (..., H), ``weight`` (V, H), ``bias`` (V,) or None, ``logits`` (N, V) = the
        head's output (detached), ``labels`` (N,) -> scalar loss."""
        parts = _chunks(logits.shape[0], logits.shape[1])
        if len(parts) == 1:  # the same kernel as the unfused graph, so the same value to the bit
            loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=_NAMES[reduction])
        else:
            total = sum(
                F.cross_entropy(logits[rows], labels[rows], ignore_index=ignore_index, reduction="sum")
                for rows in parts
            )
            assert isinstance(total, torch.Tensor)  # two or more parts: never sum()'s start value 0
            loss = total / (labels != ignore_index).sum() if reduction == _MEAN else total
        ctx.save_for_backward(hidden, weight, bias, logits, labels)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, logits, labels = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        flat = hidden.reshape(-1, hidden.shape[-1])
        keep = labels != ctx.ignore_index
        scale = grad_loss / keep.sum() if ctx.reduction == _MEAN else grad_loss
        row_scale = (keep * scale).unsqueeze(1).to(logits.dtype)  # (N, 1): 0 on ignored rows
        targets = torch.where(keep, labels, 0).unsqueeze(1)  # (N, 1)
        minus_one = torch.full_like(targets, -1, dtype=logits.dtype)
        grad_hidden = torch.empty_like(flat) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias) if need_bias else None
        for rows in _chunks(logits.shape[0], logits.shape[1]):
            grad = torch.softmax(logits[rows], dim=-1)  # d loss / d logits = (softmax - onehot) * scale
            grad.scatter_add_(1, targets[rows], minus_one[rows]).mul_(row_scale[rows])
            grad = grad.to(weight.dtype)
            if grad_hidden is not None:
                torch.mm(grad, weight, out=grad_hidden[rows])
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), flat[rows])
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(hidden.shape)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def head_cross_entropy(hidden, weight, bias, logits, labels, ignore_index: int = -100, reduction: int = _MEAN):
    """Cross-entropy of ``logits = hidden @ weight.T + bias`` against ``labels``, differentiable in
    ``hidden``/``weight``/``bias`` without vocabulary-sized saved tensors (see the module docstring).

    Shapes: ``hidden`` (..., H) with N rows in all, ``weight`` (V, H), ``bias`` (V,) or None,
    ``logits`` (N, V) (not differentiated through), ``labels`` (N,) int64; returns a scalar.
    """
    return _HeadCrossEntropy.apply(hidden, weight, bias, logits, labels, ignore_index, reduction)


def _head_linear(node: fx.Node) -> fx.Node | None:
    """The ``linear`` node whose output ``node`` (a cross-entropy input) views, through an optional cast."""
    if node.op != "call_function" or node.target is not torch.ops.aten.view.default:
        return None
    source = node.args[0]
    if isinstance(source, fx.Node) and source.op == "call_function" and source.target in _CASTS:
        source = source.args[0]
    if isinstance(source, fx.Node) and source.target is torch.ops.aten.linear.default:
        return source
    return None


def fuse_head_loss(gm: fx.GraphModule) -> int:
    """Rewrite each plain head cross-entropy of ``gm`` (class weights, label smoothing and
    ``reduction="none"`` are left as they are); returns how many were rewritten."""
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cross_entropy_loss.default:
            continue
        logits, labels, *rest = node.args
        options = dict(zip(("weight", "reduction", "ignore_index", "label_smoothing"), rest, strict=False))
        options.update(node.kwargs)
        linear = _head_linear(logits)
        if (
            linear is None
            or options.get("weight") is not None
            or options.get("label_smoothing", 0.0)
            or options.get("reduction", _MEAN) not in (_MEAN, _SUM)
        ):
            continue
        hidden, weight, bias = [*linear.args, None][:3]
        with gm.graph.inserting_before(node):
            detached = gm.graph.call_function(torch.ops.aten.detach.default, (logits,))
            loss = gm.graph.call_function(
                head_cross_entropy,
                (
                    hidden,
                    weight,
                    bias,
                    detached,
                    labels,
                    options.get("ignore_index", -100),
                    options.get("reduction", _MEAN),
                ),
            )
        loss.meta = dict(node.meta)
        node.replace_all_uses_with(loss)
        gm.graph.erase_node(node)
        fused += 1
    if fused:
        gm.graph.lint()
        gm.recompile()
    return fused
