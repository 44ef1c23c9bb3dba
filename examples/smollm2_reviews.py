"""LoRA fine-tuning of SmolLM2-135M-Instruct on movie-review snippets, offline, on CPU.

The model reads ``Review: <snippet>\\nSentiment:`` and generates the label text
(`` positive`` / `` negative``). The script measures the base model's zero-shot
held-out accuracy, trains LoRA adapters (graphpeft's built-in ``lora`` rule for Llama,
q_proj and v_proj of all 30 layers) with the loss on the label token only, measures
again, saves the adapter, reloads it into a fresh base model and shows predictions.

    python examples/smollm2_reviews.py                     # defaults: a few minutes on 2 cores
    python examples/smollm2_reviews.py --steps 40 --held-out 64 --out out/quick
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import graphpeft
from review_assets import DEFAULT_CACHE, Review, load_reviews, load_smollm2, split_reviews
from review_training import bucketed_batches, chunks, progress_bar, train

LABELS = {True: "positive", False: "negative"}
NEW_TOKENS = 1  # each label is one token (checked by Prompts); greedy decoding of it is the trained objective


def prompt(review: Review) -> str:
    return f"Review: {review.text}\nSentiment:"


@dataclass
class Encoded:
    """A left-padded batch: ``input_ids``/``attention_mask``/``position_ids`` (B, S), ``targets`` (B,)
    label token ids. Positions count real tokens only, as ``generate`` numbers them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    tokens: int

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


