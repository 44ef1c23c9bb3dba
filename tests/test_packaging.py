"""A wheel install finds the built-in rule files."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_rule_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("graphpeft-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    probe = (
        "import graphpeft.rules.builtin as r; d = r.passes_dir(); "
        "print(d); print(sorted(p.name for p in d.glob('*.toml'))); print(len(r.builtin_rulesets()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert out[1] == "['bert.toml', 'gpt2.toml', 'llama.toml', 'opt.toml', 't5.toml']"
    assert out[2] == "5"
