"""Child process for the checkpointing memory test: peak RSS growth of one LoRA training step.

    python tests/checkpoint_memory.py {plain|checkpointed}  ->  prints the growth in KiB

The graph is traced and run once on a short sequence first (the export's own peak is then
behind us); the measured step runs a long sequence through the same dynamic-shape graph.
"""

from __future__ import annotations

import resource
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft


def peak_growth_kib(checkpointing: bool, layers: int = 3, length: int = 1024) -> int:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=256, intermediate_size=1024, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=length,
    )
    model = graphpeft.apply(LlamaForCausalLM(config), "lora", checkpointing=checkpointing).train()
    short = torch.randint(0, 64, (4, 16))
    model(input_ids=short, labels=short).loss.backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = torch.randint(0, 64, (4, length))
    model(input_ids=ids, labels=ids).loss.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(peak_growth_kib(sys.argv[1] == "checkpointed"))
