"""Keeping a folder's other entries across an atomic swap (see :mod:`graphpeft.io.atomic_dir`).

``owned`` are the file names a save writes (the adapter's files). Before the swap,
:func:`carry_foreign` puts every other entry of the previous folder into the staging folder: a
file as a hard link to the same inode (a copy where the filesystem refuses the link), a symbolic
link as the same link (never followed), a folder recreated with its mode and times. After the swap,
:func:`retire` empties the previous folder: it deletes the adapter's old files and every entry the
new folder holds too, and moves into the new folder anything that appeared during the save.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Collection
from pathlib import Path

from ..errors import SaveError
from .adapter_paths import kind_of


def adapter_only(folder: Path, owned: Collection[str]) -> bool:
    """Whether ``folder`` is a real folder holding adapter files and nothing else (an adapter sub-folder)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(os.scandir(folder))
    return bool(entries) and all(e.name in owned and not e.is_dir(follow_symlinks=False) for e in entries)


def carry_foreign(old: Path, new: Path, owned: Collection[str], top: bool = True) -> None:
    """Put into ``new`` (a staging folder already holding the new adapter files) every entry of ``old``
    that is not the adapter's. Adapter sub-folders of ``old`` holding nothing else are left out (at the
    top only); a sub-folder that ``new`` writes too gets ``old``'s other entries of that sub-folder.
    Raises SaveError naming an entry that is in the way or cannot be kept."""
    device = os.lstat(old).st_dev
    for entry in sorted(os.scandir(old), key=lambda e: e.name):
        path, twin = Path(entry.path), new / entry.name
        mode = entry.stat(follow_symlinks=False).st_mode
        if entry.name in owned:
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise SaveError(
                    f"{path} is {kind_of(mode)}, not a file a save writes; move it out of the way, then save again"
                )
            continue
        if top and adapter_only(path, owned):
            continue
        if os.path.lexists(twin):
            if stat.S_ISDIR(mode) and twin.is_dir() and not twin.is_symlink():
                carry_foreign(path, twin, owned, top=False)
                continue
            raise SaveError(
                f"{path} is in the way of the adapter sub-folder {entry.name}/ ({kind_of(mode)}); move it away or "
                "save the adapter under another name"
            )
        _carry(path, twin, device)


def _carry(source: Path, twin: Path, device: int) -> None:
    info = os.lstat(source)
    if info.st_dev != device:
        raise SaveError(
            f"{source} is on another filesystem (a mount point); a save cannot keep it, move it out of the folder"
        )
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), twin)
    elif stat.S_ISREG(info.st_mode):
        try:
            os.link(source, twin, follow_symlinks=False)
        except OSError:  # the filesystem has no hard links, or refuses this one: a byte-identical copy
            shutil.copy2(source, twin, follow_symlinks=False)
    elif stat.S_ISDIR(info.st_mode):
        os.mkdir(twin)
        for entry in os.scandir(source):
            _carry(Path(entry.path), twin / entry.name, device)
        shutil.copystat(source, twin, follow_symlinks=False)
    else:
        raise SaveError(
            f"{source} is {kind_of(info.st_mode)}; "
            "a save replaces the folder and cannot keep it, move it out of the folder"
        )


def retire(old: Path, new: Path, owned: Collection[str]) -> None:
    """Empty and remove ``old`` (the previous folder, swapped out for ``new``) without losing anything.

    Deleted: the adapter's files and adapter-only sub-folders, and entries that ``new`` holds as the
    same file (hard link) or the same link. Moved into ``new``: entries it lacks (written into the
    folder while the save ran). Where both hold a different file of one name, the newer one stays.
    An entry that fits none of these, or that cannot be removed, stays in ``old``: then OSError says why.
    """
    failure = None
    for entry in list(os.scandir(old)):
        try:
            _retire_entry(Path(entry.path), new / entry.name, owned)
        except FileNotFoundError:  # another process retired it first
            pass
        except OSError as exc:
            failure = failure or exc
    try:
        os.rmdir(old)
    except OSError as exc:
        raise failure or exc from None


def _retire_entry(path: Path, twin: Path, owned: Collection[str]) -> None:
    if path.is_dir() and not path.is_symlink():
        if twin.is_dir() and not twin.is_symlink():
            retire(path, twin, owned)
        elif adapter_only(path, owned):
            shutil.rmtree(path)
        elif not os.path.lexists(twin):
            os.rename(path, twin)
    elif path.name in owned or _same_entry(path, twin):
        os.unlink(path)
    elif not os.path.lexists(twin):
        os.rename(path, twin)
    elif os.lstat(path).st_mtime_ns > os.lstat(twin).st_mtime_ns:
        os.replace(path, twin)
    else:
        os.unlink(path)


def _same_entry(path: Path, twin: Path) -> bool:
    """Whether ``twin`` is the same file as ``path`` (a hard link) or a link with the same target."""
    if not os.path.lexists(twin):
        return False
    mine, theirs = os.lstat(path), os.lstat(twin)
    if stat.S_ISLNK(mine.st_mode) and stat.S_ISLNK(theirs.st_mode):
        return os.readlink(path) == os.readlink(twin)
    return os.path.samestat(mine, theirs)
