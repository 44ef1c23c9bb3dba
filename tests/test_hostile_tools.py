"""Hostile inputs to the tools: quantization, the .pt2 export, graph views, explain and the ``graphpeft``
command. Catalogue cases (``tests/catalogue.py``) for the Python API; the command's misuse is driven through
``graphpeft.tools.cli.main`` (and once through a subprocess): each misuse exits with its code (2 usage, 1
graphpeft error, 3 internal error) and one line on stderr, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import graphpeft
from catalogue import Case, apply, case_test, mkdir, touch
from graphpeft import Pattern, Rule
from graphpeft.errors import AdapterError, CallError, SaveError, UsageError
from graphpeft.tools.cli import main
from graphpeft.tools.viz import to_networkx, write
from graphpeft.tools.viz_html import to_html
from models import tiny_llama


class HeadOnly(nn.Module):
    """An embedding and an output head named ``lm_head``: no base linear weight but the head's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 8)
        self.lm_head = nn.Linear(8, 10)

    def forward(self, ids):
        return self.lm_head(self.embed(ids))


def quantized_llama() -> graphpeft.GraphPeftModel:
    return graphpeft.apply(tiny_llama(layers=1), "lora", quantize="int8")


def merged_llama() -> graphpeft.GraphPeftModel:
    model = graphpeft.apply(tiny_llama(layers=1), "lora", init="random")
    model.merge()
    return model


def head_lora(w):
    rule = Rule("head", "lora", Pattern(op="linear", module="lm_head"))
    return graphpeft.apply(w.custom, rule, example_inputs=(torch.tensor([[1, 2, 3]]),), quantize="nf4")


def export_to(path, **kwargs):
    return lambda w: w.wrapped.export(path(w) if callable(path) else path, **kwargs)


def ids(length: int = 4) -> torch.Tensor:
    return torch.ones(1, length, dtype=torch.long)


# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
CASES = [
    # ---------------------------------------------------------------- quantize
    Case("quantize_unknown_scheme", apply("lora", quantize="int4"), CallError, "quantize must be one of 'int8', 'nf4', got 'int4'"),
    Case("quantize_scheme_not_a_string", apply("lora", quantize=4), CallError, "quantize must be one of"),
    Case("quantize_finds_nothing_to_quantize", head_lora, CallError, "found no base linear weight to quantize in HeadOnly (lm_head.weight: output head", make=HeadOnly),
    Case("quantize_with_dora", apply("lora", dora=True, quantize="int8"), CallError, "DoRA reads the base weight itself"),
    Case("quantize_an_already_quantized_base", lambda w: w.custom.quantize("nf4"), AdapterError, "already quantized (int8); call model.dequantize() first", make=quantized_llama),
    Case("quantize_a_merged_model", lambda w: w.custom.quantize("int8"), AdapterError, "unmerge() before quantizing", make=merged_llama),
    Case("export_merged_from_a_quantized_base", lambda w: w.custom.export(w.tmp / "m.pt2", merged=True), AdapterError, "call model.dequantize() first", make=quantized_llama),
    # ---------------------------------------------------------------- export paths and arguments
    Case("export_under_a_missing_proc_folder", export_to("/proc/graphpeft-test/m.pt2"), SaveError, "cannot write /proc/graphpeft-test/m.pt2: its folder /proc/graphpeft-test does not exist"),
    Case("export_into_proc", export_to("/proc/graphpeft-test.pt2"), SaveError, "cannot write /proc/graphpeft-test.pt2: No such file or directory; choose a writable path"),
    Case("export_into_read_only_sys", export_to("/sys/graphpeft-test.pt2"), SaveError, "cannot write /sys/graphpeft-test.pt2: Permission denied"),
    Case("export_under_a_missing_folder", export_to(lambda w: w.tmp / "missing" / "m.pt2"), SaveError, "does not exist; create it first"),
    Case("export_onto_a_directory", export_to(lambda w: w.tmp), SaveError, "it is a directory; name a file inside it"),
    Case("export_under_a_file", export_to(lambda w: touch(w.tmp / "file") / "m.pt2"), SaveError, "file is not a folder"),
    Case("export_path_of_wrong_type", export_to(42), UsageError, "an output path must be a non-empty str or os.PathLike, got 42"),
    Case("export_merged_not_a_bool", export_to(lambda w: w.tmp / "m.pt2", merged="yes"), CallError, "export(merged=...) must be True or False"),
    Case("export_misspelled_input", export_to(lambda w: w.tmp / "m.pt2", input_idz=ids()), CallError, "did you mean 'input_ids'"),
    # ---------------------------------------------------------------- graph views and explain
    Case("viz_write_under_a_missing_folder", lambda w: write(w.wrapped, w.tmp / "missing" / "g.html"), SaveError, "does not exist; create it first"),
    Case("viz_write_under_proc", lambda w: write(w.wrapped, "/proc/graphpeft-test/g.dot"), SaveError, "cannot write /proc/graphpeft-test/g.dot"),
    Case("viz_write_onto_a_directory", lambda w: write(w.wrapped, mkdir(w.tmp / "g.html")), SaveError, "it is a directory"),
    Case("viz_write_unknown_format", lambda w: write(w.wrapped, w.tmp / "g.svg"), UsageError, "name the output *.html or *.dot"),
    Case("viz_unknown_level", lambda w: to_networkx(w.wrapped, level="block"), UsageError, "level must be one of op, module"),
    Case("viz_of_an_unwrapped_model", lambda w: to_html(w.base), UsageError, "wrap it with graphpeft.apply(model, rules) first"),
    Case("explain_unknown_adapter", lambda w: w.wrapped.explain(["defualt"]), AdapterError, "did you mean 'default'"),
    Case("explain_adapter_names_as_one_string", lambda w: w.wrapped.explain("default"), UsageError, "adapter_names takes a list of names"),
    Case("explain_dry_run_with_a_bad_adapter_name", lambda w: graphpeft.explain(w.base, "lora", adapter_name="a/b"), AdapterError, "may not contain '/'"),
]
# fmt: on


