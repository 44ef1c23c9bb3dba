"""Atomic directory writes: a folder is written next to its target and renamed into place.

Either the whole new folder is in place or the previous one is unchanged. A write killed midway
leaves ``.<name>.tmp-<pid>-*`` (removed later) or, between the two renames of the swap,
``.<name>.old-<pid>-*`` with no target (renamed back later); :func:`recover` repairs both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection
from pathlib import Path

from .errors import SaveError


def write_directory(target: Path, write: Callable[[Path], None], overwrite: bool, owned_files: Collection[str]) -> None:
    """Replace ``target`` by a folder that ``write(staging)`` fills, atomically.

    ``owned_files`` are the file names a previous save wrote (at the top or one sub-folder down); any
    other entry in ``target`` is someone else's and makes the write refuse instead of deleting it.
    """
    if target.exists() and not target.is_dir():
        raise SaveError(f"cannot save to {target}: it exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise SaveError(f"{target} already holds files; pass overwrite=True to replace it, or choose a new directory")
    foreign = foreign_entries(target, owned_files)
    if foreign:
        raise SaveError(
            f"{target} holds files that are not part of an adapter ({', '.join(foreign[:3])}); a save replaces the "
            "whole folder atomically and would delete them, so save into an empty folder or an adapter folder"
        )
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise SaveError(f"cannot write to {parent}: {exc.strerror or exc}; choose a writable directory") from None
    try:
        write(staging)
        _fsync_tree(staging)
        _swap_into_place(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise SaveError(f"saving to {target} failed: {exc.strerror or exc}; the previous contents are unchanged") from None
        raise


def foreign_entries(target: Path, owned_files: Collection[str]) -> list[str]:
    """Names in ``target`` that a save would delete but that no adapter wrote (sorted)."""
    if not target.is_dir():
        return []
    ours = set(owned_files)
    return sorted(
        entry.name for entry in target.iterdir()
        if entry.name not in ours and not (entry.is_dir() and any((entry / name).is_file() for name in ours))
    )


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path) -> None:
    """Repair what a save killed midway left next to ``target`` (best effort, never raises).

    A kill while writing leaves a ``.<name>.tmp-<pid>-*`` folder: it is removed. A kill between
    the two renames of the swap leaves the previous adapter in ``.<name>.old-<pid>-*`` and no
    ``target``: it is renamed back. Folders of a process that is still running are left alone.
    """
    parent = target.parent
    try:
        leftovers = [p for p in parent.glob(f".{target.name}.tmp-*")] + [p for p in parent.glob(f".{target.name}.old-*")]
        for folder in sorted(leftovers, key=lambda p: p.stat().st_mtime, reverse=True):
            if _writer_alive(folder.name):
                continue
            if ".old-" in folder.name and not target.exists():
                os.rename(folder, target)
            else:
                shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass


def _writer_alive(folder_name: str) -> bool:
    """Whether the process that made this temp folder (pid after ``tmp-``/``old-``) still runs."""
    pid_text = folder_name.rsplit(".", 1)[-1].split("-")[1:2]
    if not pid_text or not pid_text[0].isdigit():
        return False
    pid = int(pid_text[0])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
