"""Mixed-adapter batch vs one adapter, graphpeft and PEFT side by side.

    python -m benchmarks.mixed_batch [--repeats 30] [--batch 8] [--seq 64]

Four LoRA adapters (r=8 on q/v, random weights) are made with PEFT, saved, and loaded
into both PEFT and graphpeft, so both run the same weights. Per repeat, in alternating
order, each of the four setups runs one eval forward:
  graphpeft one adapter | graphpeft mixed (row i uses adapter i % 4) | PEFT one | PEFT mixed
The table reports median milliseconds and each library's mixed-batch overhead over its own
one-adapter forward. Goal: graphpeft's overhead <= +3 % and below PEFT's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft

NAMES = ("a", "b", "c", "d")


def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


def save_adapters(folder: Path) -> None:
    for i, name in enumerate(NAMES):
        base = base_model()
        torch.manual_seed(100 + i)  # after base_model(), which seeds 0: each adapter gets its own weights
        model = get_peft_model(
            base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        model.save_pretrained(folder / name)


def build(folder: Path) -> tuple[graphpeft.GraphPeftModel, PeftModel]:
    ours = graphpeft.load(base_model(), folder / NAMES[0], adapter_name=NAMES[0])
    peft = PeftModel.from_pretrained(base_model(), folder / NAMES[0], adapter_name=NAMES[0])
    for name in NAMES[1:]:
        ours.load_adapter(folder / name, name)
        peft.load_adapter(folder / name, adapter_name=name)
    ours.set_adapter(NAMES[0])
    peft.set_adapter(NAMES[0])
    return ours.eval(), peft.eval()


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on shared CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapters(Path(tmp))
        ours, peft = build(Path(tmp))
    ids = torch.randint(3, 2048, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rows = [NAMES[i % len(NAMES)] for i in range(args.batch)]
    setups = {
        "graphpeft one adapter": lambda: ours(**inputs),
        "graphpeft mixed batch": lambda: ours(**inputs, adapter_names=rows),
        "PEFT one adapter": lambda: peft(**inputs),
        "PEFT mixed batch": lambda: peft(**inputs, adapter_names=rows),
    }
    with torch.no_grad():
        ours_mixed = ours(**inputs, adapter_names=rows).logits
        gap = (ours_mixed - peft(**inputs, adapter_names=rows).logits).abs().max().item()
        if torch.allclose(ours_mixed[0], ours_mixed[1]):
            raise SystemExit("adapters a and b give the same logits: the benchmark's adapters are not distinct")
        for call in setups.values():  # warm-up: traces graphpeft's graphs
            call()
        samples = {name: [] for name in setups}
        for repeat in range(args.repeats):
            order = list(setups) if repeat % 2 == 0 else list(reversed(setups))
            for name in order:
                samples[name].append(timed(setups[name]))
    median = {name: statistics.median(values) for name, values in samples.items()}
    print(
        f"Llama 4 layers, hidden 256, batch {args.batch} x {args.seq} tokens, 4 LoRA adapters r=8 on q/v, eval, "
        f"CPU ({torch.get_num_threads()} threads), {args.repeats} repeats, median; "
        f"max |graphpeft - PEFT| on the mixed batch: {gap:.1e}\n"
    )
    print("| setup | median ms | mixed-batch overhead |")
    print("|---|---:|---:|")
    for lib in ("graphpeft", "PEFT"):
        one, mixed = median[f"{lib} one adapter"], median[f"{lib} mixed batch"]
        print(f"| {lib} one adapter | {one:.2f} | |")
        print(f"| {lib} mixed batch | {mixed:.2f} | {100 * (mixed / one - 1):+.1f} % |")


if __name__ == "__main__":
    main()
