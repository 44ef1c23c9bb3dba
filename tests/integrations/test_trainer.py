"""transformers' Trainer trains a GraphPeftModel; graphpeft's AdapterTrainer checkpoints only the adapter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments

import graphpeft
from folder_state import tree
from graphpeft.integrations.trainer import AdapterTrainer
from graphpeft.io.adapter_folder import adapter_tensors, read_tensors
from models import tiny_llama

ROWS, LENGTH = 8, 8


def dataset() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(3, 96, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]


def arguments(output_dir, max_steps: int, save_steps: int | None = None) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=5e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
    )


def fresh_model() -> graphpeft.GraphPeftModel:
    torch.manual_seed(0)
    return graphpeft.apply(tiny_llama(layers=1), "lora", r=4)


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_stock_trainer_trains_graphpeft_model_and_loss_falls(tmp_path):
    model = fresh_model()
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=6), train_dataset=dataset())
    trainer.train()
    history = losses(trainer)
    assert len(history) == 6
    assert history[-1] < history[0] - 0.1
    assert all(not p.requires_grad for p in model.base_model.parameters())


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A 4-step AdapterTrainer run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run")
    model = fresh_model()
    trainer = AdapterTrainer(model=model, args=arguments(out, max_steps=4, save_steps=2), train_dataset=dataset())
    trainer.train()
    return model, out


def test_adapter_trainer_checkpoint_holds_only_the_adapter(checkpointed):
    model, out = checkpointed
    files = set(os.listdir(out / "checkpoint-4"))
    assert {"adapter_model.safetensors", "adapter_config.json", "graphpeft.json"} <= files
    assert "model.safetensors" not in files
    adapter_bytes = os.path.getsize(out / "checkpoint-4" / "adapter_model.safetensors")
    adapter_numel = sum(p.numel() for p in model.adapter_parameters().values())
    assert adapter_bytes < adapter_numel * 4 + 4096


def test_adapter_trainer_checkpoint_loads_as_the_trained_adapter(checkpointed):
    model, out = checkpointed
    loaded = graphpeft.load(tiny_llama(layers=1), str(out / "checkpoint-4"))
    trained = model.adapter_parameters()
    assert trained.keys() == loaded.adapter_parameters().keys()
    for name, param in loaded.adapter_parameters().items():
        assert torch.equal(param, trained[name]), name


def test_adapter_trainer_resumes_from_checkpoint_to_the_same_weights(checkpointed, tmp_path):
    model, out = checkpointed
    resumed = fresh_model()
    trainer = AdapterTrainer(
        model=resumed, args=arguments(tmp_path, max_steps=4, save_steps=2), train_dataset=dataset()
    )
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    for name, param in model.adapter_parameters().items():
        assert torch.allclose(resumed.adapter_parameters()[name], param, atol=1e-6), name


def test_adapter_trainer_saves_again_into_a_checkpoint_keeping_the_trainer_files(checkpointed):
    model, out = checkpointed
    folder = out / "checkpoint-4"
    before = set(os.listdir(folder))
    AdapterTrainer(model=model, args=arguments(out, max_steps=4))._save(str(folder))
    assert set(os.listdir(folder)) == before
    assert read_tensors(folder / "adapter_model.safetensors").keys() == adapter_tensors(model, "default").keys()


def test_adapter_trainer_final_save_into_the_output_dir_keeps_its_checkpoints(checkpointed, tmp_path):
    model, out = checkpointed
    run = Path(shutil.copytree(out, tmp_path / "run"))
    before = {name: tree(run / name) for name in ("checkpoint-2", "checkpoint-4")}
    AdapterTrainer(model=model, args=arguments(run, max_steps=4)).save_model(str(run))
    assert {name: tree(run / name) for name in before} == before
    assert read_tensors(run / "adapter_model.safetensors").keys() == adapter_tensors(model, "default").keys()