test_hostile_input_raises_named_error_and_leaves_model_unchanged = case_test(CASES)


# ---------------------------------------------------------------------- the graphpeft command
@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> Path:
    """``llama`` (a config-only model directory) and broken model directories next to it."""
    root = tmp_path_factory.mktemp("cli")
    config = tiny_llama(layers=1).config
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(root / "llama")
    for name, text in {
        "bad_value": '{"model_type": "llama", "hidden_size": "abc"}',
        "not_json": "not json",
        "unknown_type": '{"model_type": "no-such-model"}',
    }.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    (root / "broken_builder.py").write_text("def build():\n    raise ValueError('no weights here')\n")
    return root


# One case per line, so that the catalogue reads as a table; the formatter leaves it as written.
# fmt: off
MISUSE = [
    # (argv with {root} for the fixture folder, exit code, fragment of the one stderr line)
    pytest.param(["frobnicate"], 2, "graphpeft: argument COMMAND: invalid choice: 'frobnicate'", id='unknown_command'),
    pytest.param([], 2, "graphpeft: name a command: inspect, viz or diff", id='no_command'),
    pytest.param(["viz", "{root}/llama"], 2, "graphpeft viz: the following arguments are required: --rules, -o/--output", id='missing_arguments'),
    pytest.param(["inspect", "{root}/llama", "--rules", "lora", "--width", "wide"], 2, "argument --width: invalid int value: 'wide'", id='option_of_wrong_type'),
    pytest.param(["inspect", "{root}/nowhere", "--rules", "lora"], 2, "is neither a directory with config.json nor module:function", id='model_path_missing'),
    pytest.param(["inspect", "{root}", "--rules", "lora"], 2, "has no config.json", id='model_dir_without_config'),
    pytest.param(["inspect", "{root}/bad_value", "--rules", "lora"], 2, "cannot read {root}/bad_value/config.json as a transformers config: Validation error for field 'hidden_size': TypeError", id='model_config_bad_value'),
    pytest.param(["inspect", "{root}/not_json", "--rules", "lora"], 2, "cannot read {root}/not_json/config.json as a transformers config: It looks like the config file", id='model_config_not_json'),
    pytest.param(["inspect", "{root}/unknown_type", "--rules", "lora"], 2, "model type `no-such-model`", id='model_config_unknown_type'),
    pytest.param(["inspect", "broken_builder:build", "--rules", "lora"], 2, "MODEL broken_builder:build raised ValueError: no weights here", id='model_builder_raises'),
    pytest.param(["inspect", "{root}/llama", "--rules", "{root}/nope.toml"], 1, "cannot read rule file", id='rule_file_missing'),
    pytest.param(["inspect", "{root}/llama", "--rules", "lora", "--set", "r=abc"], 1, "key 'r' must be int, got 'abc'", id='override_not_an_int'),
    pytest.param(["inspect", "{root}/llama", "--rules", "lora", "--set", "=4"], 2, "--set takes KEY=VALUE", id='override_without_key'),
    pytest.param(["inspect", "{root}/llama", "--rules", "lora", "--adapter-name", "a/b"], 1, "may not contain '/'", id='adapter_name_with_slash'),
    pytest.param(["viz", "{root}/llama", "--rules", "lora", "-o", "{root}/missing/g.html"], 1, "its folder {root}/missing does not exist", id='viz_output_folder_missing'),
    pytest.param(["viz", "{root}/llama", "--rules", "lora", "-o", "/proc/graphpeft-test.html"], 1, "cannot write /proc/graphpeft-test.html", id='viz_output_under_proc'),
    pytest.param(["viz", "{root}/llama", "--rules", "lora", "-o", "{root}/llama"], 2, "name the output *.html or *.dot", id='viz_output_without_format'),
    pytest.param(["diff", "{root}/llama", "--rules", "lora", "-o", "{root}/missing/d.html"], 1, "its folder {root}/missing does not exist", id='diff_output_folder_missing'),
]
# fmt: on


