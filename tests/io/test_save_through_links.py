"""Saving into a folder reached through a symbolic link writes into the link's target; the link stays.

The staging folder is made next to the real folder, so the swap's renames never cross folders (or
filesystems), and nothing is left behind next to the link. A previous folder that cannot be removed
after a swap is reported and removed by the next save or load.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch

import graphpeft.io.atomic_dir as atomic_dir
import mlp
from folder_state import ADAPTER_FILES, files, leftovers


@pytest.fixture(scope="module")
def models():
    return mlp.adapted(seed=21), mlp.adapted(seed=22)


def assert_holds(folder: Path, model) -> None:
    loaded = mlp.load(str(folder)).adapter_parameters()
    for name, param in model.adapter_parameters().items():
        assert torch.equal(loaded[name], param), name


def linked_adapter(model, real: Path, link: Path) -> Path:
    model.save_pretrained(str(real))
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(real, link)
    return link


def assert_saved_through(link: Path, real: Path, model) -> None:
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert files(real) == ADAPTER_FILES
    assert_holds(link, model)
    assert leftovers(link) == []
    assert leftovers(real) == []


def test_save_through_a_symlink_writes_the_target_and_keeps_the_link(models, tmp_path):
    old, new = models
    link = linked_adapter(old, tmp_path / "real" / "adapter", tmp_path / "links" / "adapter")
    new.save_pretrained(str(link), overwrite=True)
    assert_saved_through(link, tmp_path / "real" / "adapter", new)


@pytest.fixture
def other_filesystem(tmp_path):
    """A scratch folder on another filesystem than ``tmp_path`` (/dev/shm), removed afterwards."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem here; test_save_through_a_symlink_never_renames_across_folders covers it")
    folder = shm / f"graphpeft-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_save_through_a_symlink_to_another_filesystem_keeps_the_link(models, tmp_path, other_filesystem):
    old, new = models
    real = other_filesystem / "adapter"
    link = linked_adapter(old, real, tmp_path / "adapter")
    new.save_pretrained(str(link), overwrite=True)
    assert_saved_through(link, real, new)


def test_save_through_a_symlink_never_renames_across_folders(models, tmp_path, monkeypatch):
    old, new = models
    real = tmp_path / "real" / "adapter"
    link = linked_adapter(old, real, tmp_path / "links" / "adapter")
    real_rename = os.rename

    def same_folder_rename(src, dst):  # what a rename between two filesystems does
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        real_rename(src, dst)

    monkeypatch.setattr(atomic_dir.os, "rename", same_folder_rename)
    new.save_pretrained(str(link), overwrite=True)
    assert_saved_through(link, real, new)


def cannot_remove(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


def test_a_previous_folder_that_cannot_be_removed_is_reported_and_removed_by_the_next_save(
    models, tmp_path, monkeypatch
):
    old, new = models
    folder = tmp_path / "adapter"
    old.save_pretrained(str(folder))
    with monkeypatch.context() as patch:
        patch.setattr(atomic_dir, "retire", cannot_remove)
        with pytest.warns(UserWarning, match="the next save or load removes it"):
            new.save_pretrained(str(folder), overwrite=True)
    assert any(".old-" in name for name in leftovers(folder))
    assert_holds(folder, new)
    old.save_pretrained(str(folder), overwrite=True)
    assert leftovers(folder) == []
    assert_holds(folder, old)


def test_a_previous_folder_left_behind_is_removed_by_the_next_load(models, tmp_path, monkeypatch):
    old, new = models
    folder = tmp_path / "adapter"
    old.save_pretrained(str(folder))
    with monkeypatch.context() as patch:
        patch.setattr(atomic_dir, "retire", cannot_remove)
        with pytest.warns(UserWarning, match="the next save or load removes it"):
            new.save_pretrained(str(folder), overwrite=True)
    assert_holds(folder, new)
    assert leftovers(folder) == []
