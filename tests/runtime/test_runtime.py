"""GraphPeftModel behaves like the module it wraps."""

import copy

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

import graphpeft
from graphpeft.rewrite.claims import ADAPTER_NODE
from graphpeft.rules.pattern import Pattern
from graphpeft.rules.rule import Rule
from models import batch, tiny_llama


def test_output_type_equals_the_base_models():
    base = tiny_llama()
    model = graphpeft.apply(copy.deepcopy(base), "lora")
    inputs = batch("llama")
    assert type(model(**inputs)) is type(base(**inputs))


def test_new_nodes_are_named_after_their_site_and_keep_nn_module_stack():
    model = graphpeft.apply(tiny_llama(), "lora", r=2).eval()
    graph = model.graph(**batch("llama"))
    added = [n for n in graph.graph.nodes if ADAPTER_NODE in n.meta]
    names = {n.name for n in added}
    assert "model_layers_0_self_attn_q_proj_lora_down" in names
    assert "model_layers_1_self_attn_v_proj_lora_add" in names
    for node in added:
        stack = list(node.meta["nn_module_stack"].values())
        assert stack[-1][0] == node.meta[ADAPTER_NODE]["site"].split(":")[0]
    graph.graph.lint()


def test_to_moves_adapters_and_retraces():
    model = graphpeft.apply(tiny_llama(), "lora", r=2, init="random").eval()
    inputs = batch("llama")
    expected = model(**inputs).logits.double()
    model.to(torch.float64)
    assert model.adapters.get_parameter("model.layers.0.self_attn.q_proj.lora_A.default").dtype == torch.float64
    out = model(**inputs).logits
    assert out.dtype == torch.float64
    assert (out - expected).abs().max() <= 1e-5


def test_attributes_fall_through_to_the_base_model():
    base = tiny_llama()
    model = graphpeft.apply(base, "lora")
    assert model.config is base.config
    assert model.get_base_model() is base


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_any_module_with_example_inputs_matches_peft():
    torch.manual_seed(0)
    base = TwoLayer()
    reference = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=2, target_modules=["up", "down"], init_lora_weights=False)
    )
    rule = Rule("both", "lora", (Pattern(op="linear", module="up"), Pattern(op="linear", module="down")), {"r": 2})
    model = graphpeft.apply(copy.deepcopy(base), rule, example_inputs=(torch.randn(3, 8),))
    for name, param in model.adapter_parameters().items():
        peft_name = "base_model.model." + name.replace(".default", ".default.weight")
        with torch.no_grad():
            param.copy_(reference.get_parameter(peft_name))
    x = torch.randn(5, 8)
    assert (model(x) - reference(x)).abs().max() <= 1e-6


def test_embedding_lora_matches_peft(tmp_path):
    base = tiny_llama()
    reference = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    ).eval()
    reference.save_pretrained(tmp_path)
    model = graphpeft.load(copy.deepcopy(base), tmp_path)
    assert "model.embed_tokens:embedding" in model.adapter_specs["default"].claims
    inputs = batch("llama")
    assert (model(**inputs).logits - reference(**inputs).logits).abs().max() <= 1e-5


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, stride=2)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_conv2d_lora_matches_peft(tmp_path):
    torch.manual_seed(0)
    base = ConvNet()
    reference = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=2, target_modules=["conv"], init_lora_weights=False)
    ).eval()
    reference.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 8, 8)
    model = graphpeft.load(copy.deepcopy(base), tmp_path, example_inputs=(x,))
    assert (model(x) - reference(x)).abs().max() <= 1e-5
