"""Which paths an adapter folder may use: the save target, and the symbolic-link policy of loading.

Saving resolves the target first (``save_target``): a save through a link writes into the link's
target, and a path that cannot name a folder (empty, a NUL byte, a name over 255 bytes, a link loop,
a dangling link, the filesystem root, the working directory or a folder above it) is a SaveError.

Loading follows a link only if it stays inside the adapter folder (``check_adapter_files``,
``check_sub_folder``). The one exception is the Hugging Face hub cache, which stores each snapshot
file as a link into the repo's ``blobs/``: for a folder inside ``<repo>/snapshots/``, where ``<repo>``
is the nearest ancestor holding both ``blobs/`` and ``snapshots/``, links may point anywhere inside
``<repo>``. Every other link out of the folder is a LoadError, so a folder cannot make a load read
(or a later save write back) a file it does not hold. The adapter's files must also be regular files:
a FIFO would block the read, a device or folder would mislead it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import LoadError, SaveError

NAME_MAX = 255


def save_target(directory: object) -> Path:
    """The real folder a save into ``directory`` writes (links resolved), or a SaveError saying why not."""
    if not isinstance(directory, (str, os.PathLike)):
        raise SaveError(f"save_directory must be a path (str or os.PathLike), got {type(directory).__name__}")
    text = os.fsdecode(os.fspath(directory))
    if not text:
        raise SaveError("save_directory is empty; pass the folder to save into, e.g. 'out/adapter'")
    if "\0" in text:
        raise SaveError(f"save_directory {text!r} holds a NUL byte, which no filesystem allows in a name")
    path = Path(text)
    _check_name_lengths(path)
    _check_links_on_the_way(path)
    real = Path(os.path.realpath(path))
    if real == real.parent:
        raise SaveError(f"save_directory {text!r} is the filesystem root; save into a folder below it")
    _check_not_around_working_directory(real)
    return real


def _check_not_around_working_directory(real: Path) -> None:
    try:
        working = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the working directory was deleted: nothing to protect
        return
    if real == working or real in working.parents:
        raise SaveError(
            f"{real} is the current working directory or holds it; a save swaps the folder for a new one, "
            "so save into a folder that does not hold the working directory"
        )


def _check_name_lengths(path: Path) -> None:
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise SaveError(
                f"the name {part[:24]}... in save_directory is {size} bytes long; filesystems allow at most "
                f"{NAME_MAX} bytes a name, choose a shorter one"
            )


def _check_links_on_the_way(path: Path) -> None:
    """Refuse a link loop or a dangling link anywhere on ``path`` (a save never creates a link's target)."""
    for step in [*reversed(path.parents), path]:
        if not os.path.islink(step):
            continue
        try:
            os.stat(step)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SaveError(f"{step} is a symbolic link loop; point it at a folder or remove it") from None
            if exc.errno == errno.ENOENT:
                raise SaveError(
                    f"{step} is a symbolic link to {os.readlink(step)}, which does not exist; create that folder "
                    "or remove the link"
                ) from None


# ---------------------------------------------------------------------- load
def cache_repo_root(folder: Path) -> Path | None:
    """The Hugging Face cache repo (``models--org--name``) whose ``snapshots/`` holds ``folder`` (a real path)."""
    for ancestor in folder.parents:
        if (ancestor / "blobs").is_dir() and (ancestor / "snapshots").is_dir():
            return ancestor if folder.is_relative_to(ancestor / "snapshots") else None
    return None


def link_root(folder: Path) -> Path:
    """The folder links in ``folder`` must stay inside: its cache repo, else the folder itself (real paths)."""
    real = Path(os.path.realpath(folder))
    return cache_repo_root(real) or real


def check_folder(folder: Path) -> None:
    """Refuse a folder path that is a symbolic link loop (other faults are the loader's to report)."""
    try:
        os.stat(folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LoadError(f"{folder} is a symbolic link loop; pass the adapter folder itself") from None


def check_adapter_files(folder: Path, names: Iterable[str]) -> None:
    """Each of ``names`` that ``folder`` holds must be a regular file, reached by no link out of the folder."""
    check_folder(folder)
    if not folder.is_dir():
        return
    root = link_root(folder)
    for name in names:
        path = folder / name
        if os.path.lexists(path):
            _check_inside(path, root)
            _check_regular_file(path)


def check_sub_folder(sub: Path, root: Path) -> None:
    """A sub-folder adapter must not be a link out of the folder it was found in (``root``: its link_root)."""
    _check_inside(sub, root)


def _check_inside(path: Path, root: Path) -> None:
    if not os.path.islink(path):
        return
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise LoadError(
            f"{path} is a symbolic link to {real}, outside the adapter folder {root}; graphpeft follows links only "
            "inside the adapter folder (or its Hugging Face cache repo), so copy the file into the folder"
        )


def _check_regular_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LoadError(f"{path} is a symbolic link loop; replace it with the file") from None
        if exc.errno == errno.ENOENT:
            raise LoadError(
                f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; save the adapter again"
            ) from None
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise LoadError(
            f"{path} is {kind_of(mode)}, not a regular file; "
            "an adapter folder holds plain files, save the adapter again"
        )


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a file mode (for messages)."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ]
    return next((name for test, name in kinds if test(mode)), "a regular file")
