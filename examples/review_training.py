"""Training-loop pieces shared by the review examples: length-bucketed batches and a
rich progress bar that shows the loss, tokens/s and the time left."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Item = TypeVar("Item")


def bucketed_batches(
    items: Sequence[Item], lengths: Sequence[int], batch_size: int, seed: int, pool: int = 16
) -> Iterator[list[Item]]:
    """Endless batches of ``items``: each epoch is shuffled, then cut into pools of
    ``pool`` batches sorted by length, so a batch holds sequences of similar length
    (less padding); the batch order within an epoch is shuffled again."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), batch_size * pool):
            chunk = sorted(order[start : start + batch_size * pool], key=lambda i: lengths[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            yield [items[i] for i in batch]


def chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class TrainReport:
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    def mean_loss(self, first: bool, window: int = 10) -> float:
        part = self.losses[:window] if first else self.losses[-window:]
        return sum(part) / max(len(part), 1)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def train(
    parameters: list[torch.nn.Parameter],
    batches: Iterator[Item],
    step_loss: Callable[[Item], tuple[torch.Tensor, int]],
    steps: int,
    lr: float,
    console: Console,
    warmup: int = 10,
) -> TrainReport:
    """AdamW with linear warm-up and cosine decay; ``step_loss(batch) -> (loss, tokens)``."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    warmup = min(warmup, max(steps // 10, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    report = TrainReport()
    started = time.perf_counter()
    with progress_bar(console) as progress:
        task = progress.add_task("train", total=steps, info="")
        for _ in range(steps):
            loss, tokens = step_loss(next(batches))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            report.losses.append(loss.item())
            report.tokens += tokens
            elapsed = time.perf_counter() - started
            info = f"loss {report.mean_loss(first=False):.3f}  {report.tokens / elapsed:,.0f} tok/s"
            progress.update(task, advance=1, info=info)
    report.seconds = time.perf_counter() - started
    return report
