"""Performance of graphpeft next to PEFT 0.21.2: train step, training memory, inference, apply, file size.

    python -m benchmarks.run                 # full run (tiny + SmolLM2-135M shape), prints the table
    python -m benchmarks.run --quick         # fewer repeats, for a smoke check
    python -m benchmarks.run --write         # also puts the table into BENCHMARKS.md (Performance section)

Every timing alternates graphpeft and its reference in one process, repeat by repeat, and reports
the median, so slow phases of a shared machine hit both sides alike. Peak memory runs each
configuration in its own subprocess (see :func:`memory_child`). Weights are random (built from
configs, nothing is downloaded); both libraries get the same base weights and the same adapter.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import graphpeft

SHAPES = {
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
        tie_word_embeddings=True,
    ),
    "llama-7b (meta)": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "llama-80-layer (meta)": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
}
RANK, ALPHA = 16, 32
BATCH, SEQ = 2, 64
SECTION = "## Performance: graphpeft vs PEFT 0.21.2 (`python -m benchmarks.run`)"


def build(shape: str, device: str = "cpu") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048)
    with torch.device(device):
        return LlamaForCausalLM(config)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def peft_model(base: torch.nn.Module):
    from peft import get_peft_model

    return get_peft_model(base, lora_config())


def graph_model(base: torch.nn.Module, like=None) -> graphpeft.GraphPeftModel:
    """graphpeft LoRA q/v r=16 on ``base``; with ``like`` (a PEFT model) its adapter weights are copied in."""
    model = graphpeft.apply(base, "lora", r=RANK, alpha=ALPHA)
    if like is not None:
        with tempfile.TemporaryDirectory() as directory:
            like.save_pretrained(directory)
            model = graphpeft.load(model.unload(), directory, is_trainable=True)
    return model


def inputs(shape: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, SHAPES[shape]["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> Callable[[], None]:
    def step() -> None:
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def alternate(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run; the runs take turns, repeat by repeat (after one warm-up each)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def trainable(shape: str):
    """(graphpeft model, PEFT model) in train mode with the same base and adapter weights."""
    reference = peft_model(build(shape)).train()
    ours = graph_model(build(shape), like=reference).train()
    return ours, reference


def measure_train(shape: str, repeats: int) -> dict[str, float]:
    ours, reference = trainable(shape)
    batch = inputs(shape)
    runs = {}
    for key, model in (("graphpeft", ours), ("peft", reference)):
        params = [p for p in model.parameters() if p.requires_grad]
        runs[key] = train_step(model, torch.optim.AdamW(params, lr=1e-4), batch)
    return alternate(runs, repeats)


def measure_inference(shape: str, repeats: int) -> dict[str, float]:
    """Eval forward (no_grad) of: base, graphpeft unmerged/merged, PEFT unmerged/merged."""
    base = build(shape).eval()
    reference = peft_model(build(shape)).eval()
    ours = graph_model(build(shape), like=reference).eval()
    ours_merged = graph_model(build(shape), like=reference).eval()
    ours_merged.merge()
    peft_merged = copy.deepcopy(reference)
    peft_merged.merge_adapter()
    batch = inputs(shape)
    with torch.no_grad():
        runs = {
            "base": lambda: base(**batch),
            "graphpeft unmerged": lambda: ours(**batch),
            "graphpeft merged": lambda: ours_merged(**batch),
            "peft unmerged": lambda: reference(**batch),
            "peft merged": lambda: peft_merged(**batch),
        }
        return alternate(runs, repeats)


def measure_apply(shape: str, repeats: int) -> dict[str, float]:
    """Seconds to wrap a fresh model (graphpeft.apply traces the model; PEFT's get_peft_model)."""
    device = "meta" if "(meta)" in shape else "cpu"
    times: dict[str, list[float]] = {"graphpeft": [], "peft": []}
    for _ in range(repeats):
        for key, wrap in (("graphpeft", graph_model), ("peft", peft_model)):
            model = build(shape, device)
            start = time.perf_counter()
            wrap(model)
            times[key].append(time.perf_counter() - start)
            del model
    return {key: statistics.median(values) for key, values in times.items()}


def adapter_bytes(shape: str) -> dict[str, int]:
    """Bytes of the saved adapter weights file (same adapter, saved by each library)."""
    reference = peft_model(build(shape))
    ours = graph_model(build(shape), like=reference)
    sizes = {}
    with tempfile.TemporaryDirectory() as directory:
        for key, model in (("graphpeft", ours), ("peft", reference)):
            folder = Path(directory) / key
            model.save_pretrained(folder)
            sizes[key] = (folder / "adapter_model.safetensors").stat().st_size
            sizes[key + " folder"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return sizes


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def memory_child(shape: str, library: str, steps: int) -> dict[str, float]:
    """Peak RSS of training steps, in this (fresh) process.

    After one warm-up step (graphpeft traces; AdamW allocates its state), freed heap is returned
    to the OS (malloc_trim), the kernel's peak-RSS mark is reset (/proc/self/clear_refs 5), and
    ``steps`` more steps run. Reported: VmHWM (peak RSS) and its rise over VmRSS at the reset,
    i.e. the activations, gradients and temporaries of a step.
    """
    base = build(shape)
    model = (graph_model(base) if library == "graphpeft" else peft_model(base)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    step = train_step(model, torch.optim.AdamW(params, lr=1e-4), inputs(shape))
    step()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    for _ in range(steps):
        step()
    peak = _rss_kib("VmHWM")
    return {"peak_mib": peak / 1024, "rise_mib": (peak - before) / 1024}


def measure_memory(shape: str, steps: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median over ``repeats`` alternating subprocess runs of :func:`memory_child`."""
    results: dict[str, list[dict[str, float]]] = {"graphpeft": [], "peft": []}
    for _ in range(repeats):
        for library, runs in results.items():
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.run", "--memory-child", shape, library, str(steps)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {lib: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for lib, runs in results.items()}


PARTS = ("train", "memory", "inference", "size", "apply")


def table(
    shapes: list[str], apply_shapes: list[str], repeats: int, quick: bool, parts: tuple[str, ...] = PARTS
) -> list[str]:
    rows = ["| measure | model | graphpeft | PEFT (or base) | ratio | goal |", "|---|---|---:|---:|---:|---|"]

    def row(measure, shape, ours, theirs, unit, goal):
        rows.append(f"| {measure} | {shape} | {ours:.4g} {unit} | {theirs:.4g} {unit} | {ours / theirs:.3f} | {goal} |")
        print(rows[-1], flush=True)

    for shape in shapes:
        if "train" in parts:
            t = measure_train(shape, repeats)
            row("LoRA train step (fwd+bwd+AdamW)", shape, t["graphpeft"] * 1e3, t["peft"] * 1e3, "ms", "<= 0.80")
        if "memory" in parts:
            m = measure_memory(shape, steps=1 if quick else 2, repeats=1 if quick else 3)
            row("training peak RSS rise", shape, m["graphpeft"]["rise_mib"], m["peft"]["rise_mib"], "MiB", "<= 0.90")
            row("training peak RSS (VmHWM)", shape, m["graphpeft"]["peak_mib"], m["peft"]["peak_mib"], "MiB", "")
        if "inference" in parts:
            i = measure_inference(shape, repeats if quick else max(repeats, 15))  # ratios near 1: more repeats
            for lib, name in (("graphpeft", "graphpeft"), ("peft", "PEFT")):
                row(
                    f"inference unmerged over base ({name})",
                    shape,
                    i[f"{lib} unmerged"] * 1e3,
                    i["base"] * 1e3,
                    "ms",
                    "<= 1.03" if lib == "graphpeft" else "",
                )
                row(
                    f"inference merged over base ({name})",
                    shape,
                    i[f"{lib} merged"] * 1e3,
                    i["base"] * 1e3,
                    "ms",
                    "<= 1.01" if lib == "graphpeft" else "",
                )
        if "size" in parts:
            b = adapter_bytes(shape)
            row("adapter_model.safetensors", shape, b["graphpeft"], b["peft"], "B", "")
            row("saved adapter folder", shape, b["graphpeft folder"], b["peft folder"], "B", "")
    for shape in apply_shapes if "apply" in parts else []:
        a = measure_apply(shape, repeats=1 if quick or "(meta)" in shape else 3)
        goal = {"llama-7b (meta)": "graphpeft <= 5 s", "llama-80-layer (meta)": "graphpeft <= 10 s"}.get(shape, "")
        row("apply (graphpeft.apply vs get_peft_model)", shape, a["graphpeft"], a["peft"], "s", goal)
    return rows


def environment(threads: int) -> list[str]:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        (
            f"Machine: {platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores shared with other "
            f"jobs (load average at the end of the run: {load}); CPU only; torch threads {threads}."
        ),
        (
            f"Versions: torch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {__import__('peft').__version__}, "
            f"graphpeft {graphpeft.__version__}, Python {platform.python_version()}."
        ),
    ]


def write_section(rows: list[str], notes: list[str], path: Path = Path("BENCHMARKS.md")) -> None:
    """Put ``rows`` (header included) in place of the Performance section's table, keeping its prose
    (the explanations of each figure are written by hand); without a section, append a new one."""
    old = path.read_text()
    start = old.find(SECTION)
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + "\n".join([SECTION, "", *notes, "", *rows, ""]) + "\n")
        return
    lines = old[start:].split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("| measure |"))
    last = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    path.write_text(old[:start] + "\n".join(lines[:first] + rows + lines[last:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest when shared)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="models (default: all; --quick: tiny)")
    parser.add_argument(
        "--write", action="store_true", help="replace the table of the Performance section of BENCHMARKS.md"
    )
    parser.add_argument("--memory-child", nargs=3, metavar=("SHAPE", "LIBRARY", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.memory_child:
        shape, library, steps = args.memory_child
        print(json.dumps(memory_child(shape, library, int(steps))))
        return
    repeats = args.repeats or (3 if args.quick else 5)
    chosen = args.shapes or (["tiny"] if args.quick else list(SHAPES))
    shapes = [s for s in chosen if "(meta)" not in s]
    rows = table(shapes, chosen, repeats, args.quick, tuple(args.parts))
    notes = environment(args.threads)
    print("\n".join(notes))
    if args.write:
        write_section(rows, [*notes, f"Repeats: {repeats} (median)."])


if __name__ == "__main__":
    main()
