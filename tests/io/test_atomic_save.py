"""A save killed at any moment (SIGKILL) never costs the adapter saved before it.

A child process saves over an existing adapter directory and pauses at a chosen point of the
write (a patched function touches a marker file, then sleeps); the parent waits for the marker
and kills the child with SIGKILL. The previous adapter must load and give the same outputs, and
the next load or save must leave no temporary folder behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mlp

CHILD_PRELUDE = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import mlp
target, marker = Path(sys.argv[1]), Path(sys.argv[2])
model = mlp.adapted(seed=123)

def pause_here():
    marker.write_text("paused")
    time.sleep(600)
"""

# Pause after half of the weights file is on disk: the kill lands in the middle of a write.
PAUSE_MID_WRITE = """
import graphpeft.io.adapter_folder as checkpoint
real_save_file = checkpoint.save_file

def half_written(tensors, filename, metadata=None):
    real_save_file(tensors, filename, metadata=metadata)
    data = Path(filename).read_bytes()
    Path(filename).write_bytes(data[: len(data) // 2])
    pause_here()

checkpoint.save_file = half_written
model.save_pretrained(str(target), overwrite=True)
"""

# Pause between the two renames of the swap: the old folder is moved aside, the new one not yet in place.
PAUSE_BETWEEN_RENAMES = """
real_rename = os.rename

def rename_then_pause(src, dst):
    real_rename(src, dst)
    if ".old-" in str(dst):
        pause_here()

os.rename = rename_then_pause
model.save_pretrained(str(target), overwrite=True)
"""

# Pause right after the new folder is in place, before the previous one (now ``.old-``) is emptied.
PAUSE_AFTER_SWAP = """
real_rename = os.rename

def rename_then_pause(src, dst):
    real_rename(src, dst)
    if ".tmp-" in str(src):
        pause_here()

os.rename = rename_then_pause
model.save_pretrained(str(target), overwrite=True)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An adapter with random weights saved once: (model, folder, outputs)."""
    model = mlp.adapted(seed=7).eval()
    folder = tmp_path_factory.mktemp("reference") / "adapter"
    model.save_pretrained(str(folder))
    with torch.no_grad():
        outputs = model(mlp.example())
    return model, folder, outputs


@pytest.fixture
def saved(reference, tmp_path):
    """A copy of the reference adapter in ``tmp_path/adapter`` and the outputs it gives."""
    _, folder, outputs = reference
    target = tmp_path / "adapter"
    shutil.copytree(folder, target)
    return target, outputs


def with_trainer_files(target: Path) -> dict[str, bytes]:
    """Put a trainer's files next to the adapter in ``target``; return them by name."""
    extra = {"optimizer.pt": b"optimizer state" * 50, "trainer_state.json": b'{"global_step": 10}'}
    for name, data in extra.items():
        (target / name).write_bytes(data)
    return extra


def assert_keeps(target: Path, extra: dict[str, bytes]) -> None:
    for name, data in extra.items():
        assert (target / name).read_bytes() == data, name


def kill_while_saving(target: Path, pause_code: str) -> None:
    """Run a child that saves over ``target``, wait until it pauses inside the save, SIGKILL it."""
    marker = target.parent / "child-paused"
    code = CHILD_PRELUDE.format(tests=str(Path(__file__).resolve().parents[1])) + textwrap.dedent(pause_code)
    child = subprocess.Popen([sys.executable, "-c", code, str(target), str(marker)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if child.poll() is not None:
                raise AssertionError(f"child exited before pausing: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("child never reached the pause point")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def outputs_of(target: Path) -> torch.Tensor:
    with torch.no_grad():
        return mlp.load(str(target))(mlp.example())


def test_kill_mid_write_keeps_previous_adapter_and_load_removes_the_temp_folder(saved):
    target, outputs = saved
    kill_while_saving(target, PAUSE_MID_WRITE)
    assert any(".tmp-" in name for name in leftovers(target)), "the kill did not land inside the write"
    assert torch.equal(outputs_of(target), outputs)
    assert leftovers(target) == []


def test_next_save_removes_a_temp_folder_left_by_a_killed_save(reference, saved):
    target, _ = saved
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = target.parent / f".{target.name}.tmp-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half a file")
    reference[0].save_pretrained(str(target), overwrite=True)
    assert leftovers(target) == []
    assert sorted(os.listdir(target)) == ["adapter_config.json", "adapter_model.safetensors", "graphpeft.json"]


def test_temp_folder_of_a_running_save_is_left_alone(reference, saved):
    target, _ = saved
    running = target.parent / f".{target.name}.tmp-{os.getppid()}-abc123"
    running.mkdir()
    reference[0].save_pretrained(str(target), overwrite=True)
    assert leftovers(target) == [running.name]


def test_kill_between_renames_restores_previous_adapter_on_load(reference, saved):
    target, _ = saved
    kill_while_saving(target, PAUSE_BETWEEN_RENAMES)
    assert not target.exists()
    assert any(".old-" in name for name in leftovers(target))
    loaded = mlp.load(str(target)).adapter_parameters()
    for name, param in reference[0].adapter_parameters().items():
        assert torch.equal(loaded[name], param), name
    assert leftovers(target) == []


@pytest.mark.parametrize(
    "pause",
    [PAUSE_MID_WRITE, PAUSE_BETWEEN_RENAMES, PAUSE_AFTER_SWAP],
    ids=["mid_write", "between_renames", "after_swap"],
)
def test_kill_at_any_point_keeps_the_folders_other_files_once_loaded(saved, pause):
    target, _ = saved
    extra = with_trainer_files(target)
    kill_while_saving(target, pause)
    assert leftovers(target), "the kill did not land inside the save"
    mlp.load(str(target))
    assert leftovers(target) == []
    assert_keeps(target, extra)
    assert sorted(os.listdir(target)) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "graphpeft.json", *extra]
    )


def test_kill_after_the_swap_leaves_the_new_adapter_in_place(reference, saved):
    target, outputs = saved
    kill_while_saving(target, PAUSE_AFTER_SWAP)
    assert any(".old-" in name for name in leftovers(target))
    assert not torch.equal(outputs_of(target), outputs), "the child saved another adapter over the reference"
    assert leftovers(target) == []
