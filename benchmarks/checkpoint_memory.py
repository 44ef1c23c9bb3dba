"""Peak RSS growth of one LoRA training step, plain vs activation-checkpointed
(graphpeft.rewrite.graph_passes.activation_checkpointing).

    python -m benchmarks.checkpoint_memory                  # both modes, each in its own process, and the ratio
    python -m benchmarks.checkpoint_memory --child plain    # one mode: prints the growth in KiB (used internally)

A 3-layer Llama (hidden 256) is traced and run once on a short sequence first (the export's own peak is
then behind us); the measured step runs 4 x 1024 tokens through the same dynamic-shape graph. The goal:
checkpointed growth below 0.8x plain (exit status 1 when missed). Memory does not depend on CPU load.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft

GOAL = 0.8
MODES = ("plain", "checkpointed")


def peak_growth_kib(checkpointing: bool, layers: int = 3, length: int = 1024) -> int:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=length,
    )
    model = graphpeft.apply(LlamaForCausalLM(config), "lora", checkpointing=checkpointing).train()
    short = torch.randint(0, 64, (4, 16))
    model(input_ids=short, labels=short).loss.backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = torch.randint(0, 64, (4, length))
    model(input_ids=ids, labels=ids).loss.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=MODES)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(1)
        print(peak_growth_kib(args.child == "checkpointed"))
        return 0
    growth = {}
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.checkpoint_memory", "--child", mode],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        growth[mode] = int(out.stdout.split()[-1])
    ratio = growth["checkpointed"] / growth["plain"]
    print(
        f"peak RSS growth of one step: plain {growth['plain'] / 1024:.0f} MiB, "
        f"checkpointed {growth['checkpointed'] / 1024:.0f} MiB, ratio {ratio:.2f} (goal < {GOAL})"
    )
    return 0 if ratio < GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
