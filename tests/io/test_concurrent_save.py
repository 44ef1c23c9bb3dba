"""Saves that race or fail midway end in success or a SaveError, and the folder holds one whole adapter.

Two processes saving to one folder in a loop, on a simulated slow filesystem that widens every race
window, both get only successes (saves into one parent folder take turns on an flock of that folder).
A full disk, whether safetensors reports it (``SafetensorError``) or Python does (``OSError``), is a
SaveError naming the cause, and the previous adapter stays as it was.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import graphpeft.io.adapter_folder as checkpoint
import graphpeft.io.atomic_dir as atomic_dir
import mlp
from folder_state import ADAPTER_FILES, files, leftovers, tree
from graphpeft.errors import SaveError

ROUNDS = 60


def slow_filesystem() -> None:
    """Make each ``Path.is_dir`` and ``os.rename`` take a millisecond or two, as on a network filesystem:
    a save that checks the folder and then lists it leaves another save time to swap it away in between."""
    real_is_dir, real_rename = Path.is_dir, os.rename

    def is_dir_slowly(self):
        answer = real_is_dir(self)
        time.sleep(0.001)
        return answer

    def rename_slowly(src, dst):
        real_rename(src, dst)
        time.sleep(0.002)

    Path.is_dir, os.rename = is_dir_slowly, rename_slowly


def save_in_a_loop(target: str, seed: int, start, results) -> None:
    """Child process: save the MLP adapter of ``seed`` to ``target`` ROUNDS times, report each outcome."""
    from graphpeft.errors import SaveError

    model = mlp.adapted(seed=seed)
    slow_filesystem()
    start.wait()
    outcomes = []
    for _ in range(ROUNDS):
        try:
            model.save_pretrained(target, overwrite=True)
            outcomes.append("ok")
        except SaveError as exc:
            outcomes.append(f"SaveError: {exc}")
        except Exception as exc:  # noqa: BLE001 - the test reports any other error class as a failure
            outcomes.append(f"{type(exc).__name__}: {exc}")
    results.put((seed, outcomes))


def weights_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.adapter_parameters().items()}


def test_two_processes_saving_to_one_folder_get_success_or_save_error_and_leave_one_adapter(tmp_path):
    target = tmp_path / "adapter"
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=save_in_a_loop, args=(str(target), seed, start, results)) for seed in (31, 32)]
    for child in children:
        child.start()
    outcomes = dict(results.get(timeout=300) for _ in children)
    for child in children:
        child.join(timeout=60)
    unexpected = [o for seed in outcomes for o in outcomes[seed] if o != "ok" and not o.startswith("SaveError")]
    assert unexpected == []
    assert all(o == "ok" for seed in outcomes for o in outcomes[seed]), "saves take turns, so each one succeeds"
    assert files(target) == ADAPTER_FILES
    assert leftovers(target) == []
    loaded = weights_of(mlp.load(str(target)))
    assert any(all(torch.equal(loaded[k], v) for k, v in weights_of(mlp.adapted(seed)).items()) for seed in (31, 32))


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_a_load_leaves_leftovers_alone_while_a_save_holds_the_lock_and_removes_them_after(tmp_path):
    folder = tmp_path / "adapter"
    mlp.adapted(seed=41).save_pretrained(str(folder))
    stale = tmp_path / f".adapter.tmp-{dead_pid()}-abc123"
    stale.mkdir()
    with atomic_dir.parent_lock(tmp_path, wait=True) as held:
        assert held
        mlp.load(str(folder))
        assert leftovers(folder) == [stale.name]
    mlp.load(str(folder))
    assert leftovers(folder) == []


@pytest.fixture
def previous(tmp_path):
    """An adapter saved in ``tmp_path/adapter``, its file tree, and a second model to save over it."""
    folder = tmp_path / "adapter"
    mlp.adapted(seed=41).save_pretrained(str(folder))
    return folder, tree(folder), mlp.adapted(seed=42)


def disk_full(error: Exception):
    def save_file(*args, **kwargs):
        raise error

    return save_file


@pytest.mark.parametrize(
    "error",
    [
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    ],
    ids=["safetensors", "oserror"],
)
def test_disk_full_while_writing_is_a_save_error_and_keeps_the_previous_adapter(previous, monkeypatch, error):
    folder, before, model = previous
    monkeypatch.setattr(checkpoint, "save_file", disk_full(error))
    with pytest.raises(SaveError, match=r"No space left on device.*previous contents are unchanged"):
        model.save_pretrained(str(folder), overwrite=True)
    assert tree(folder) == before
    assert leftovers(folder) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs mounted at ``tmp_path/small`` (skips where mounting is not allowed), unmounted after."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the monkeypatched cases cover it")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its filesystem is full."""
    handle = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(handle, b"\0" * 4096):
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(handle)


def test_disk_full_on_a_real_filesystem_is_a_save_error_and_keeps_the_previous_adapter(tiny_tmpfs):
    folder = tiny_tmpfs / "adapter"
    mlp.adapted(seed=41).save_pretrained(str(folder))
    before = tree(folder)
    fill(tiny_tmpfs)
    with pytest.raises(SaveError, match="No space left on device"):
        mlp.adapted(seed=42).save_pretrained(str(folder), overwrite=True)
    assert tree(folder) == before
    assert leftovers(folder) == []


def test_a_failed_second_rename_puts_the_previous_folder_back(previous, monkeypatch):
    folder, before, model = previous
    real_rename = os.rename

    def fail_into_place(src, dst):
        if ".tmp-" in str(src):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        real_rename(src, dst)

    monkeypatch.setattr(atomic_dir.os, "rename", fail_into_place)
    with pytest.raises(SaveError, match="previous contents are unchanged"):
        model.save_pretrained(str(folder), overwrite=True)
    assert tree(folder) == before
    assert leftovers(folder) == []
