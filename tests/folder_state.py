"""What a folder holds, for tests that compare a folder before and after a save."""

from __future__ import annotations

import os
from pathlib import Path

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "graphpeft.json"]


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry below ``folder`` by relative path: a file's bytes, a link's target text, ``"<dir>"`` for a folder."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            out[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[name] = "<dir>"
        else:
            out[name] = path.read_bytes()
    return out


def leftovers(target: Path) -> list[str]:
    """Hidden siblings a save of ``target`` made (``.<name>.tmp-*``, ``.<name>.old-*``)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())
