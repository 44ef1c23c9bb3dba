"""The graphpeft command: inspect, viz and diff on a config directory; exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dot_reader import read_dot
from graphpeft.tools.cli import load_model, main, parse_overrides
from models import tiny_llama


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A one-layer Llama directory holding only config.json (no weights)."""
    config = tiny_llama(layers=1).config
    config.architectures = ["LlamaForCausalLM"]
    directory = tmp_path_factory.mktemp("tiny-llama")
    config.save_pretrained(directory)
    return directory


def test_model_directory_builds_the_architecture_on_the_meta_device(llama_dir):
    model = load_model(str(llama_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_module_function_builds_the_model():
    assert type(load_model("models:tiny_gpt2")).__name__ == "GPT2LMHeadModel"


def test_inspect_prints_the_dry_run_and_exits_0(llama_dir, capsys):
    assert main(["inspect", str(llama_dir), "--rules", "lora", "--set", "r=4"]) == 0
    out = capsys.readouterr().out
    assert "q_proj linear 32→32" in out
    assert "lora_A 4×32" in out
    assert "Summary per method" in out


def test_viz_writes_dot_that_parses(llama_dir, tmp_path, capsys):
    target = tmp_path / "graph.dot"
    assert main(["viz", str(llama_dir), "--rules", "lora", "--level", "module", "-o", str(target)]) == 0
    nodes, edges = read_dot(target.read_text())
    assert "model.layers.0.self_attn.q_proj" in nodes
    assert edges
    assert f"wrote {target}" in capsys.readouterr().out


def test_diff_prints_added_nodes_per_site_and_writes_the_html_diff(llama_dir, tmp_path, capsys):
    target = tmp_path / "diff.html"
    assert main(["diff", str(llama_dir), "--rules", "lora", "-o", str(target)]) == 0
    out = capsys.readouterr().out
    assert "rewrite diff: 12 added, 2 rewired" in out
    assert "+ model.layers.0.self_attn.v_proj:linear" in out
    assert "(lora_down)" in out
    assert '"openDiff": true' in target.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "no/such/dir", "--rules", "lora"], "neither a directory with config.json nor module:function"),
        (["viz", "models:tiny_llama", "--rules", "lora", "-o", "graph.svg"], "name the output *.html or *.dot"),
        (["inspect", "models:tiny_llama", "--rules", "lora", "--set", "r"], "--set takes KEY=VALUE"),
        (["inspect", "models:no_such_builder", "--rules", "lora"], "has no function 'no_such_builder'"),
    ],
)
def test_usage_errors_exit_2_with_the_message_on_stderr(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_graphpeft_errors_exit_1_with_the_message_only(llama_dir, capsys):
    assert main(["inspect", str(llama_dir), "--rules", "lorra"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphpeft inspect: ")
    assert "did you mean 'lora'?" in err
    assert "Traceback" not in err


def test_help_exits_0_and_missing_arguments_exit_2(capsys):
    for command in ("inspect", "viz", "diff"):
        assert main([command, "--help"]) == 0
        assert "--rules" in capsys.readouterr().out
    assert main(["viz", "models:tiny_llama", "--rules", "lora"]) == 2  # -o is required
    assert main([]) == 2


def test_overrides_parse_as_toml_values():
    assert parse_overrides(["r=16", "dropout=0.1", "init=gaussian", "dora=true"]) == {
        "r": 16,
        "dropout": 0.1,
        "init": "gaussian",
        "dora": True,
    }


def test_installed_command_runs_inspect_in_a_subprocess(llama_dir):
    script = Path(sys.executable).with_name("graphpeft")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "graphpeft.tools.cli"]
    done = subprocess.run(
        [*command, "inspect", str(llama_dir), "--rules", "lora"],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "model.layers" not in done.stderr
    assert "v_proj linear 32→16" in done.stdout
