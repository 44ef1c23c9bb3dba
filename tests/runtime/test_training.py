"""Training an adapted model: the loss falls, the base stays put, dropout follows train()/eval()."""

import torch

import graphpeft
from models import batch, tiny_llama


def test_twenty_adamw_steps_lower_the_loss_and_leave_base_weights_bit_identical():
    base = tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = graphpeft.apply(base, "lora", r=8, alpha=16).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_only_adapter_parameters_are_trainable():
    model = graphpeft.apply(tiny_llama(), "lora", r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all(n.startswith("adapters.") and ".lora_" in n for n in trainable)
    assert all(not p.requires_grad for p in model.base_model.parameters())


def test_base_weights_get_no_gradient():
    model = graphpeft.apply(tiny_llama(), "lora", r=4, init="random").train()
    inputs = batch("llama")
    model(**inputs, labels=inputs["input_ids"].clone()).loss.backward()
    assert all(p.grad is None for p in model.base_model.parameters())
    assert all(p.grad is not None for p in model.adapter_parameters().values())


def test_dropout_is_active_in_train_and_off_in_eval():
    model = graphpeft.apply(tiny_llama(), "lora", r=4, dropout=0.5, init="random")
    inputs = batch("llama")
    model.train()
    first, second = model(**inputs).logits, model(**inputs).logits
    assert not torch.equal(first, second)
    model.eval()
    first, second = model(**inputs).logits, model(**inputs).logits
    assert torch.equal(first, second)


def test_train_and_eval_graphs_share_the_same_adapter_parameters():
    model = graphpeft.apply(tiny_llama(), "lora", r=4, dropout=0.1)
    inputs = batch("llama")
    model.train()
    train_graph = model.graph(**inputs)
    model.eval()
    eval_graph = model.graph(**inputs)
    assert train_graph is not eval_graph
    name = "model.layers.0.self_attn.q_proj.lora_A.default"
    assert train_graph.get_parameter(name) is eval_graph.get_parameter(name)
    assert train_graph.get_parameter(name) is model.adapters.get_parameter(name)
