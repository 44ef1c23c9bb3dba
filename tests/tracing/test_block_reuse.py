"""Block reuse: a deep model exported with 3 of its identical blocks and the rest stamped in is, to graphpeft,
the full export; anything the stamp cannot prove exact is exported whole."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    OPTConfig,
    OPTForCausalLM,
)
from transformers.models.llama.modeling_llama import LlamaMLP

import graphpeft
from graphpeft import GraphPeftModel
from graphpeft.rewrite.sites import graph_sites
from graphpeft.tracing.block_reuse import ENV_SWITCH, REUSED, find_block_list
from graphpeft.tracing.export import export_graph
from models import VOCAB, batch, tiny_llama, tiny_qwen3_moe

LAYERS = 5


@pytest.fixture(scope="module")
def deep_llama():
    return tiny_llama(LAYERS)


@pytest.fixture(scope="module")
def runs(deep_llama):
    """(training, reuse) -> (the base graph of a call with labels, its output), no adapters;
    "layers" -> the layer list as it was before tracing."""
    inputs = {**batch("llama"), "labels": batch("llama")["input_ids"]}
    out = {"layers": deep_llama.model.layers}
    for training in (False, True):
        for reuse in (True, False):
            model = GraphPeftModel(deep_llama)
            model.reuse_blocks = reuse
            model.train(training)
            result = model(**inputs)
            (graph,) = model._base_graphs.values()
            out[training, reuse] = graph, result
    return out


def _ops(graph):
    return [(n.op, str(n.target), list((n.meta.get("nn_module_stack") or {}).values())) for n in graph.graph.nodes]


def test_a_deep_llama_is_exported_with_three_blocks_and_stamped_to_all_five(runs):
    graph, _ = runs[False, True]
    assert graph.meta[REUSED] == ("model.layers", 3, LAYERS)
    assert REUSED not in runs[False, False][0].meta


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_the_stamped_graph_has_the_full_exports_ops_module_paths_and_order(runs, training):
    assert _ops(runs[training, True][0]) == _ops(runs[training, False][0])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_logits_and_loss_equal_the_full_export_and_the_eager_model(runs, deep_llama, training):
    _, reused = runs[training, True]
    _, full = runs[training, False]
    eager = deep_llama.train(training)(**batch("llama"), labels=batch("llama")["input_ids"])
    deep_llama.eval()
    assert torch.equal(reused.logits, full.logits)
    assert torch.equal(reused.loss, full.loss)
    assert (reused.logits - eager.logits).abs().max() <= 1e-5


def test_sites_are_the_full_exports(runs):
    reused = [site for site, _ in graph_sites(runs[False, True][0])]
    full = [site for site, _ in graph_sites(runs[False, False][0])]
    assert reused == full
    assert any(site.fqn == f"model.layers.{LAYERS - 1}.self_attn.q_proj" for site in reused)


def test_every_stamped_layer_reads_the_models_own_tensors(runs, deep_llama):
    graph, _ = runs[False, True]
    for name, param in deep_llama.named_parameters():
        assert graph.get_parameter(name) is param
    assert graph.state_dict().keys() == runs[False, False][0].state_dict().keys()


def test_lora_on_a_deep_llama_matches_peft_in_logits_loss_and_every_layers_gradients(deep_llama, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    reference = get_peft_model(copy.deepcopy(deep_llama), config)
    reference.save_pretrained(tmp_path)
    model = graphpeft.load(copy.deepcopy(deep_llama), tmp_path, is_trainable=True)
    inputs = {**batch("llama"), "labels": batch("llama")["input_ids"]}
    ours, theirs = model.train()(**inputs), reference.train()(**inputs)  # no dropout: train logits are eval logits
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    assert (ours.loss - theirs.loss).abs() <= 1e-5
    ours.loss.backward()
    theirs.loss.backward()
    assert next(iter(model._base_graphs.values())).meta[REUSED] == ("model.layers", 3, LAYERS)
    peft_params = dict(reference.named_parameters())
    for layer in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            for slot in ("lora_A", "lora_B"):
                grad = model.adapters.get_parameter(f"model.layers.{layer}.self_attn.{proj}.{slot}.default").grad
                expected = peft_params[
                    f"base_model.model.model.layers.{layer}.self_attn.{proj}.{slot}.default.weight"
                ].grad
                assert grad is not None
                assert grad.abs().sum() > 0
                assert (grad - expected).abs().max() <= 1e-5


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=128)).eval()


def _bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=3,
        pad_token_id=0,
    )
    return BertForSequenceClassification(config).eval()


def _opt():
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=128,
        word_embed_proj_dim=32,
        pad_token_id=0,
    )
    return OPTForCausalLM(config).eval()


@pytest.mark.parametrize(
    ("kind", "build", "blocks"),
    [
        ("gpt2", _gpt2, "transformer.h"),
        ("bert", _bert, "bert.encoder.layer"),
        ("opt", _opt, "model.decoder.layers"),
    ],
)
def test_other_architectures_reuse_their_blocks_with_the_eager_models_logits(kind, build, blocks):
    base = build()
    model = GraphPeftModel(base)
    with torch.no_grad():
        logits = model(**batch(kind)).logits
        expected = base(**batch(kind)).logits
    assert model._base_graph().meta[REUSED] == (blocks, 3, LAYERS)
    assert (logits - expected).abs().max() <= 1e-5


def test_a_moe_whose_first_block_computes_sizes_the_others_reuse_is_stamped_like_its_full_export():
    base = tiny_qwen3_moe(layers=LAYERS)
    graphs, logits = [], []
    for reuse in (True, False):
        model = GraphPeftModel(base)
        model.reuse_blocks = reuse
        with torch.no_grad():
            logits.append(model(**batch("llama")).logits)
        graphs.append(model._base_graph())
    assert graphs[0].meta[REUSED] == ("model.layers", 3, LAYERS)
    assert _ops(graphs[0]) == _ops(graphs[1])
    assert [s for s, _ in graph_sites(graphs[0])] == [s for s, _ in graph_sites(graphs[1])]
    assert torch.equal(logits[0], logits[1])


def test_layers_that_differ_are_exported_whole():
    base = tiny_llama(LAYERS)
    wider = copy.copy(base.config)
    wider.intermediate_size = 48
    base.model.layers[3].mlp = LlamaMLP(wider)
    assert find_block_list(base) is None
    model = graphpeft.apply(base, "lora", r=4)
    assert REUSED not in model._base_graph().meta
    shapes = {site.fqn: site.weight_shape for site in model.sites() if site.op == "linear"}
    assert shapes["model.layers.3.mlp.gate_proj"] == (48, 32)
    assert shapes["model.layers.4.mlp.gate_proj"] == (64, 32)
    with torch.no_grad():
        assert (model(**batch("llama")).logits - base(**batch("llama")).logits).abs().max() <= 1e-5


def test_tracing_leaves_the_layer_list_and_config_as_they_were(deep_llama, runs):
    assert deep_llama.model.layers is runs["layers"]
    assert len(runs["layers"]) == LAYERS
    assert deep_llama.config.num_hidden_layers == LAYERS


# Stacks of identical blocks written by hand: what the stamp must refuse, and what it may copy.
class Block(nn.Module):
    def __init__(self, index: int, scale_by_index: bool):
        super().__init__()
        self.index, self.scale_by_index = index, scale_by_index
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        y = torch.relu(self.proj(x))
        return y * (self.index + 1) if self.scale_by_index else x + y


class Stack(nn.Module):
    def __init__(self, scale_by_index=False, every_output=False, needs_all_blocks=False):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(i, scale_by_index) for i in range(LAYERS))
        self.every_output, self.needs_all_blocks = every_output, needs_all_blocks

    def forward(self, x):
        if self.needs_all_blocks:
            assert len(self.blocks) == LAYERS
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return tuple(outputs) if self.every_output else x


@pytest.mark.parametrize(
    ("flags", "reused"),
    [
        ({}, True),
        ({"scale_by_index": True}, False),  # the blocks compute with their index: block 2 is not block 1
        ({"every_output": True}, False),  # per-block outputs leave the blocks
        ({"needs_all_blocks": True}, False),  # the cut model does not export
    ],
)
def test_a_stack_is_stamped_only_when_the_copy_is_exact(flags, reused):
    stack = Stack(**flags)
    x = torch.randn(2, 8)
    graph = export_graph(stack, (x,), {}, None, training=False)
    assert (REUSED in graph.meta) is reused
    assert len(stack.blocks) == LAYERS
    with torch.no_grad():
        got, expected = graph(x), stack(x)
    for a, b in zip(*(t if isinstance(t, tuple) else (t,) for t in (got, expected)), strict=True):
        assert torch.equal(a, b)


def test_the_environment_switch_and_the_argument_turn_reuse_off(monkeypatch):
    x = torch.randn(2, 8)
    assert REUSED not in export_graph(Stack(), (x,), {}, None, training=False, reuse_blocks=False).meta
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert REUSED not in export_graph(Stack(), (x,), {}, None, training=False).meta


def test_reuse_blocks_must_be_a_bool(deep_llama):
    with pytest.raises(graphpeft.errors.CallError, match="reuse_blocks must be True or False"):
        graphpeft.apply(deep_llama, "lora", reuse_blocks="no")
