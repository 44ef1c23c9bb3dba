"""Greedy generation speed: graphpeft's generate vs transformers' generate on a PEFT LoRA model.

Both run the same base weights and the same LoRA adapter (saved by PEFT, loaded by graphpeft),
alternating in one process; each side reports the median tokens/s over the repeats.

    python -m benchmarks.generate                      # tiny llama + SmolLM2-135M-shaped llama
    python -m benchmarks.generate --models tiny --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft

MODELS = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
}


def build(name: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        **MODELS[name], max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=None
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # never stop early: both sides generate every token
    return model


def contenders(name: str, rank: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(PEFT model, graphpeft model) with the same base weights and LoRA weights (B != 0)."""
    from peft import LoraConfig, get_peft_model

    base = build(name)
    peft_model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).eval()
    with tempfile.TemporaryDirectory() as directory:
        peft_model.save_pretrained(directory)
        graph_model = graphpeft.load(base, directory)
    return peft_model, graph_model


def tokens_per_second(run, batch: int, new_tokens: int) -> float:
    start = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - start
    assert out.shape[1] >= new_tokens
    return batch * new_tokens / elapsed


def measure(name: str, batch: int, prompt: int, new_tokens: int, repeats: int) -> dict[str, float]:
    peft_model, graph_model = contenders(name, rank=8)
    ids = torch.randint(3, MODELS[name]["vocab_size"], (batch, prompt), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[0, : prompt // 4] = 0  # left padding on the first row
    runs = {
        "transformers+peft": lambda: peft_model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False
        ),
        "graphpeft": lambda: graph_model.generate(ids, mask, max_new_tokens=new_tokens),
    }
    with torch.no_grad():
        same = torch.equal(runs["graphpeft"](), runs["transformers+peft"]())  # also warms up (and traces) both
        speeds: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(repeats):
            for key, run in runs.items():
                speeds[key].append(tokens_per_second(run, batch, new_tokens))
    result = {key: statistics.median(values) for key, values in speeds.items()}
    result["same_ids"] = same
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{os.cpu_count()} cpus, torch threads {args.threads}"
    )
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, graphpeft {graphpeft.__version__}")
    print(f"batch {args.batch}, prompt {args.prompt}, new tokens {args.new_tokens}, repeats {args.repeats} (median)\n")
    print("| model | transformers+PEFT tok/s | graphpeft tok/s | ratio | same ids |")
    print("|---|---:|---:|---:|---|")
    for name in args.models:
        result = measure(name, args.batch, args.prompt, args.new_tokens, args.repeats)
        base, ours = result["transformers+peft"], result["graphpeft"]
        print(f"| {name} | {base:.1f} | {ours:.1f} | {ours / base:.2f} | {result['same_ids']} |", flush=True)


if __name__ == "__main__":
    main()
