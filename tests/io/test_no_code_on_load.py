"""Loading an adapter reads safetensors and JSON only: nothing is unpickled, no code runs."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle

import pytest
import torch

import mlp
from graphpeft.errors import LoadError


class UnpicklingAttemptError(Exception):
    pass


@pytest.fixture
def no_unpickling(monkeypatch):
    """``torch.load`` and ``pickle.load`` raise while the test runs, and every file Python opens is
    recorded. (``pickle.loads`` stays: torch.export round-trips its own in-memory objects with it.)"""

    def refuse(*args, **kwargs):
        raise UnpicklingAttemptError("something tried to unpickle a file during load")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    opened: list[str] = []
    real_open = io.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(io, "open", recording_open)
    return opened


def adapter_files_opened(opened: list[str], folder) -> set[str]:
    return {os.path.basename(path) for path in opened if path.startswith(str(folder))}


class WritesMarker:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loading_a_graphpeft_adapter_never_unpickles(tmp_path, no_unpickling):
    mlp.adapted().save_pretrained(str(tmp_path / "adapter"))
    no_unpickling.clear()
    model = mlp.load(str(tmp_path / "adapter"))
    assert list(model.adapter_specs) == ["default"]
    assert adapter_files_opened(no_unpickling, tmp_path / "adapter") == {"graphpeft.json"}


def test_loading_a_peft_adapter_never_unpickles(tmp_path, no_unpickling):
    from peft import LoraConfig, get_peft_model

    get_peft_model(mlp.base(), LoraConfig(r=4, target_modules=["fc1", "fc2"])).save_pretrained(str(tmp_path / "peft"))
    no_unpickling.clear()
    model = mlp.load(str(tmp_path / "peft"))
    assert len(model.adapter_specs["default"].claims) == 2
    assert adapter_files_opened(no_unpickling, tmp_path / "peft") == {"adapter_config.json"}


def test_pickled_weights_are_refused_and_never_executed(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(WritesMarker(marker)))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["fc1", "fc2"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"adapter_model\.safetensors is missing"):
        mlp.load(str(folder))
    assert not marker.exists()
