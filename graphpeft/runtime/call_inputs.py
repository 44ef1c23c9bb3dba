"""The inputs of a :class:`~graphpeft.runtime.model.GraphPeftModel` call: positional and keyword arguments bound to the
base model's forward parameters and checked, the canonical call used to find sites, and ``example_inputs``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import CallError, did_you_mean
from ..tracing.example_inputs import max_positions
from ..tracing.model_facts import is_transformers_model


def bind_inputs(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` and ``kwargs`` of a call on the GraphPeftModel ``model`` as one checked kwargs dict
    (``None`` values dropped, ``use_cache=False`` for transformers models that take it)."""
    names = [p for p in model._params if p not in ("self", "args", "kwargs")]
    if len(args) > len(names):
        raise CallError(
            f"{type(model.base_model).__name__} takes at most {len(names)} positional inputs, got {len(args)}"
        )
    for name, value in zip(names, args, strict=False):
        if name in kwargs:
            raise CallError(f"input {name!r} given both positionally and by keyword")
        kwargs[name] = value
    allowed = set(names) | extra_kwargs(model.base_model)
    for name in kwargs:
        if name not in allowed:
            raise CallError(
                f"{type(model.base_model).__name__} takes no input {name!r}{did_you_mean(name, allowed)}; "
                f"it takes {', '.join(sorted(allowed))}"
            )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model._transformers and "use_cache" in names:
        if kwargs.get("use_cache"):
            raise CallError("use_cache=True is not supported in forward(); graphpeft's generate() manages the KV cache")
        kwargs["use_cache"] = False
    for name in ("cache", "past_key_values", "encoder_outputs"):
        if name in kwargs:
            raise CallError(
                f"input {name!r} is not supported by GraphPeftModel.forward(); use generate() for cached decoding"
            )
    if model._transformers:
        check_model_inputs(model.base_model, kwargs)
    return kwargs


TOKEN_INPUTS = ("input_ids", "decoder_input_ids")
SEQUENCE_INPUTS = (
    *TOKEN_INPUTS,
    "attention_mask",
    "decoder_attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "labels",
)


def check_model_inputs(base: nn.Module, kwargs: dict[str, Any]) -> None:
    """What a transformers model's inputs must be, checked on metadata only (dtype, shape: no value is read,
    so no device sync). Out-of-range values are named when the model fails on them (:func:`explained_failures`)."""
    for name in SEQUENCE_INPUTS:
        if name in kwargs and not isinstance(kwargs[name], torch.Tensor):
            raise CallError(
                f"{name} must be a torch.Tensor, got {type(kwargs[name]).__name__}; tokenize with return_tensors='pt'"
            )
    for name in TOKEN_INPUTS:
        ids = kwargs.get(name)
        if ids is not None and (ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool):
            raise CallError(
                f"{name} must hold integer token ids, got a {ids.dtype} tensor; tokenize with return_tensors='pt'"
            )
        if ids is not None and ids.dim() < 2:
            raise CallError(
                f"{name} must be (batch, length), got shape {tuple(ids.shape)}; add the batch dimension ({name}[None])"
            )
    if "input_ids" in kwargs and "inputs_embeds" in kwargs:
        raise CallError("pass input_ids or inputs_embeds, not both")
    if "inputs_embeds" in kwargs:
        _check_embeds(base, kwargs["inputs_embeds"])
    labels = kwargs.get("labels")
    if labels is not None and labels.dtype.is_floating_point and _is_language_model(base):
        raise CallError(
            f"labels of a language model are token ids (integers, -100 to ignore), got a {labels.dtype} tensor"
        )
    for name in SEQUENCE_INPUTS:
        value = kwargs.get(name)
        if value is not None and value.dim() and value.shape[0] == 0:
            raise CallError(f"{name} has an empty batch (shape {tuple(value.shape)}); pass at least one row")
        if value is not None and name != "labels" and value.dim() >= 2 and value.shape[1] == 0:
            raise CallError(f"{name} is an empty sequence (shape {tuple(value.shape)}); pass at least one position")


def _check_embeds(base: nn.Module, embeds: torch.Tensor) -> None:
    if not embeds.dtype.is_floating_point:
        raise CallError(f"inputs_embeds must be floating point (batch, length, width), got a {embeds.dtype} tensor")
    table = _input_embedding_table(base)
    width = table.shape[1] if table is not None else None
    if width is not None and (embeds.dim() != 3 or embeds.shape[-1] != width):
        raise CallError(
            f"inputs_embeds must be (batch, length, {width}) for the model's embedding width {width}, "
            f"got {tuple(embeds.shape)}"
        )


