"""``train``: fine-tune a whole module in full (PEFT's ``modules_to_save``).

The module is copied once per adapter; the graph's reads of the original
parameters are redirected to the trainable copy, so the base model's own
weights never change and ``disable_adapter()`` sees the original module.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ...rules.registry import register_method
from ...tracing.graph_utils import adapter_slot, container
from ..editor import SiteEditor
from ..quantized_base import dequantize_base
from ..sites import Site
from .base import Method

if TYPE_CHECKING:
    from ...rules.options import Option

SLOT = "modules_to_save"


class Train(Method):
    name = "train"
    site_ops = ("module",)
    wrong_op = 'the train method takes module sites: write the target as {op = "module", module = "classifier"}'
    options: ClassVar[dict[str, Option]] = {}
    mergeable = True

    def create(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        copied = copy.deepcopy(model.get_submodule(site.fqn))
        dequantize_base(copied)  # a quantized base module's copy would hold zero placeholders, not its weights
        for param in copied.parameters():
            param.requires_grad_(True)
        adapter_slot(container(store, site.fqn), SLOT, nn.ModuleDict, create=True)[adapter] = copied

    def rewrite(self, edit: SiteEditor) -> None:
        prefix = edit.site.fqn + "."
        host = container(edit.store, edit.site.fqn, create=False)
        copied = adapter_slot(host, SLOT, nn.ModuleDict)[edit.claim.adapter]
        for node in list(edit.gm.graph.nodes):
            if node.op != "get_attr" or not str(node.target).startswith(prefix):
                continue
            local = str(node.target)[len(prefix) :]
            try:
                copied.get_parameter(local)
            except AttributeError:
                continue
            edit._cursor = node
            replacement = edit.param(SLOT, local)
            node.replace_all_uses_with(replacement)

    def merge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        original = model.get_submodule(site.fqn)
        copied = adapter_slot(container(store, site.fqn, create=False), SLOT, nn.ModuleDict)[adapter]
        backup = {k: v.detach().clone() for k, v in original.state_dict().items()}
        container(store, site.fqn).__dict__.setdefault("_train_merge_backup", {})[adapter] = backup
        with torch.no_grad():
            for name, param in copied.named_parameters():
                original.get_parameter(name).copy_(param)

    def unmerge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        original = model.get_submodule(site.fqn)
        backup = container(store, site.fqn).__dict__["_train_merge_backup"].pop(adapter)
        with torch.no_grad():
            for name, value in backup.items():
                original.state_dict()[name].copy_(value)

    def state(self, site: Site, store: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
        copied = adapter_slot(container(store, site.fqn, create=False), SLOT, nn.ModuleDict)[adapter]
        return dict(copied.named_parameters())

    def load_state(self, site: Site, store: nn.Module, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        for key, param in self.state(site, store, adapter).items():
            with torch.no_grad():
                param.copy_(tensors[key])


register_method(Train())
