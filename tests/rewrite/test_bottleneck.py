"""Bottleneck adapters: identity at init, training moves only adapter weights, placement per config."""

from __future__ import annotations

import pytest
import torch

import graphpeft
from graphpeft.errors import AdapterError
from graphpeft.rewrite.claims import adapter_nodes
from models import batch, tiny_llama
from shared_models import bare_model, temporary_adapters


def _adapted_sites(model, kind: str) -> list[str]:
    gm = model.graph(**batch(kind))
    return sorted({n.meta["graphpeft.adapter_node"]["site"] for n in adapter_nodes(gm)})


@pytest.mark.parametrize(
    ("kind", "config"),
    [("llama", "houlsby"), ("gpt2", "parallel"), ("bert", "parallel"), ("t5", "pfeiffer"), ("opt", "houlsby")],
)
def test_fresh_bottleneck_adapter_leaves_outputs_unchanged(kind, config):
    with temporary_adapters(bare_model(kind)) as model:
        with torch.no_grad():
            expected = model.base_model(**batch(kind)).logits
        model.add_adapter("default", config)

        with torch.no_grad():
            got = model(**batch(kind)).logits

        assert _adapted_sites(model, kind)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_houlsby_places_two_adapters_per_layer_and_pfeiffer_one():
    with temporary_adapters(bare_model("llama"), "houlsby", "pfeiffer") as model:
        model.add_adapter("houlsby", "houlsby")
        model.add_adapter("pfeiffer", "pfeiffer")
        houlsby = _adapted_sites(model, "llama")
        model.set_adapter("pfeiffer")
        pfeiffer = _adapted_sites(model, "llama")

    assert houlsby == [f"model.layers.{i}.{m}:linear" for i in (0, 1) for m in ("mlp.down_proj", "self_attn.o_proj")]
    assert pfeiffer == [f"model.layers.{i}.mlp.down_proj:linear" for i in (0, 1)]


def test_parallel_adapter_reads_the_feed_forward_input():
    with temporary_adapters(bare_model("llama")) as model:
        model.add_adapter("default", "parallel")
        gm = model.graph(**batch("llama"))
    down = next(
        n
        for n in adapter_nodes(gm)
        if n.op == "call_function" and n.meta["graphpeft.adapter_node"]["role"] == "adapter_down"
    )
    gate = next(
        n
        for n in gm.graph.nodes
        if n.meta.get("nn_module_stack")
        and n.target is torch.ops.aten.linear.default
        and list(n.meta["nn_module_stack"].values())[-1][0] == "model.layers.0.mlp.gate_proj"
    )

    assert down.args[0] is gate.args[0]


def test_training_houlsby_lowers_the_loss_and_changes_only_adapter_weights():
    base = tiny_llama(layers=1)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = graphpeft.apply(base, "houlsby", reduction_factor=4).train()
    before = {k: v.detach().clone() for k, v in model.adapter_parameters().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = batch("llama", batch_size=2, length=8, left_pad=False)
    losses = []
    for _ in range(30):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < losses[0] - 0.1
    assert all(torch.equal(v, frozen[k]) for k, v in base.state_dict().items())
    assert all(not torch.equal(p, before[k]) for k, p in model.adapter_parameters().items())


def test_bottleneck_sizes_come_from_reduction_factor_or_bottleneck_size():
    model = graphpeft.apply(tiny_llama(layers=1), "pfeiffer", reduction_factor=4)
    model.add_adapter("sized", "pfeiffer", bottleneck_size=5)
    params = model.adapter_parameters()

    assert params["model.layers.0.mlp.down_proj.adapter_down.default"].shape == (8, 32)
    assert params["model.layers.0.mlp.down_proj.adapter_up.sized"].shape == (32, 5)


def test_merging_a_bottleneck_adapter_is_refused():
    model = graphpeft.apply(tiny_llama(layers=1), "pfeiffer")

    with pytest.raises(AdapterError, match="bottleneck"):
        model.merge()


def test_bottleneck_adapter_saves_in_graphpeft_format_and_reloads(tmp_path):
    model = graphpeft.apply(tiny_llama(), "houlsby", non_linearity="gelu").eval()
    with torch.no_grad():
        for param in model.adapter_parameters().values():
            param.normal_()
        expected = model(**batch("llama")).logits
    model.save_pretrained(tmp_path)

    loaded = graphpeft.load(tiny_llama(), tmp_path)

    assert not (tmp_path / "adapter_config.json").exists()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch("llama")).logits, expected, atol=1e-6, rtol=0)
