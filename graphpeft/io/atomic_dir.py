"""Atomic directory writes: a folder is written next to its target and swapped into place.

What a save of ``target`` guarantees:

* **Whole adapters only.** The new files are written into a staging sibling
  ``.<name>.tmp-<pid>-*``, flushed to disk, and swapped in by two renames (``target`` ->
  ``.<name>.old-<pid>-*``, staging -> ``target``), so every file a reader opens belongs to one
  complete save. Between the two renames ``target`` is briefly absent (a load then fails with a
  LoadError rather than read a half-written file). A load that runs while another process saves the
  same folder may open one file of each save: saves take turns, loads do not wait for them.
* **Only the adapter's files are replaced.** ``owned_files`` (the adapter's file names) at the top,
  in the sub-folders the save writes, and sub-folders holding nothing else are replaced or removed;
  every other entry (``optimizer.pt``, ``checkpoint-10/``, a link) is carried into the staging folder
  before the swap (:mod:`graphpeft.io.dir_merge`: hard links to the same files, links as links), so it
  is byte-identical afterwards and present at every moment but the swap. What cannot be carried (a
  FIFO, a mount point, a folder where an adapter file belongs) makes the save refuse, naming it.
  A file another process writes into the folder during the save lands in the new folder (moved in
  when the previous one is retired); only an open exactly between the two renames fails (ENOENT).
* **A killed save loses nothing.** Before the swap the target is untouched; between the renames the
  previous folder waits in ``.old-``; after them ``.old-`` holds the replaced adapter files, second
  links to what the new folder kept, and what other writers added meanwhile. :func:`recover` (run by
  the next save or load) deletes a dead writer's ``.tmp-``, renames its ``.old-`` back if the target
  is missing, and otherwise finishes retiring it. A ``.old-`` that cannot be removed right away is
  reported with a warning and retried by every later save or load.
* **Saves take turns.** A save holds an flock on the parent folder (no lock file is left behind), so
  two processes saving into one folder get one complete adapter each in turn; any other failure,
  including a race with a writer that takes no lock, is a SaveError with the previous contents unchanged.
* **Links are followed, not replaced.** A target reached through a symbolic link is resolved first
  (:func:`graphpeft.io.adapter_paths.save_target`); the staging folder sits next to the real folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl

    CAN_LOCK = True
except ImportError:  # Windows: saves do not take turns there
    CAN_LOCK = False

from ..errors import GraphPeftError, SaveError
from .adapter_paths import save_target
from .dir_merge import carry_foreign, retire

LOCK_TIMEOUT_S = 600.0
LEFTOVER = re.compile(r"(tmp|old)-(\d+)-[0-9a-z_]+")


def write_directory(
    target: str | os.PathLike, write: Callable[[Path], None], overwrite: bool, owned_files: Collection[str]
) -> None:
    """Make ``target`` hold what ``write(staging)`` writes, atomically, keeping entries not in ``owned_files``."""
    real = save_target(target)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(f"cannot create {real.parent}: {reason(exc)}; choose a writable directory") from None
    with parent_lock(real.parent, wait=True) as held:
        staging = _prepare(real, target, overwrite, owned_files, held)
        old = _fill_and_swap(staging, real, target, write, owned_files)
        if old is not None:
            _retire_or_warn(old, real, owned_files)


def _prepare(real: Path, shown: str | os.PathLike, overwrite: bool, owned: Collection[str], held: bool | None) -> Path:
    """Check the target, repair a killed save of it, and make the staging folder."""
    try:
        if os.path.lexists(real) and not real.is_dir():
            raise SaveError(f"cannot save to {shown}: it exists and is not a directory")
        if real.is_dir() and any(real.iterdir()) and not overwrite:
            raise SaveError(
                f"{shown} already holds files; "
                "pass overwrite=True to replace the adapter in it, or choose a new directory"
            )
        _recover_held(real, owned, held)
        staging = sibling(real, "tmp")
        os.mkdir(staging, 0o777)  # the umask applies, as for any new folder
        return staging
    except SaveError:
        raise
    except OSError as exc:
        raise SaveError(f"cannot write to {real.parent}: {reason(exc)}; choose a writable directory") from None


def _fill_and_swap(
    staging: Path, real: Path, shown: str | os.PathLike, write: Callable[[Path], None], owned: Collection[str]
) -> Path | None:
    """Write the new files, carry the target's other entries, swap; return the previous folder (or None)."""
    try:
        write(staging)
        _fsync_files(staging)
        if real.is_dir():
            carry_foreign(real, staging, owned)
            shutil.copymode(real, staging)
        _fsync_folder(staging)
        old = _swap(staging, real, owned)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)  # only new files and extra links to the target's files
        if isinstance(exc, GraphPeftError) or not isinstance(exc, Exception):
            raise
        cause = reason(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        raise SaveError(f"saving to {shown} failed: {cause}; the previous contents are unchanged") from exc
    _fsync_folder(real.parent)
    return old


def _swap(staging: Path, real: Path, owned: Collection[str]) -> Path | None:
    if not os.path.lexists(real):
        try:
            os.rename(staging, real)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            carry_foreign(real, staging, owned)  # another process made the folder meanwhile: keep its files
    old = sibling(real, "old")
    os.rename(real, old)
    try:
        os.rename(staging, real)
    except BaseException:
        os.rename(old, real)
        raise
    return old


def _retire_or_warn(old: Path, real: Path, owned: Collection[str]) -> None:
    try:
        retire(old, real, owned)
    except OSError as exc:
        warnings.warn(
            f"saved to {real}, but the previous folder {old.name} could not be removed ({reason(exc)}); "
            "the next save or load removes it",
            stacklevel=5,
        )


def recover(target: str | os.PathLike, owned_files: Collection[str]) -> None:
    """Repair what a killed save of ``target`` left next to it (best effort, never raises).

    A dead writer's ``.tmp-`` folder is removed; its ``.old-`` folder is renamed back if ``target`` is
    missing, else retired into ``target`` (adapter files deleted, anything else kept). Nothing is done
    while another process holds the save lock, and folders of a running process are left alone.
    """
    try:
        real = Path(os.path.realpath(target))
        with parent_lock(real.parent, wait=False) as held:
            if held is not False:
                _recover_held(real, owned_files, held)
    except (OSError, ValueError):
        pass


def _recover_held(real: Path, owned: Collection[str], held: bool | None) -> None:
    """:func:`recover` once the lock is ours (``held`` True) or cannot be had on this filesystem (None)."""
    try:
        found = leftovers(real)
    except OSError:  # the parent cannot be listed: nothing to repair that this process could see
        return
    for kind, pid, path in found:
        if writer_alive(pid, mine_is_stale=held is True):
            continue
        try:
            if kind == "old" and not os.path.lexists(real):
                os.rename(path, real)
            elif path.is_symlink() or not path.is_dir():
                os.unlink(path)
            elif kind == "old":
                retire(path, real, owned)
            else:
                shutil.rmtree(path)
        except OSError:
            pass


def leftovers(real: Path) -> list[tuple[str, int, Path]]:
    """``(kind, pid, path)`` of the ``.tmp-``/``.old-`` siblings of ``real``, newest first."""
    prefix = f".{_short_name(real)}."
    found = []
    for entry in os.scandir(real.parent):
        matched = LEFTOVER.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        if matched:
            found.append((entry.stat(follow_symlinks=False).st_mtime, matched[1], int(matched[2]), Path(entry.path)))
    return [(kind, pid, path) for _, kind, pid, path in sorted(found, reverse=True)]


def sibling(real: Path, kind: str) -> Path:
    """A fresh ``.<name>.<kind>-<pid>-<random>`` path next to ``real``."""
    return real.parent / f".{_short_name(real)}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _short_name(real: Path) -> str:
    """``real``'s name, or for a name near the 255-byte limit a prefix plus a hash (the sibling must fit too)."""
    name = real.name
    if len(os.fsencode(name)) <= 200:
        return name
    return f"{name[:48]}~{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}"


def writer_alive(pid: int, mine_is_stale: bool) -> bool:
    """Whether process ``pid`` (the writer of a leftover) still runs. Under the save lock a leftover of
    this very process is from an earlier save that is over (``mine_is_stale``)."""
    if pid == os.getpid():
        return not mine_is_stale
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def parent_lock(parent: Path, wait: bool) -> Iterator[bool | None]:
    """Hold an flock on the folder ``parent`` for the block (closing the folder releases it).

    Yields True (held), False (another process holds it and ``wait`` is False) or None (no flock on
    this platform or filesystem: go on without). Waiting longer than LOCK_TIMEOUT_S is a SaveError.
    """
    handle = _open_folder(parent)
    try:
        yield _acquire(handle, parent, wait)
    finally:
        if handle is not None:
            os.close(handle)


def _open_folder(parent: Path) -> int | None:
    if not CAN_LOCK:
        return None
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def _acquire(handle: int | None, parent: Path, wait: bool) -> bool | None:
    if handle is None:
        return None
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not wait:
                return False
            if time.monotonic() > deadline:
                raise SaveError(
                    f"another process has been saving into {parent} for {LOCK_TIMEOUT_S:.0f} s; "
                    "wait for it to finish or save elsewhere"
                ) from None
            time.sleep(0.02)
        except OSError:
            return None


def _fsync_files(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make a folder's entries durable (best effort: some filesystems cannot fsync a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def reason(exc: OSError) -> str:
    """The OS's words for ``exc``, with the path it concerns."""
    text = exc.strerror or str(exc)
    return f"{text} ({exc.filename})" if exc.filename else text