def _input_embedding_table(base: nn.Module) -> torch.Tensor | None:
    """The (vocab, width) input embedding weight of a transformers model, or None."""
    get_embeddings = getattr(base, "get_input_embeddings", None)
    try:
        table = get_embeddings() if get_embeddings is not None else None
    except (AttributeError, NotImplementedError):
        return None
    weight = getattr(table, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def _is_language_model(base: nn.Module) -> bool:
    get_head = getattr(base, "get_output_embeddings", None)
    try:
        return get_head is not None and get_head() is not None
    except (AttributeError, NotImplementedError):
        return False


@contextlib.contextmanager
def explained_failures(model: Any, kwargs: dict[str, Any]) -> Iterator[None]:
    """Name the input that made a call fail: an id outside the vocabulary, a label outside the classes, a
    sequence past a learned position table (the model raises IndexError), or shapes that break a relation the
    exported graph checks (its guards raise AssertionError).

    Values are read only after a failure, so valid calls pay nothing. On an accelerator, an out-of-range
    index stops the kernel with a device-side assert that poisons the device context instead of raising
    IndexError here; checking every call beforehand would cost a device sync per call, so it is not done.
    """
    try:
        yield
    except IndexError as exc:
        cause = _out_of_range(model.base_model, kwargs) if model._transformers else None
        if cause is None:
            raise
        raise CallError(cause) from exc
    except AssertionError as exc:
        if not str(exc).startswith("Guard failed"):
            raise
        raise CallError(
            f"the inputs' shapes do not fit together ({str(exc).removeprefix('Guard failed: ').strip()}); "
            "give the inputs it names matching sizes"
        ) from exc


def _out_of_range(base: nn.Module, kwargs: dict[str, Any]) -> str | None:
    table = _input_embedding_table(base)
    vocab = table.shape[0] if table is not None else None
    for name in TOKEN_INPUTS:
        ids = kwargs.get(name)
        if vocab is not None and isinstance(ids, torch.Tensor):
            bad = ids[(ids < 0) | (ids >= vocab)]
            if bad.numel():
                return (
                    f"{name} holds id {int(bad[0])}, outside the vocabulary 0..{vocab - 1}; "
                    "check the tokenizer matches the model"
                )
    labels = kwargs.get("labels")
    classes = vocab if _is_language_model(base) else getattr(base.config, "num_labels", None)
    if classes is not None and isinstance(labels, torch.Tensor) and not labels.dtype.is_floating_point:
        bad = labels[((labels < 0) & (labels != -100)) | (labels >= classes)]
        if bad.numel():
            return f"labels holds {int(bad[0])}, outside 0..{classes - 1} (or -100 to ignore a position)"
    limit = max_positions(base.config)
    for name in SEQUENCE_INPUTS:
        value = kwargs.get(name)
        if limit is not None and isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] > limit:
            return (
                f"{name} has {value.shape[1]} positions, longer than the model's {limit} positions "
                "(its learned position table); truncate the inputs"
            )
    return None


def canonical_kwargs(model: Any) -> dict[str, Any]:
    """The call whose graph defines the sites: ``example_inputs`` for plain modules; for transformers models
    ``input_ids`` + ``attention_mask`` (2, 8) (and ``decoder_input_ids`` (2, 5) for encoder-decoders)."""
    if not model._transformers:
        return dict(model._example)
    device = next(model.base_model.parameters()).device
    ids = torch.zeros(2, 8, dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.base_model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = torch.zeros(2, 5, dtype=torch.long, device=device)
    return model._bind((), kwargs)


def extra_kwargs(model: nn.Module) -> set[str]:
    """Keyword inputs a transformers model takes through ``**kwargs``."""
    if not is_transformers_model(model):
        return set()
    extra = {"return_dict", "output_attentions", "output_hidden_states"}
    try:
        from transformers.utils.generic import TransformersKwargs  # noqa: PLC0415 - older transformers lack it

        extra |= set(TransformersKwargs.__annotations__)
    except ImportError:
        pass
    return extra


def as_kwargs(model: nn.Module, params: list[str], example: Any) -> dict[str, Any] | None:
    """``example_inputs`` (a tensor, a tuple in forward's order, or a dict) as kwargs; None stays None."""
    if example is None:
        return None
    if isinstance(example, dict):
        return dict(example)
    if isinstance(example, torch.Tensor):
        example = (example,)
    names = [p for p in params if p not in ("self", "args", "kwargs")]
    if len(example) > len(names):
        raise CallError(
            f"example_inputs has {len(example)} entries but {type(model).__name__}.forward takes {len(names)}"
        )
    return dict(zip(names, example, strict=False))
