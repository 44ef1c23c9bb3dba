"""Hostile paths and folders: bad save targets, symbolic links, FIFOs and folders where files belong.

Catalogue cases (a named error, the model unchanged) and the behaviours the link policy must keep working:
a Hugging Face cache snapshot, whose files are links into ``../../blobs``, loads; a link that leaves the
adapter folder (or the cache repo) does not.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

import graphpeft
import graphpeft.io.atomic_dir as atomic_dir
import mlp
from catalogue import Case, case_test, load, mkdir, touch
from graphpeft.errors import LoadError, SaveError
from graphpeft.io.adapter_folder import restore_weights

SNAPSHOT = "3f1c0ffee"


def hf_cache_repo(source: Path, repo: Path, revision: str = SNAPSHOT) -> Path:
    """Lay ``source`` out as the Hugging Face hub cache does and return the snapshot folder:
    ``repo/blobs/<sha256>`` holds each file, ``repo/snapshots/<revision>/<path>`` links to it
    (``../../blobs/<sha256>``, relative, one ``..`` more per sub-folder)."""
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def symlink(link: Path, target: Path | str) -> Path:
    os.symlink(target, link)
    return link


def relinked(folder: Path, name: str, target: Path | str) -> Path:
    """``folder`` with its file ``name`` replaced by a symbolic link to ``target``."""
    (folder / name).unlink()
    symlink(folder / name, target)
    return folder


def replaced_by_fifo(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    os.mkfifo(folder / name)
    return folder


def replaced_by_folder(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    (folder / name).mkdir()
    return folder


def outside_copy(w, name: str = "outside") -> Path:
    """A second, valid copy of the saved adapter outside the folder under test."""
    return Path(shutil.copytree(w.saved, w.tmp / name))


def with_subfolder_link_out(w) -> Path:
    folder = w.copy()
    symlink(folder / "evil", outside_copy(w))
    return folder


def cache_link_into_other_repo(w) -> Path:
    """A cache snapshot whose weights link to a blob of another repo of the same cache."""
    hub = w.tmp / "hub"
    snapshot = hf_cache_repo(w.saved, hub / "models--org--adapter")
    other = hf_cache_repo(w.saved, hub / "models--org--other")
    return relinked(snapshot, "adapter_model.safetensors", other / "adapter_model.safetensors")


def chat_model() -> graphpeft.GraphPeftModel:
    """The MLP with one LoRA adapter named ``chat`` (saved into the sub-folder ``chat/``)."""
    return graphpeft.apply(mlp.base(), mlp.LORA, adapter_name="chat", example_inputs=(mlp.example(),))


def save_chat_into(w, prepare) -> None:
    target = mkdir(w.tmp / "run")
    prepare(target)
    w.custom.save_pretrained(str(target), overwrite=True)


def save_inside_the_working_directory(w) -> None:
    """Save into the folder above the working directory (chdir back afterwards, pass or fail)."""
    inner = mkdir(mkdir(w.tmp / "project") / "inner")
    here = os.getcwd()
    os.chdir(inner)
    try:
        w.wrapped.save_pretrained("..", overwrite=True)
    finally:
        os.chdir(here)


def skip_as_root() -> None:
    if os.geteuid() == 0:
        pytest.skip("permissions do not bind root; /sys covers a read-only target for root")


def save_under_read_only_parent(w) -> None:
    skip_as_root()
    parent = mkdir(w.tmp / "locked")
    parent.chmod(0o500)
    try:
        w.wrapped.save_pretrained(str(parent / "adapter"))
    finally:
        parent.chmod(0o700)


def save_while_another_save_holds_the_lock(w) -> None:
    """Hold the parent folder's save lock (another open file description counts as another saver)."""
    parent = mkdir(w.tmp / "busy")
    handle = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(handle, fcntl.LOCK_EX)
    waited, atomic_dir.LOCK_TIMEOUT_S = atomic_dir.LOCK_TIMEOUT_S, 0.2
    try:
        w.wrapped.save_pretrained(str(parent / "adapter"))
    finally:
        atomic_dir.LOCK_TIMEOUT_S = waited
        os.close(handle)


def save(path_of, **kwargs):
    return lambda w: w.wrapped.save_pretrained(path_of(w), **kwargs)


# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
CASES = [
    # ---------------------------------------------------------------- save targets
    Case("save_directory_empty", save(lambda w: ""), SaveError, "save_directory is empty"),
    Case("save_directory_none", save(lambda w: None), SaveError, "must be a path"),
    Case("save_directory_with_nul_byte", save(lambda w: str(w.tmp / "a\0b")), SaveError, "NUL byte"),
    Case("save_directory_name_too_long", save(lambda w: str(w.tmp / ("x" * 300))), SaveError, "is 300 bytes long"),
    Case("save_directory_symlink_loop", save(lambda w: str(symlink(w.tmp / "loop", w.tmp / "loop"))), SaveError, "symbolic link loop"),
    Case("save_directory_dangling_symlink", save(lambda w: str(symlink(w.tmp / "dangling", w.tmp / "nowhere"))), SaveError, "which does not exist"),
    Case("save_directory_under_dangling_symlink", save(lambda w: str(symlink(w.tmp / "dangling", w.tmp / "nowhere") / "adapter")), SaveError, "which does not exist"),
    Case("save_directory_symlink_to_a_file", save(lambda w: str(symlink(w.tmp / "link", touch(w.tmp / "file")))), SaveError, "it exists and is not a directory"),
    Case("save_directory_filesystem_root", save(lambda w: "/"), SaveError, "the filesystem root"),
    Case("save_directory_holds_working_directory", save_inside_the_working_directory, SaveError, "current working directory"),
    Case("save_directory_under_read_only_sys", save(lambda w: "/sys/kernel/graphpeft-adapter"), SaveError, "choose a writable directory"),
    Case("save_directory_under_read_only_parent", save_under_read_only_parent, SaveError, "choose a writable directory"),
    # ---------------------------------------------------------------- what a save would have to destroy
    Case("save_over_adapter_file_name_that_is_a_folder", save(lambda w: str(mkdir(mkdir(w.tmp / "run") / "adapter_model.safetensors").parent), overwrite=True), SaveError, "adapter_model.safetensors is a directory"),
    Case("save_over_folder_with_a_fifo", save(lambda w: str(replaced_by_fifo(touch(mkdir(w.tmp / "run") / "pipe").parent, "pipe")), overwrite=True), SaveError, "pipe is a FIFO"),
    Case("save_adapter_subfolder_over_a_file", lambda w: save_chat_into(w, lambda t: touch(t / "chat")), SaveError, "chat is in the way", make=chat_model),
    Case("save_while_another_save_holds_the_lock", save_while_another_save_holds_the_lock, SaveError, "another process has been saving into"),
    Case("save_adapter_subfolder_over_a_symlink", lambda w: save_chat_into(w, lambda t: symlink(t / "chat", mkdir(w.tmp / "elsewhere"))), SaveError, "chat is in the way", make=chat_model),
    # ---------------------------------------------------------------- load: links and odd files
    Case("load_folder_symlink_loop", load(lambda w: symlink(w.tmp / "loop", w.tmp / "loop")), LoadError, "symbolic link loop"),
    Case("load_subfolder_link_out_of_the_folder", load(with_subfolder_link_out), LoadError, "outside the adapter folder"),
    Case("load_weights_link_to_etc_passwd", load(lambda w: relinked(w.copy(), "adapter_model.safetensors", "/etc/passwd")), LoadError, "outside the adapter folder"),
    Case("load_weights_link_to_a_valid_file_outside", load(lambda w: relinked(w.copy(), "adapter_model.safetensors", outside_copy(w) / "adapter_model.safetensors")), LoadError, "outside the adapter folder"),
    Case("load_manifest_link_outside", load(lambda w: relinked(w.copy(), "graphpeft.json", outside_copy(w) / "graphpeft.json")), LoadError, "outside the adapter folder"),
    Case("load_weights_dangling_link", load(lambda w: relinked(w.copy(), "adapter_model.safetensors", "missing.safetensors")), LoadError, "which does not exist"),
    Case("load_weights_link_loop", load(lambda w: relinked(w.copy(), "adapter_model.safetensors", "adapter_model.safetensors")), LoadError, "symbolic link loop"),
    Case("load_weights_fifo", load(lambda w: replaced_by_fifo(w.copy(), "adapter_model.safetensors")), LoadError, "is a FIFO, not a regular file", timeout=60),
    Case("load_manifest_fifo", load(lambda w: replaced_by_fifo(w.copy(), "graphpeft.json")), LoadError, "is a FIFO, not a regular file", timeout=60),
    Case("load_weights_is_a_folder", load(lambda w: replaced_by_folder(w.copy(), "adapter_model.safetensors")), LoadError, "is a directory, not a regular file"),
    Case("load_cache_link_into_another_repo", load(cache_link_into_other_repo), LoadError, "outside the adapter folder"),
    Case("load_adapter_with_weights_link_out", lambda w: w.wrapped.load_adapter(str(relinked(w.copy(), "adapter_model.safetensors", outside_copy(w) / "adapter_model.safetensors")), "other"), LoadError, "outside the adapter folder"),
    Case("restore_weights_link_out", lambda w: restore_weights(w.wrapped, relinked(w.copy(), "adapter_model.safetensors", outside_copy(w) / "adapter_model.safetensors")), LoadError, "outside the adapter folder"),
]
# fmt: on


