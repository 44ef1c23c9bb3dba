"""Reading an adapter's ``adapter_model.safetensors`` defensively.

The header (names, dtypes, shapes) is read first, without the data: the loader checks it against what
the adapter needs before any tensor is read or any parameter created. safetensors itself refuses a
header longer than 100 MB or offsets that run past the end of the file, so nothing declared in a header
is allocated before it is known to be in the file. Only floating-point tensors are accepted, and only
finite values. Pickles (``adapter_model.bin``, ``*.pt``) are never opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from ..errors import LoadError

WEIGHTS = "adapter_model.safetensors"
PICKLED = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}

Header = dict[str, tuple[tuple[int, ...], str]]


def pickle_hint(folder: Path) -> str:
    """A sentence for a folder that holds pickled weights instead of safetensors (empty if none)."""
    pickled = [name for name in PICKLED if (folder / name).is_file()]
    if not pickled:
        return ""
    return (
        f"; it holds {pickled[0]}, a pickle, which graphpeft never unpickles (it can run code): "
        "save the adapter as safetensors (PEFT: save_pretrained(..., safe_serialization=True))"
    )


def read_header(path: Path) -> Header:
    """``key -> (shape, dtype)`` of every tensor in the file; no tensor data is read."""
    if not path.is_file():
        raise LoadError(f"{path} is missing; an adapter directory needs {WEIGHTS}{pickle_hint(path.parent)}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = {key: _entry(handle.get_slice(key)) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for truncated or corrupt files
        raise LoadError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may be truncated or corrupted"
        ) from None
    for key, (_, dtype) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise LoadError(
                f"{path}: tensor {key!r} has dtype {dtype}; adapter weights are floating point "
                f"({', '.join(FLOAT_DTYPES)}): the file was not written for an adapter"
            )
    return header


class _Slice(Protocol):
    """What a safetensors slice offers (its stubs leave ``get_slice``'s result untyped)."""

    def get_shape(self) -> list[int]: ...

    def get_dtype(self) -> str: ...


def _entry(view: _Slice) -> tuple[tuple[int, ...], str]:
    return tuple(view.get_shape()), view.get_dtype()


def read_tensors(path: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` (all by default) of a file whose header :func:`read_header` accepted; each must
    be finite."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in (handle.keys() if keys is None else keys)}
    except Exception as exc:  # noqa: BLE001 - as above: any failure to read is a corrupt file
        raise LoadError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may be truncated or corrupted"
        ) from None
    for key, tensor in tensors.items():
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise LoadError(
                f"{path}: tensor {key!r} holds {bad} NaN or infinite values; the adapter diverged in training "
                "or the file is damaged; save it again from a good checkpoint"
            )
    return tensors
