"""A wheel install finds the built-in rule files, and holds every module and data file of the package."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the wheel is built from. A copy of just these, because building in the tree reuses its build/ folder,
# whose files from an earlier build would be shipped even where pyproject no longer names them.
SOURCES = ("pyproject.toml", "README.md", "graphpeft", "passes")


def clean_source(folder: Path) -> Path:
    """A copy of the package's sources in ``folder``, without caches or earlier build output."""
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A folder with graphpeft installed into it from a wheel built from this tree (no editable install)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = clean_source(tmp_path_factory.mktemp("source"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("graphpeft-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def test_wheel_ships_the_rule_files(installed, tmp_path):
    target = installed
    probe = (
        "import graphpeft.rules.builtin as r; d = r.passes_dir(); "
        "print(d); print(sorted(p.name for p in d.glob('*.toml'))); print(len(r.builtin_rulesets()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert out[1] == "['bert.toml', 'gpt2.toml', 'llama.toml', 'opt.toml', 't5.toml']"
    assert out[2] == "5"


def test_wheel_ships_every_module_and_the_viewer_template(installed):
    source = ROOT / "graphpeft"
    wanted = {str(p.relative_to(source)) for p in source.rglob("*") if p.suffix in (".py", ".html")}
    shipped = {
        str(p.relative_to(installed / "graphpeft"))
        for p in (installed / "graphpeft").rglob("*")
        if p.suffix in (".py", ".html")
    }
    assert sorted(wanted - shipped) == []


def test_wheel_ships_the_py_typed_marker_so_type_checkers_read_graphpeft_annotations(installed):
    assert (installed / "graphpeft" / "py.typed").is_file()