test_hostile_input_raises_named_error_and_leaves_model_unchanged = case_test(CASES)


# -------------------------------------------------------------------- what the link policy keeps working
@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    """The MLP with adapters ``default`` and ``chat`` saved in one folder, and its outputs per adapter."""
    model = mlp.adapted(seed=3)
    model.add_adapter("chat", mlp.LORA)
    folder = tmp_path_factory.mktemp("two") / "adapter"
    model.save_pretrained(str(folder))
    return folder, {name: tensors_of(model, name) for name in ("default", "chat")}


def tensors_of(model: graphpeft.GraphPeftModel, adapter: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.adapter_parameters(adapter).items()}


def assert_same_adapters(loaded: graphpeft.GraphPeftModel, expected: dict[str, dict[str, torch.Tensor]]) -> None:
    assert sorted(loaded.adapter_specs) == sorted(expected)
    for name, tensors in expected.items():
        got = tensors_of(loaded, name)
        assert got.keys() == tensors.keys()
        assert all(torch.equal(got[k], tensors[k]) for k in tensors), name


def test_hugging_face_cache_snapshot_whose_files_link_to_blobs_loads(two_adapters, tmp_path):
    folder, expected = two_adapters
    snapshot = hf_cache_repo(folder, tmp_path / "hub" / "models--org--adapter")
    assert (snapshot / "chat" / "adapter_model.safetensors").is_symlink()
    assert_same_adapters(mlp.load(str(snapshot)), expected)


def test_hugging_face_cache_sub_folder_loads_with_load_adapter(two_adapters, tmp_path):
    folder, expected = two_adapters
    snapshot = hf_cache_repo(folder, tmp_path / "hub" / "models--org--adapter")
    model = mlp.load(str(snapshot))
    model.delete_adapter("chat")
    model.load_adapter(str(snapshot / "chat"), "chat")
    assert_same_adapters(model, expected)


def test_link_inside_the_adapter_folder_loads(two_adapters, tmp_path):
    folder, expected = two_adapters
    copy = Path(shutil.copytree(folder, tmp_path / "adapter"))
    (copy / "blobs").mkdir()
    os.replace(copy / "adapter_model.safetensors", copy / "blobs" / "weights")
    symlink(copy / "adapter_model.safetensors", "blobs/weights")
    assert_same_adapters(mlp.load(str(copy)), expected)


def test_symlink_to_the_adapter_folder_itself_loads(two_adapters, tmp_path):
    folder, expected = two_adapters
    assert_same_adapters(mlp.load(str(symlink(tmp_path / "link", folder))), expected)


def test_sub_folder_link_out_that_holds_no_adapter_is_ignored(two_adapters, tmp_path):
    folder, expected = two_adapters
    copy = Path(shutil.copytree(folder, tmp_path / "adapter"))
    symlink(copy / "logs", mkdir(tmp_path / "logs"))
    assert_same_adapters(mlp.load(str(copy)), expected)


def test_save_into_a_cache_snapshot_replaces_the_links_and_leaves_the_blobs(two_adapters, tmp_path):
    folder, _ = two_adapters
    repo = tmp_path / "hub" / "models--org--adapter"
    snapshot = hf_cache_repo(folder, repo)
    blobs = {p.name: p.read_bytes() for p in (repo / "blobs").iterdir()}
    mlp.adapted(seed=9).save_pretrained(str(snapshot), overwrite=True)
    assert not (snapshot / "adapter_model.safetensors").is_symlink()
    assert {p.name: p.read_bytes() for p in (repo / "blobs").iterdir()} == blobs


# -------------------------------------------------------------------- save paths that must work
def test_save_directory_with_dotdot_saves_into_the_folder_it_names(tmp_path):
    (tmp_path / "a").mkdir()
    mlp.adapted().save_pretrained(str(tmp_path / "a" / ".." / "b"))
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert sorted(os.listdir(tmp_path / "b")) == ["adapter_config.json", "adapter_model.safetensors", "graphpeft.json"]


def test_save_directory_named_near_the_length_limit_saves_and_overwrites(tmp_path):
    folder = tmp_path / ("n" * 250)
    mlp.adapted(seed=1).save_pretrained(str(folder))
    mlp.adapted(seed=2).save_pretrained(str(folder), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == [folder.name]
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors", "graphpeft.json"]


def test_save_directory_with_doubled_and_trailing_separators_saves_into_the_folder_it_names(tmp_path):
    mlp.adapted().save_pretrained(f"{tmp_path}//runs///adapter/")
    assert sorted(os.listdir(tmp_path / "runs")) == ["adapter"]
    assert sorted(os.listdir(tmp_path / "runs" / "adapter")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "graphpeft.json",
    ]
