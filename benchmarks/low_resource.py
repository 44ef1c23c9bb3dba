"""Training memory on the SmolLM2-135M shape: fp32 / int8 / NF4 base, with and without activation
checkpointing, graphpeft beside PEFT's fp32 LoRA. Each configuration runs in its own process.

    python -m benchmarks.low_resource            # prints a markdown table
    python -m benchmarks.low_resource --child graphpeft nf4 1   # one configuration (used internally)

Reported per configuration: peak RSS (VmHWM) over two training steps, measured after a warm-up
step, after freed heap went back to the OS (malloc_trim) and the kernel's peak mark was reset
(/proc/self/clear_refs 5). That peak holds the stored base weights (quantized or not), the
adapter and AdamW state, and the step's activations and temporaries. Memory does not depend
on how busy the CPU is, unlike time.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import graphpeft
from benchmarks.run import ALPHA, RANK, _rss_kib, build, peft_model, train_step

SHAPE = "smollm2-135m"
BATCH, SEQ = 2, 256
CONFIGS = [
    ("peft", "fp32", False),
    ("graphpeft", "fp32", False),
    ("graphpeft", "fp32", True),
    ("graphpeft", "int8", False),
    ("graphpeft", "nf4", False),
    ("graphpeft", "int8", True),
    ("graphpeft", "nf4", True),
]


def child(library: str, scheme: str, checkpointing: bool) -> dict[str, float]:
    torch.set_num_threads(1)
    base = build(SHAPE)
    if library == "peft":
        model = peft_model(base)
    else:
        model = graphpeft.apply(
            base,
            "lora",
            r=RANK,
            alpha=ALPHA,
            checkpointing=checkpointing,
            quantize=None if scheme == "fp32" else scheme,
        )
    model.train()
    ids = torch.randint(3, 49152, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    step = train_step(
        model,
        torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4),
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
    )
    step()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    resting = _rss_kib("VmRSS")
    for _ in range(2):
        step()
    peak = _rss_kib("VmHWM")
    return {"resting_mib": resting / 1024, "peak_mib": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("LIBRARY", "SCHEME", "CHECKPOINTING"))
    args = parser.parse_args()
    if args.child:
        library, scheme, flag = args.child
        print(json.dumps(child(library, scheme, flag == "1")))
        return
    rows = {}
    for library, scheme, checkpointing in CONFIGS:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.low_resource",
                "--child",
                library,
                scheme,
                "1" if checkpointing else "0",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        rows[(library, scheme, checkpointing)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(library, scheme, checkpointing, rows[(library, scheme, checkpointing)], file=sys.stderr, flush=True)
    reference = rows[("peft", "fp32", False)]["peak_mib"]
    print("| library | base | checkpointing | resting RSS MiB | peak RSS MiB | peak / PEFT fp32 |")
    print("|---|---|---|---:|---:|---:|")
    for (library, scheme, checkpointing), r in rows.items():
        print(
            f"| {library} | {scheme} | {'yes' if checkpointing else 'no'} | {r['resting_mib']:.0f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / reference:.2f} |"
        )


if __name__ == "__main__":
    main()
