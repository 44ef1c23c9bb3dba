"""transformers' ``Trainer`` with adapter-only checkpoints.

A stock ``Trainer`` trains a :class:`GraphPeftModel` as it is (only adapter parameters require
grad). Its checkpoints, though, hold the full ``state_dict()``: ``Trainer`` calls
``save_pretrained`` only on instances of ``PreTrainedModel`` or PEFT's ``PeftModel``. This
subclass makes a checkpoint what ``save_pretrained`` writes (adapter weights, PEFT config,
manifest), and resumes by copying the saved weights into the live adapter in place.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from ..io.adapter_folder import restore_weights
from ..runtime.model import GraphPeftModel


class AdapterTrainer(Trainer):
    """``transformers.Trainer`` whose checkpoints hold only the adapters of a :class:`GraphPeftModel`."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, GraphPeftModel):
            super()._save(output_dir, state_dict)
        elif self.args.should_save:
            folder = output_dir or self.args.output_dir
            assert folder is not None  # TrainingArguments sets a default output_dir
            save_into(model, Path(folder))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if not isinstance(model, GraphPeftModel):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        for name in model.active_adapters:
            restore_weights(
                model, resume_from_checkpoint if name == "default" else f"{resume_from_checkpoint}/{name}", name
            )


def save_into(model: GraphPeftModel, folder: Path) -> None:
    """Save the adapters into ``folder`` (a checkpoint or the output folder), atomically.

    Only the adapter's files are replaced: the trainer's own files (``optimizer.pt``,
    ``trainer_state.json``, ``rng_state*.pth``) and other checkpoints in the folder stay as they are.
    """
    model.save_pretrained(str(folder), overwrite=True)
