"""LoRA fine-tuning of a tiny Llama built from a config: the loss falls, the adapter is
saved, reloaded into a fresh copy of the base model, and gives the same outputs.

    python examples/tiny_llama_lora.py --steps 60 --out out/tiny-llama-lora
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft


def make_batch(batch_size: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Counting sequences (start, start+1, ...) mod vocab: easy to learn, impossible to guess."""
    start = torch.randint(0, vocab, (batch_size, 1), generator=generator)
    return (start + torch.arange(length)) % vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default="out/tiny-llama-lora")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    base = LlamaForCausalLM(config)
    pristine = copy.deepcopy(base)

    model = graphpeft.apply(base, "lora", r=8, alpha=16)
    model.print_trainable_parameters()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    generator = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids = make_batch(args.batch_size, args.length, config.vocab_size, generator)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1 or step % 10 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.1f}s")

    model.save_pretrained(args.out, overwrite=True)
    model.eval()
    reloaded = graphpeft.load(pristine, args.out)
    probe = make_batch(4, args.length, config.vocab_size, generator)
    same = torch.equal(model(input_ids=probe).logits, reloaded(input_ids=probe).logits)
    print(f"saved to {args.out}; reloaded adapter gives identical logits: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
