"""Review sentiment with all-MiniLM-L6-v2 (BERT, 22.7M): LoRA vs training the head alone.

Two runs on the same split of the review snippets, same steps and batches:

* ``lora``: graphpeft's built-in BERT ``lora_pooler`` rule (q/v LoRA in all 6 layers and LoRA on
  the pooler's dense layer, which the classifier reads [CLS] through; the new classifier head
  trains in full, as PEFT's SEQ_CLS task does). all-MiniLM-L6-v2 was trained as a sentence
  encoder with mean pooling, so its pooler never learned to summarize a sentence: adapting it
  is worth ~2 points here. ``--rule lora`` gives PEFT's default (q/v only);
* ``head only``: a single Rule, method ``train`` on the ``classifier`` module.

    python examples/minilm_reviews.py
    python examples/minilm_reviews.py --steps 30 --held-out 64
"""

from __future__ import annotations

import argparse
import os

import torch
from rich.console import Console
from rich.table import Table

import graphpeft
from graphpeft import Pattern, Rule
from review_assets import Review, load_reviews, minilm_dir, split_reviews
from review_training import bucketed_batches, chunks, progress_bar, train

HEAD_ONLY = Rule("head_only", "train", [Pattern(op="module", module="classifier")], {})


class Encoder:
    """Tokenizes reviews into padded batches: ``input_ids``/``attention_mask``/``token_type_ids`` (B, S)."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def __call__(self, reviews: list[Review]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                [r.text for r in reviews],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
        )

    def length(self, review: Review) -> int:
        return min(len(self.tokenizer(review.text).input_ids), self.max_tokens)


def labels_of(reviews: list[Review]) -> torch.Tensor:
    return torch.tensor([int(r.positive) for r in reviews])


@torch.no_grad()
def accuracy(model, encode: Encoder, reviews: list[Review], batch_size: int) -> float:
    model.eval()
    correct = 0
    with progress_bar(Console()) as progress:
        task = progress.add_task("evaluate", total=len(reviews), info="")
        for part in chunks(reviews, batch_size):
            logits = model(**encode(list(part))).logits
            correct += int((logits.argmax(-1) == labels_of(list(part))).sum())
            progress.update(task, advance=len(part))
    return correct / len(reviews)


def fresh_classifier(seed: int):
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "classifier weights newly initialized" is expected
    torch.manual_seed(seed)  # the same head initialization for both runs
    return BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)


def fine_tune(
    rules, args, encode: Encoder, train_set: list[Review], held_out: list[Review], console: Console, **overrides
) -> dict:
    model = graphpeft.apply(fresh_classifier(args.seed), rules, **overrides)
    trainable, total = model.get_nb_trainable_parameters()
    model.train()
    lengths = [encode.length(r) for r in train_set]
    batches = bucketed_batches(train_set, lengths, args.batch_size, args.seed)

    def step_loss(batch: list[Review]) -> tuple[torch.Tensor, int]:
        inputs = encode(batch)
        loss = model(**inputs, labels=labels_of(batch)).loss
        return loss, int(inputs["attention_mask"].sum())

    report = train([p for p in model.parameters() if p.requires_grad], batches, step_loss, args.steps, args.lr, console)
    return {
        "accuracy": accuracy(model, encode, held_out, args.batch_size * 4),
        "trainable": trainable,
        "total": total,
        "seconds": report.seconds,
        "first_loss": report.mean_loss(first=True),
        "last_loss": report.mean_loss(first=False),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--rule", default="lora_pooler", help="a LoRA rule of passes/bert.toml (lora: q/v only)")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, console: Console | None = None) -> dict:
    from transformers import AutoTokenizer

    console = console or Console()
    encode = Encoder(AutoTokenizer.from_pretrained(minilm_dir()), args.max_tokens)
    train_set, held_out = split_reviews(load_reviews(), args.held_out, args.seed)
    console.print(f"all-MiniLM-L6-v2; reviews: {len(train_set)} for training, {len(held_out)} held out")
    results = {
        "lora": fine_tune(args.rule, args, encode, train_set, held_out, console, r=args.r, alpha=args.alpha),
        "head only": fine_tune(HEAD_ONLY, args, encode, train_set, held_out, console),
    }
    table = Table(title=f"all-MiniLM-L6-v2, held-out sentiment, {args.steps} steps x {args.batch_size}")
    for column in ("", "accuracy", "trainable", "train loss", "time"):
        table.add_column(column, justify="right" if column else "left")
    for name, res in results.items():
        label = f"{args.rule} r={args.r}+head" if name == "lora" else name
        table.add_row(
            label,
            f"{res['accuracy']:.3f}",
            f"{res['trainable']:,} ({100 * res['trainable'] / res['total']:.2f}%)",
            f"{res['first_loss']:.3f} -> {res['last_loss']:.3f}",
            f"{res['seconds']:.0f}s",
        )
    console.print(table)
    return results


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(parse_args())


if __name__ == "__main__":
    main()
