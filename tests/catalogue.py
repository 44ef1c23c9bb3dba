"""The machinery of the error catalogue (``tests/test_error_catalogue.py`` and ``tests/test_hostile_*.py``).

A :class:`Case` is one bad input: what it does to a :class:`World`, the error class it must raise and a
fragment its message must hold. :func:`check_case` runs it and asserts that the error is graphpeft's, short,
and that every model of the world is left exactly as it was (parameters bit-identical, requires_grad flags
unchanged, no adapter left behind). A case that could hang (a catastrophic regex, a huge file) runs under a
watchdog that ends the test process instead of letting the suite hang.
"""

from __future__ import annotations

import faulthandler
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaForCausalLM

import graphpeft
from graphpeft import Pattern, Rule
from models import tiny_gpt2, tiny_llama
from toml_text import qv_lora_file

RULES = qv_lora_file(4)


@dataclass
class World:
    """What a case acts on: ``base`` (a plain model), ``wrapped`` (a model with adapter
    ``default``), ``saved`` (that adapter's folder), ``other_arch`` (a GPT-2 adapter folder),
    ``tmp`` (a scratch folder) and ``custom`` (the case's own model, if it makes one)."""

    base: nn.Module
    wrapped: graphpeft.GraphPeftModel
    saved: Path
    other_arch: Path
    tmp: Path
    custom: nn.Module | None = None

    def rules(self, text: str) -> str:
        path = self.tmp / "rules.toml"
        path.write_text(text)
        return str(path)

    def edit(self, replace: str, by: str) -> str:
        """A rule file: the valid one above with ``replace`` swapped for ``by``."""
        assert replace in RULES
        return self.rules(RULES.replace(replace, by))

    def copy(self, source: Path | None = None) -> Path:
        """A scratch copy of an adapter folder (``saved`` by default)."""
        target = self.tmp / "adapter"
        shutil.copytree(source or self.saved, target)
        return target

    def manifest(self, change: Callable[[dict[str, Any]], None]) -> Path:
        folder = self.copy()
        data = json.loads((folder / "graphpeft.json").read_text())
        change(data)
        (folder / "graphpeft.json").write_text(json.dumps(data))
        return folder

    def tensors(self, change: Callable[[dict[str, torch.Tensor]], None], drop_manifest: bool = False) -> Path:
        folder = self.copy()
        tensors = load_file(folder / "adapter_model.safetensors")
        change(tensors)
        save_file(tensors, folder / "adapter_model.safetensors")
        if drop_manifest:
            (folder / "graphpeft.json").unlink()
        return folder

    def file(self, name: str, change: Callable[[bytes], bytes]) -> Path:
        folder = self.copy()
        (folder / name).write_bytes(change((folder / name).read_bytes()))
        return folder


@dataclass(frozen=True)
class Case:
    name: str
    act: Callable[[World], Any]
    error: type[Exception]
    fragment: str
    make: Callable[[], nn.Module] | None = None
    timeout: float = 120.0


class DataDependent(nn.Module):
    """Branches on a tensor's value: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.proj(x)
        return -self.proj(x)


def wider_llama() -> nn.Module:
    """The tiny llama with hidden size 48 instead of 32: same FQNs, other shapes."""
    config = tiny_llama(layers=1).config
    config.hidden_size = 48
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def apply(text_or_rules: Any, **kwargs: Any) -> Callable[[World], Any]:
    return lambda w: graphpeft.apply(w.base, text_or_rules(w) if callable(text_or_rules) else text_or_rules, **kwargs)


def edited(replace: str, by: str, **kwargs: Any) -> Callable[[World], Any]:
    return lambda w: graphpeft.apply(w.base, w.edit(replace, by), **kwargs)


def load(folder: Callable[[World], Path], **kwargs: Any) -> Callable[[World], Any]:
    return lambda w: graphpeft.load(w.custom or w.base, str(folder(w)), **kwargs)


def q_rule(name: str = "lora", **options: Any) -> Rule:
    return Rule(name, "lora", Pattern(op="linear", module="*.q_proj"), options)


def unlink(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def without_manifest(folder: Path) -> Path:
    return unlink(folder, "graphpeft.json")


def peft_config(folder: Path, **changes: Any) -> Path:
    data = json.loads((folder / "adapter_config.json").read_text())
    data.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(data))
    return folder


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def touch(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a failed call must leave untouched: tensors (bit for bit), grad flags, modules."""
    state = {
        name: (tensor.detach().clone(), getattr(tensor, "requires_grad", False))
        for name, tensor in model.state_dict(keep_vars=True).items()
    }
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    extra = {}
    if isinstance(model, graphpeft.GraphPeftModel):
        extra = {"adapters": list(model.adapter_specs), "active": list(model.active_adapters), "merged": model.merged}
    return {"state": state, "grads": grads, "modules": [n for n, _ in model.named_modules()], **extra}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["modules"] == before["modules"], "modules were added or removed"
    assert after["grads"] == before["grads"], "requires_grad flags changed"
    assert after.keys() == before.keys()
    assert list(after["state"]) == list(before["state"])
    for name, (tensor, _) in before["state"].items():
        assert torch.equal(after["state"][name][0], tensor), f"{name} changed"
    for key in ("adapters", "active", "merged"):
        assert after.get(key) == before.get(key)


def make_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, graphpeft.GraphPeftModel, Path, Path]:
    """The shared part of a world: a plain tiny llama, a wrapped one with adapter ``default``, that adapter's
    folder and a GPT-2 adapter folder (build once per module, in a module-scoped fixture)."""
    base = tiny_llama(layers=1, seed=0)
    wrapped = graphpeft.apply(tiny_llama(layers=1, seed=1), "lora", r=4, init="random")
    saved = tmp_path_factory.mktemp("saved") / "adapter"
    graphpeft.apply(tiny_llama(layers=1, seed=0), "lora", r=4, init="random").save_pretrained(str(saved))
    other_arch = tmp_path_factory.mktemp("gpt2") / "adapter"
    graphpeft.apply(tiny_gpt2(), "lora", r=4).save_pretrained(str(other_arch))
    return base, wrapped, saved, other_arch


def check_case(case: Case, shared: tuple[Any, ...], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Run ``case`` and assert the catalogue's contract (see the module docstring)."""
    base, wrapped, saved, other_arch = shared
    world = World(base, wrapped, saved, other_arch, tmp_path, case.make() if case.make else None)
    models = [m for m in (world.base, world.wrapped, world.custom) if m is not None]
    before = [snapshot(m) for m in models]
    capfd.readouterr()
    faulthandler.dump_traceback_later(case.timeout, exit=True)
    try:
        with pytest.raises(case.error) as caught:
            case.act(world)
    finally:
        faulthandler.cancel_dump_traceback_later()
    message = str(caught.value)
    assert case.fragment in message
    assert len(message) < 1500, "messages stay short"
    assert len(message.splitlines()) <= 8, "messages stay short"
    assert len(capfd.readouterr().err.splitlines()) <= 3, "no trace dumped to stderr"
    for model, snap in zip(models, before, strict=True):
        assert_unchanged(snap, snapshot(model))


def case_test(cases: list[Case]) -> Callable[..., None]:
    """The catalogue's test over ``cases``: assign it to a ``test_*`` name in a test module. The world is
    built once per session (fixture ``catalogue_world`` in conftest.py); every case leaves it unchanged."""

    @pytest.mark.parametrize("case", cases, ids=[c.name for c in cases])
    def test(case: Case, catalogue_world: tuple[Any, ...], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        check_case(case, catalogue_world, tmp_path, capfd)

    return test
