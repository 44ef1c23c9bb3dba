"""DistributedDataParallel (gloo, 2 CPU processes) trains a GraphPeftModel to the same adapter
weights as one process on the same global batch, with only adapter parameters in DDP's buckets."""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

import graphpeft
from models import tiny_llama

WORLD, STEPS, GLOBAL_BATCH, LENGTH, LR = 2, 5, 4, 8, 0.1


def global_batch() -> torch.Tensor:
    return torch.randint(3, 96, (STEPS, GLOBAL_BATCH, LENGTH), generator=torch.Generator().manual_seed(0))


def adapted_model() -> graphpeft.GraphPeftModel:
    torch.manual_seed(0)
    return graphpeft.apply(tiny_llama(layers=1), "lora", r=4, init="random").train()


def train(model: torch.nn.Module, batches: torch.Tensor) -> None:
    """Plain SGD on the causal-LM loss; every row has the same length, so the mean over a shard
    averaged over shards is the mean over the global batch."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for ids in batches:
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def adapter_state(model: graphpeft.GraphPeftModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.adapter_parameters().items()}


def worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = adapted_model()
        ddp = DistributedDataParallel(model)
        reduced = {id(p) for p in ddp._build_params_for_reducer()[0]}
        adapters = {id(p) for p in model.adapter_parameters().values()}
        assert reduced == adapters, "DDP buckets hold parameters other than the adapter's"
        shard = GLOBAL_BATCH // WORLD
        train(ddp, global_batch()[:, rank * shard : (rank + 1) * shard])
        if rank == 0:
            save_file(adapter_state(model), out_file)
        # DDP's reducer must go while its process group is alive: destroyed after it, it can hang in C++.
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(tmp_path):
    out_file = str(tmp_path / "ddp.safetensors")
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), out_file), nprocs=WORLD, join=True)
    single = adapted_model()
    before = adapter_state(single)
    train(single, global_batch())
    ddp_weights = load_file(out_file)
    for name, value in adapter_state(single).items():
        assert not torch.equal(value, before[name]), f"{name} did not train"
        assert torch.allclose(ddp_weights[name], value, atol=1e-6, rtol=0), name
