"""model.export(path, merged=...): a torch.export program that runs without graphpeft."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import graphpeft
from models import batch, tiny_llama

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
    child = subprocess.run(command, capture_output=True, check=False, text=True, cwd=folder, timeout=300)
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
    assert outputs[False]["has_lora"]
    assert not outputs[True]["has_lora"]


def test_export_leaves_the_model_unmerged_and_its_weights_exactly_as_they_were(deployed):
    model, inputs, expected, weights = deployed[:4]
    assert not model.merged
    for name, param in model.base_model.named_parameters():
        assert torch.equal(param, weights[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, atol=0, rtol=0)


# ---------------------------------------------------------------------- MoE experts: no op outside aten
TORCH_ONLY_CHILD = textwrap.dedent(
    """
    import sys
    import torch

    try:
        import graphpeft
    except ImportError as exc:
        assert "blocked" in str(exc), exc
    else:
        raise SystemExit("graphpeft is importable in the child")
    program = torch.export.load(sys.argv[1])
    with torch.no_grad():
        logits = program.module()(**torch.load(sys.argv[2]))["logits"]
    torch.save(logits, sys.argv[3])
    print("transformers imported:", "transformers" in sys.modules)
    """
)


def tiny_mixtral():
    """Mixtral, 1 layer of 4 experts (top-2), hidden 32, the router given weights so tokens spread out."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    model = MixtralForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[0].mlp.gate.weight.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def mixtral_program(tmp_path_factory):
    """A Mixtral with LoRA on q_proj and on the expert stacks, exported to a .pt2, and its logits."""
    folder = tmp_path_factory.mktemp("moe")
    rules = [
        graphpeft.Rule("q", "lora", graphpeft.Pattern(op="linear", module="*.q_proj"), {"init": "random"}),
        graphpeft.Rule(
            "experts",
            "lora",
            [graphpeft.Pattern(param="*.experts.gate_up_proj"), graphpeft.Pattern(param="*.experts.down_proj")],
            {"init": "random"},
        ),
    ]
    model = graphpeft.apply(tiny_mixtral(), rules)
    inputs = batch("llama", batch_size=2, length=9)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.export(folder / "mixtral.pt2")
    torch.save(inputs, folder / "inputs.pt")
    return folder, expected


def test_moe_program_calls_no_op_outside_aten(mixtral_program):
    program = torch.export.load(mixtral_program[0] / "mixtral.pt2")
    namespaces = {n.target.namespace for n in program.graph.nodes if isinstance(n.target, torch._ops.OpOverload)}
    assert namespaces == {"aten"}


def test_moe_program_runs_in_a_process_that_imports_only_torch(mixtral_program, tmp_path):
    folder, expected = mixtral_program
    blocker = tmp_path / "blocker" / "graphpeft"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked: the child must run without graphpeft')\n")
    out = tmp_path / "logits.pt"
    command = [sys.executable, "-c", TORCH_ONLY_CHILD, str(folder / "mixtral.pt2"), str(folder / "inputs.pt"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    child = subprocess.run(command, capture_output=True, check=False, text=True, cwd=tmp_path, env=env, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "transformers imported: False" in child.stdout
    torch.testing.assert_close(torch.load(out), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ends", [[3, 3, 7, 10], [0, 0, 0, 10], [10, 10, 10, 10], [2, 4, 6, 8]])
def test_segment_grouped_mm_equals_transformers_fallback(ends):
    import transformers.integrations.moe  # noqa: F401  (registers the fallback op)

    from graphpeft.runtime.export_program import grouped_mm_segments

    x, weight = torch.randn(10, 32), torch.randn(4, 32, 16)
    offs = torch.tensor(ends, dtype=torch.int32)
    expected = torch.ops.transformers.grouped_mm_fallback(x, weight, offs=offs)
    assert torch.equal(grouped_mm_segments(x, weight, offs=offs), expected)


# ---------------------------------------------------------------------- what else export must get right
def test_quantized_model_exports_its_codes_and_gives_its_logits(tmp_path, recwarn):
    model = graphpeft.apply(tiny_llama(layers=1), "lora", quantize="int8", init="random")
    model.export(tmp_path / "q.pt2")
    assert not [str(w.message) for w in recwarn], "no placeholder weight is written"
    program = torch.export.load(tmp_path / "q.pt2")
    assert any(value.dtype == torch.int8 for value in program.state_dict.values())
    inputs = batch("llama")
    with torch.no_grad():
        torch.testing.assert_close(program.module()(**inputs)["logits"], model(**inputs).logits, atol=1e-6, rtol=0)


def test_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    import errno

    model = graphpeft.apply(tiny_llama(layers=1), "lora")
    target = tmp_path / "model.pt2"
    target.write_bytes(b"previous program")

    def disk_full(program, f):
        with open(f, "wb") as out:
            out.write(b"half a progr")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.export, "save", disk_full)
    with pytest.raises(graphpeft.errors.SaveError, match=f"cannot write {target}: No space left on device"):
        model.export(target)
    assert target.read_bytes() == b"previous program"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]


@torch.library.custom_op("graphpeft_tests::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


@twice.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return twice(self.proj(x))


def test_program_calling_a_custom_op_warns_with_the_import_its_loader_needs(tmp_path):
    rule = graphpeft.Rule("p", "lora", graphpeft.Pattern(op="linear", module="proj"), {"r": 2})
    model = graphpeft.apply(WithCustomOp(), rule, example_inputs=(torch.randn(2, 4),))
    with pytest.warns(
        UserWarning, match=rf"calls graphpeft_tests::twice, registered outside torch; load it after `import {__name__}`"
    ):
        model.export(tmp_path / "custom.pt2", x=torch.randn(2, 4))
    assert (tmp_path / "custom.pt2").is_file()
