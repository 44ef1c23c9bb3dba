"""model.export(path, merged=...): a torch.export program that runs without graphpeft."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from models import batch, tiny_llama

import graphpeft

CHILD = textwrap.dedent(
    """
    import sys
    import torch

    inputs = torch.load(sys.argv[1])
    for path in sys.argv[2:]:
        program = torch.export.load(path)
        with torch.no_grad():
            logits = program.module()(**inputs)["logits"]
        has_lora = any("lora" in name for name in program.state_dict)
        torch.save({"logits": logits, "has_lora": has_lora}, path + ".out")
    print("graphpeft imported:", "graphpeft" in sys.modules)
    """
)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A LoRA Llama exported unmerged and merged, run in a child process that does not import
    graphpeft, on inputs of another shape than the traced ones."""
    folder = tmp_path_factory.mktemp("pt2")
    model = graphpeft.apply(tiny_llama(layers=1), "lora", init="random")
    inputs = batch("llama", batch_size=3, length=11)
    with torch.no_grad():
        expected = model(**inputs).logits
    paths = {merged: folder / f"llama_merged_{merged}.pt2" for merged in (False, True)}
    weights = {name: p.detach().clone() for name, p in model.base_model.named_parameters()}
    for merged, path in paths.items():
        model.export(path, merged=merged)
    torch.save(inputs, folder / "inputs.pt")
    (folder / "child.py").write_text(CHILD)
    command = [sys.executable, "-I", str(folder / "child.py"), str(folder / "inputs.pt"), *map(str, paths.values())]
    child = subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    outputs = {merged: torch.load(f"{path}.out") for merged, path in paths.items()}
    return model, inputs, expected, weights, child.stdout, outputs


def test_child_process_ran_the_programs_without_importing_graphpeft(deployed):
    assert "graphpeft imported: False" in deployed[4]


@pytest.mark.parametrize("merged", [False, True])
def test_exported_program_gives_the_adapted_models_logits(deployed, merged):
    expected, outputs = deployed[2], deployed[5]
    torch.testing.assert_close(outputs[merged]["logits"], expected, atol=1e-5, rtol=0)


def test_unmerged_program_holds_adapter_weights_and_merged_program_none(deployed):
    outputs = deployed[5]
    assert outputs[False]["has_lora"] and not outputs[True]["has_lora"]


def test_export_leaves_the_model_unmerged_and_its_weights_exactly_as_they_were(deployed):
    model, inputs, expected, weights = deployed[:4]
    assert not model.merged
    for name, param in model.base_model.named_parameters():
        assert torch.equal(param, weights[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, atol=0, rtol=0)
