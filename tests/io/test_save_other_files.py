"""A save replaces only the adapter's own files: everything else in the folder survives byte for byte.

``save_pretrained(d, overwrite=True)`` replaces ``adapter_model.safetensors``, ``adapter_config.json``
and ``graphpeft.json`` (at the top and in the sub-folders of the adapters it writes) and removes
sub-folders that hold nothing but those files (adapters no longer saved). A trainer's
``checkpoint-10/optimizer.pt``, a ``runs/`` folder, a link: all stay as they were.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import graphpeft.io.atomic_dir as atomic_dir
import mlp
from folder_state import ADAPTER_FILES, files, leftovers, tree


@pytest.fixture(scope="module")
def models():
    """Two MLP adapters with different weights: ``old`` is saved first, ``new`` over it."""
    return mlp.adapted(seed=11), mlp.adapted(seed=12)


def assert_holds(folder: Path, model) -> None:
    """``folder`` holds ``model``'s adapter (compared through a load)."""
    loaded = mlp.load(str(folder)).adapter_parameters()
    for name, param in model.adapter_parameters().items():
        assert torch.equal(loaded[name], param), name


def trainer_checkpoint(folder: Path, model) -> Path:
    """A transformers Trainer checkpoint: the adapter plus the trainer's own files."""
    model.save_pretrained(str(folder))
    (folder / "optimizer.pt").write_bytes(b"optimizer state" * 100)
    (folder / "trainer_state.json").write_text('{"global_step": 10}')
    return folder


def test_save_over_a_run_folder_keeps_its_checkpoint_sub_folder_byte_identical(models, tmp_path):
    old, new = models
    run = tmp_path / "run"
    old.save_pretrained(str(run))
    checkpoint = trainer_checkpoint(run / "checkpoint-10", old)
    before = tree(checkpoint)
    new.save_pretrained(str(run), overwrite=True)
    assert tree(checkpoint) == before
    assert_holds(run, new)


def test_save_keeps_top_level_files_that_are_not_the_adapters_as_the_same_files(models, tmp_path):
    old, new = models
    folder = trainer_checkpoint(tmp_path / "checkpoint-10", old)
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_bytes(b"\x00\x01events")
    inode = os.stat(folder / "optimizer.pt").st_ino
    foreign_before = {k: v for k, v in tree(folder).items() if k not in ADAPTER_FILES}
    new.save_pretrained(str(folder), overwrite=True)
    assert {k: v for k, v in tree(folder).items() if k not in ADAPTER_FILES} == foreign_before
    assert os.stat(folder / "optimizer.pt").st_ino == inode, "kept as a hard link to the same file, not a copy"
    assert_holds(folder, new)
    assert leftovers(folder) == []


def test_save_replaces_adapter_files_in_a_sub_folder_it_writes_and_keeps_the_rest(models, tmp_path):
    old, _ = models
    folder = tmp_path / "adapter"
    old.add_adapter("chat", mlp.LORA)
    try:
        old.save_pretrained(str(folder))
        (folder / "chat" / "notes.txt").write_text("chat adapter, run 3")
        old.save_pretrained(str(folder), overwrite=True)
    finally:
        old.delete_adapter("chat")
    assert files(folder / "chat") == sorted([*ADAPTER_FILES, "notes.txt"])
    assert (folder / "chat" / "notes.txt").read_text() == "chat adapter, run 3"


def test_save_removes_a_sub_folder_that_holds_only_an_adapter_it_no_longer_writes(models, tmp_path):
    old, new = models
    folder = tmp_path / "adapter"
    old.add_adapter("chat", mlp.LORA)
    try:
        old.save_pretrained(str(folder))
    finally:
        old.delete_adapter("chat")
    new.save_pretrained(str(folder), overwrite=True)
    assert files(folder) == ADAPTER_FILES


def test_save_keeps_a_link_in_the_folder_as_the_same_link_and_does_not_write_through_it(models, tmp_path):
    old, new = models
    elsewhere = tmp_path / "elsewhere"
    old.save_pretrained(str(elsewhere))
    before = tree(elsewhere)
    folder = tmp_path / "adapter"
    old.save_pretrained(str(folder))
    os.symlink(elsewhere, folder / "shared")
    new.save_pretrained(str(folder), overwrite=True)
    assert os.readlink(folder / "shared") == str(elsewhere)
    assert tree(elsewhere) == before


def test_save_keeps_the_folder_mode(models, tmp_path):
    old, new = models
    folder = tmp_path / "adapter"
    old.save_pretrained(str(folder))
    folder.chmod(0o751)
    new.save_pretrained(str(folder), overwrite=True)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o751


def test_a_new_folder_gets_the_mode_the_umask_allows(models, tmp_path):
    previous = os.umask(0o022)
    try:
        models[0].save_pretrained(str(tmp_path / "adapter"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755


def test_a_file_another_process_writes_into_the_folder_during_the_save_survives(models, tmp_path, monkeypatch):
    old, new = models
    folder = trainer_checkpoint(tmp_path / "checkpoint-10", old)
    real_rename = os.rename

    def write_late_file_then_rename(src, dst):
        if Path(src) == folder:  # the swap starts: another writer's file lands in the previous folder
            (folder / "rng_state_1.pth").write_bytes(b"rank 1")
        real_rename(src, dst)

    monkeypatch.setattr(atomic_dir.os, "rename", write_late_file_then_rename)
    new.save_pretrained(str(folder), overwrite=True)
    assert (folder / "rng_state_1.pth").read_bytes() == b"rank 1"
    assert (folder / "optimizer.pt").exists()
    assert leftovers(folder) == []


def test_a_folder_another_process_creates_during_the_save_keeps_its_files(models, tmp_path, monkeypatch):
    _, new = models
    folder = tmp_path / "checkpoint-10"
    real_rename = os.rename
    created = []

    def create_folder_then_rename(src, dst):
        if ".tmp-" in str(src) and not created:  # another rank made the folder and wrote into it
            created.append(folder)
            folder.mkdir()
            (folder / "rng_state_1.pth").write_bytes(b"rank 1")
        real_rename(src, dst)

    monkeypatch.setattr(atomic_dir.os, "rename", create_folder_then_rename)
    new.save_pretrained(str(folder))
    assert (folder / "rng_state_1.pth").read_bytes() == b"rank 1"
    assert_holds(folder, new)
    assert leftovers(folder) == []
