"""What LoRA on module sites (:mod:`.lora`) and on parameter sites (:mod:`.lora_parameter_sites`) share: the scale,
the slot names, where the parameters are registered, their initialisation, and the casts that run the update in
the adapter's dtype."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...tracing.graph_utils import adapter_slot, container
from ..editor import SiteEditor
from ..sites import Site

aten = torch.ops.aten


def scale_of(options: dict[str, Any]) -> float:
    """alpha / r, or alpha / sqrt(r) with rsLoRA."""
    r = options["r"]
    return options["alpha"] / (math.sqrt(r) if options["rslora"] else r)


def slot_names(site: Site) -> tuple[str, str]:
    return ("lora_embedding_A", "lora_embedding_B") if site.op == "embedding" else ("lora_A", "lora_B")


def adapter_dtype_of(edit: SiteEditor, adapter: str | None = None) -> torch.dtype:
    slot_a, _ = slot_names(edit.site)
    return edit.store.get_parameter(f"{edit.site.host}.{slot_a}.{adapter or edit.claim.adapter}").dtype


def to_adapter_dtype(edit: SiteEditor, x: Any, adapter: str | None = None) -> Any:
    """``x`` cast to the adapter weights' dtype (fp32 adapters on a bf16/fp16 base), as PEFT casts
    the LoRA input; unchanged when the dtypes already agree."""
    dtype = adapter_dtype_of(edit, adapter)
    value = x.meta.get("val") if hasattr(x, "meta") else None
    if value is None or value.dtype == dtype:
        return x
    return edit.call(aten.to.dtype, x, dtype, role="lora_cast_in")


def to_site_dtype(edit: SiteEditor, out: Any, adapter: str | None = None) -> Any:
    """The adapted result cast back to the site's own output dtype (PEFT adds base and update in the
    adapter's precision, then rounds once to the base dtype)."""
    value = edit.site_node.meta.get("val")
    if value is None or value.dtype == adapter_dtype_of(edit, adapter):
        return out
    return edit.call(aten.to.dtype, out, value.dtype, role="lora_cast_out")


def initialise(site: Site, a: torch.Tensor, b: torch.Tensor, r: int, init: str) -> None:
    if site.op == "embedding":
        if init == "random":
            nn.init.normal_(a)
        else:
            nn.init.zeros_(a)
        nn.init.normal_(b)
        return
    if init == "gaussian":
        nn.init.normal_(a, std=1 / r)
    else:
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    if init == "random":
        nn.init.kaiming_uniform_(b, a=math.sqrt(5))
    else:
        nn.init.zeros_(b)


def register_slots(store: nn.Module, site: Site, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
    """Put ``tensors`` into the adapter tree as ``<site.host>.<slot>.<adapter>``."""
    host = container(store, site.host)
    for name, tensor in tensors.items():
        adapter_slot(host, name, nn.ParameterDict, create=True)[adapter] = nn.Parameter(tensor)
