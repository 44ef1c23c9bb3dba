"""Generation settings (checked, with defaults from the model's ``generation_config``) and token choice.

Sampling follows transformers' order of logits warpers: temperature, then top-k, then top-p
(nucleus: keep the smallest set of most likely tokens whose probability reaches ``top_p``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CallError, did_you_mean

DEFAULT_NEW_TOKENS = 20
GENERATE_OPTIONS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "generator",
)


@dataclass(frozen=True)
class GenerationSettings:
    """Resolved, validated settings of one ``generate`` call."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    generator: torch.Generator | None


def resolve_settings(
    config: Any,
    prompt_length: int,
    encoder_decoder: bool,
    max_positions: int | None,
    given: dict[str, Any],
    unsupported: dict[str, Any],
) -> GenerationSettings:
    """Merge the caller's options (``None`` = not given) over ``config`` (a ``GenerationConfig``) and check them.

    Without ``max_new_tokens`` anywhere, ``config.max_length`` bounds the total length, or else 20 new
    tokens are generated (fewer when the prompt nearly fills ``max_positions``), as in transformers.
    """
    if unsupported:
        name = next(iter(unsupported))
        raise CallError(
            f"generate() takes no option {name!r}{did_you_mean(name, GENERATE_OPTIONS)}; graphpeft's generate "
            f"supports {', '.join(GENERATE_OPTIONS)} (greedy or sampled decoding, no beam search)"
        )

    def pick(name: str, fallback: Any) -> Any:
        value = given.get(name)
        if value is None:
            value = getattr(config, name, None)
        return fallback if value is None else value

    max_new = given.get("max_new_tokens")
    if max_new is None:
        max_new = getattr(config, "max_new_tokens", None)
    if max_new is None and getattr(config, "max_length", None) is not None:
        max_new = config.max_length - (1 if encoder_decoder else prompt_length)
    if max_new is None:  # transformers' default: 20 new tokens, within the model's position range
        max_new = DEFAULT_NEW_TOKENS
        if max_positions is not None and not encoder_decoder:
            max_new = min(max_new, max_positions - prompt_length)
    do_sample = pick("do_sample", False)
    settings = GenerationSettings(
        max_new_tokens=_check_int("max_new_tokens", max_new, 1, "pass max_new_tokens=N with N >= 1"),
        do_sample=_check_bool("do_sample", do_sample),
        temperature=_check_float("temperature", pick("temperature", 1.0)),
        top_k=_check_int("top_k", pick("top_k", 0), 0, "pass top_k=0 to disable top-k filtering"),
        top_p=_check_float("top_p", pick("top_p", 1.0)),
        eos_token_ids=_token_ids("eos_token_id", given.get("eos_token_id"), getattr(config, "eos_token_id", None)),
        pad_token_id=0,
        generator=_check_generator(given.get("generator")),
    )
    if settings.do_sample and settings.temperature <= 0:
        raise CallError(
            f"temperature must be > 0 when sampling, got {settings.temperature}; "
            "use do_sample=False for greedy decoding"
        )
    if not 0 < settings.top_p <= 1:
        raise CallError(f"top_p must be in (0, 1], got {settings.top_p}; pass top_p=1.0 to disable nucleus filtering")
    pad = pick("pad_token_id", None)
    if pad is None:
        pad = settings.eos_token_ids[0] if settings.eos_token_ids else 0
    pad = _check_int("pad_token_id", pad, 0, "pass the tokenizer's pad_token_id")
    return GenerationSettings(**{**settings.__dict__, "pad_token_id": pad})


def _check_int(name: str, value: Any, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CallError(f"{name} must be an integer >= {minimum}, got {value!r}; {fix}")
    return value


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CallError(f"{name} must be a number, got {value!r}")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise CallError(f"{name} must be True or False, got {value!r}")
    return value


def _check_generator(value: Any) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise CallError(
            f"generator must be a torch.Generator, got {type(value).__name__}; pass torch.Generator().manual_seed(0)"
        )
    return value


def _token_ids(name: str, value: Any, default: Any) -> tuple[int, ...]:
    value = default if value is None else value
    if value is None:
        return ()
    ids = [value] if isinstance(value, int) else value
    if not isinstance(ids, Sequence) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CallError(f"{name} must be a token id or a list of token ids, got {value!r}")
    return tuple(ids)


def choose_tokens(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """The next token per row: argmax, or a sample from the warped distribution.

    logits: (batch, vocab), float32. Returns (batch,) int64.
    """
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(warp(logits, settings), dim=-1)
    return torch.multinomial(probs, 1, generator=settings.generator).squeeze(1)


def warp(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """Temperature, top-k and top-p applied to (batch, vocab) logits; filtered tokens get -inf."""
    scores = logits / settings.temperature if settings.temperature != 1.0 else logits
    if 0 < settings.top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, settings.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if settings.top_p < 1.0:
        scores = _nucleus(scores, settings.top_p)
    return scores


def _nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask every token outside the smallest top set whose probability sum reaches ``top_p``."""
    ascending, order = torch.sort(scores, dim=-1)
    tail_mass = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = tail_mass <= 1 - top_p
    drop[:, -1] = False  # always keep the most likely token
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