def filled(argv: list[str], root: Path) -> list[str]:
    return [part.format(root=root) for part in argv]


def one_stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(("argv", "code", "fragment"), MISUSE)
def test_cli_misuse_exits_with_its_code_and_one_line_on_stderr(argv, code, fragment, dirs, capsys, monkeypatch):
    monkeypatch.chdir(dirs)
    monkeypatch.syspath_prepend(str(dirs))
    assert main(filled(argv, dirs)) == code
    line = one_stderr_line(capsys)
    assert fragment.format(root=dirs) in line
    assert "Traceback" not in line


def test_cli_output_path_is_checked_before_the_model_is_built(dirs, capsys, monkeypatch):
    def never(spec):
        raise AssertionError("the model was built")

    monkeypatch.setattr("graphpeft.tools.cli.load_model", never)
    assert main(["diff", str(dirs / "llama"), "--rules", "lora", "-o", str(dirs / "missing" / "d.html")]) == 1
    assert capsys.readouterr().out == ""


def test_cli_unexpected_error_exits_3_with_one_line_pointing_to_debug(dirs, capsys, monkeypatch):
    def broken(spec):
        raise RuntimeError("internal bug")

    monkeypatch.setattr("graphpeft.tools.cli.load_model", broken)
    assert main(["inspect", str(dirs / "llama"), "--rules", "lora"]) == 3
    line = one_stderr_line(capsys)
    assert "internal error: RuntimeError: internal bug" in line
    assert "--debug" in line


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_cli_debug_lets_the_traceback_through(how, dirs, monkeypatch):
    argv = ["viz", str(dirs / "llama"), "--rules", "lora", "-o", str(dirs / "missing" / "g.html")]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("GRAPHPEFT_DEBUG", "1")
    with pytest.raises(SaveError, match="does not exist"):
        main(argv)


def test_cli_in_a_subprocess_prints_one_line_and_exits_1(dirs):
    script = Path(sys.executable).with_name("graphpeft")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "graphpeft.tools.cli"]
    argv = ["viz", str(dirs / "llama"), "--rules", "lora", "-o", "/missing-graphpeft-folder/g.html"]
    done = subprocess.run(command + argv, capture_output=True, check=False, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        (
            "graphpeft viz: cannot write /missing-graphpeft-folder/g.html: its folder /missing-graphpeft-folder does "
            "not exist; create it first"
        )
    ]