class Prompts:
    """Turns reviews into left-padded prompt batches, so every prompt ends at the last position."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.label_ids = {label: self._single_token(" " + word) for label, word in LABELS.items()}

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"label {text!r} is {len(ids)} tokens for this tokenizer; pick single-token labels")
        return ids[0]

    def ids(self, review: Review) -> list[int]:
        ids = self.tokenizer(prompt(review), add_special_tokens=False).input_ids
        return ids[-self.max_tokens :]  # keep the end: "... \nSentiment:" must survive truncation

    def encode(self, reviews: list[Review]) -> Encoded:
        rows = [self.ids(r) for r in reviews]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        targets = torch.tensor([self.label_ids[r.positive] for r in reviews])
        return Encoded(input_ids, attention_mask, position_ids, targets, sum(len(r) for r in rows))


def label_loss(model, batch: Encoded) -> torch.Tensor:
    """Cross-entropy of the label token after the prompt (the other positions carry no loss).

    ``logits_to_keep=1`` makes the model project only the last position onto the vocabulary,
    which is all this loss needs, and saves the 49k-way head on every other position."""
    logits = model(**batch.inputs(), logits_to_keep=1).logits
    return torch.nn.functional.cross_entropy(logits[:, -1].float(), batch.targets)


@torch.no_grad()
def predict(model, prompts: Prompts, reviews: list[Review], batch_size: int, label: str, console: Console) -> list[str]:
    """The first word each review's prompt makes the model generate (graphpeft's ``generate``,
    greedy, KV cache), lower-cased."""
    words: list[str] = []
    with progress_bar(console) as progress:
        task = progress.add_task(label, total=len(reviews), info="")
        for part in chunks(reviews, batch_size):
            batch = prompts.encode(list(part))
            tokens = model.generate(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=prompts.tokenizer.eos_token_id,
                pad_token_id=prompts.tokenizer.pad_token_id,
            )
            new = tokens[:, batch.input_ids.shape[1] :]
            words.extend(first_word(text) for text in prompts.tokenizer.batch_decode(new, skip_special_tokens=True))
            progress.update(task, advance=len(part))
    return words


def first_word(text: str) -> str:
    parts = text.strip().split()
    return parts[0].strip(".,!:;\"'").lower() if parts else ""


def accuracy(words: list[str], reviews: list[Review]) -> float:
    return sum(w == LABELS[r.positive] for w, r in zip(words, reviews, strict=True)) / len(reviews)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=120, help="held-out reviews to score")
    parser.add_argument("--train-samples", type=int, default=0, help="limit the training pool (0: all the rest)")
    parser.add_argument("--show", type=int, default=5, help="predictions of the reloaded model to print")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-tokens", type=int, default=96, help="prompt length limit (tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/smollm2-reviews-lora", help="adapter output directory")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the dequantized model is cached")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, console: Console | None = None) -> dict:
    """The whole job; returns the measured numbers (the slow test checks them)."""
    console = console or Console()
    torch.manual_seed(args.seed)
    base, tokenizer, seconds, source = load_smollm2(Path(args.cache))
    console.print(f"loaded SmolLM2-135M-Instruct from {source} in {seconds:.1f}s")
    train_set, held_out = split_reviews(load_reviews(), args.held_out, args.seed)
    if args.train_samples:
        train_set = train_set[: args.train_samples]
    console.print(f"reviews: {len(train_set)} for training, {len(held_out)} held out")
    prompts = Prompts(tokenizer, args.max_tokens)

    started = time.perf_counter()
    model = graphpeft.apply(base, "lora", r=args.r, alpha=args.alpha)
    trainable, total = model.get_nb_trainable_parameters()
    console.print(
        f"graphpeft.apply(model, 'lora', r={args.r}, alpha={args.alpha}) in {time.perf_counter() - started:.1f}s: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )

    # LoRA's B starts at zero, so before training the model computes exactly the base model.
    model.eval()
    zero_shot_words = predict(model, prompts, held_out, args.batch_size * 2, "zero-shot", console)
    zero_shot = accuracy(zero_shot_words, held_out)
    answers = ", ".join(f"{word or '(blank)'!r} x{n}" for word, n in Counter(zero_shot_words).most_common(4))
    console.print(f"zero-shot held-out accuracy: {zero_shot:.3f} (most frequent answers: {answers})")

    model.train()
    lengths = [len(prompts.ids(r)) for r in train_set]
    batches = (prompts.encode(b) for b in bucketed_batches(train_set, lengths, args.batch_size, args.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    report = train(params, batches, lambda b: (label_loss(model, b), b.tokens), args.steps, args.lr, console)
    model.eval()
    tuned_words = predict(model, prompts, held_out, args.batch_size * 2, "evaluate", console)
    tuned = accuracy(tuned_words, held_out)

    model.save_pretrained(args.out, overwrite=True)
    adapter_bytes = sum(f.stat().st_size for f in Path(args.out).glob("*.safetensors"))
    fresh, _, _, _ = load_smollm2(Path(args.cache))
    reloaded = graphpeft.load(fresh, args.out)
    shown = held_out[: args.show]
    reloaded_words = predict(reloaded, prompts, shown, args.batch_size * 2, "reloaded", console)

    table = Table(title="SmolLM2-135M-Instruct, held-out review sentiment")
    table.add_column("")
    table.add_column("zero-shot", justify="right")
    table.add_column(f"LoRA r={args.r}", justify="right")
    table.add_row("held-out accuracy", f"{zero_shot:.3f}", f"{tuned:.3f}")
    table.add_row("trainable params", "0", f"{trainable:,} ({100 * trainable / total:.2f}%)")
    table.add_row("adapter file", "-", f"{adapter_bytes / 1e6:.2f} MB")
    table.add_row("train time", "-", f"{report.seconds:.0f}s ({args.steps} steps x {args.batch_size})")
    table.add_row(
        "train loss (first/last 10 steps)",
        "-",
        f"{report.mean_loss(first=True):.3f} -> {report.mean_loss(first=False):.3f}",
    )
    console.print(table)

    same = reloaded_words == tuned_words[: len(shown)]
    console.print(f"adapter saved to {args.out}; reloaded into a fresh base model (graphpeft.load):")
    for review, word in zip(shown, reloaded_words, strict=True):
        text = review.text if len(review.text) <= 90 else review.text[:87] + "..."
        console.print(
            f"  [{'green' if word == LABELS[review.positive] else 'red'}]{word:>8}[/] "
            f"(truth {LABELS[review.positive]:>8})  {text}"
        )
    console.print(f"reloaded predictions identical to the trained model's: {same}")
    return {
        "zero_shot": zero_shot,
        "tuned": tuned,
        "losses": report.losses,
        "reload_identical": same,
        "trainable": trainable,
        "total": total,
        "adapter_bytes": adapter_bytes,
        "train_seconds": report.seconds,
    }


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(parse_args())
    if not results["reload_identical"]:
        raise SystemExit("the reloaded adapter predicts differently from the trained model")


if __name__ == "__main__":
    main()
