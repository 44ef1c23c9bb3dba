"""One output file (a ``.pt2`` program, a graph view), written safely.

The path is checked before any work is done, the file is written next to its target under a hidden
temporary name and renamed into place, so a write that fails leaves whatever was at the path before.
Every problem with the path is a :class:`~graphpeft.errors.SaveError` naming it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import SaveError, UsageError


def check_output_path(path: object) -> Path:
    """``path`` as a :class:`Path`, if a file can be created there: not a directory, in an existing folder."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise UsageError(f"an output path must be a non-empty str or os.PathLike, got {path!r}")
    target = Path(path)
    if target.is_dir():
        raise SaveError(f"cannot write {target}: it is a directory; name a file inside it")
    folder = target.parent
    if not folder.exists():
        raise SaveError(f"cannot write {target}: its folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise SaveError(f"cannot write {target}: {folder} is not a folder")
    return target


@contextlib.contextmanager
def atomic_file(path: object) -> Iterator[Path]:
    """A fresh temporary path next to ``path`` (same suffix) to write; it replaces ``path`` when the
    ``with`` block ends without an error and is removed otherwise."""
    target = check_output_path(path)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}")
    try:
        open(temp, "xb").close()  # creates it with the usual permissions, or fails now
    except OSError as exc:
        raise SaveError(f"cannot write {target}: {exc.strerror or exc}; choose a writable path") from None
    try:
        yield temp
        os.replace(temp, target)
    except SaveError:
        raise
    except OSError as exc:
        raise SaveError(f"cannot write {target}: {exc.strerror or exc}; choose a writable path") from None
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: object, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as temp:
        temp.write_text(text, encoding="utf-8")
    assert isinstance(path, (str, os.PathLike))  # atomic_file refused anything else
    return Path(path)
