"""GraphPeftModel: an ``nn.Module`` that runs rewritten graphs of a base model.

It owns the adapter parameters once (under ``adapters.<base fqn>.<slot>.<adapter>``)
and keeps one rewritten graph per call signature (kwargs, train/eval, device and
the active adapters), traced lazily; every graph reads the same parameters.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .errors import AdapterError, CallError, TraceError, did_you_mean
from .match import ResolvedRule, match
from .methods import get_method
from .rewrite import Claim, annotate, materialize
from .sites import Site, graph_sites, module_sites
from .trace import clone_graph, example_inputs, fits, export_graph, forward_parameters, is_transformers_model, signature_of

BASE = "__base__"


@dataclass
class AdapterSpec:
    """One adapter: the rules that made it and the sites they claimed (site key -> (site, claim))."""

    rules: list[ResolvedRule]
    claims: dict[str, tuple[Site, Claim]]

    def methods(self) -> set[str]:
        return {claim.method for _, claim in self.claims.values()}


class GraphPeftModel(nn.Module):
    """A base model whose forward runs adapter-rewritten export graphs.

    Call it like the base model (same kwargs, same output type). Use
    :func:`graphpeft.apply` or :func:`graphpeft.load` to make one.
    """

    # transformers' Trainer passes ``num_items_in_batch`` to models that accept loss kwargs; such
    # ``**kwargs`` tensors cannot be given dynamic shapes in torch.export (torch 2.13), so the Trainer is
    # told to normalise the loss itself, as it does for any model without loss kwargs.
    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module, example_inputs: Any = None, dynamic_shapes: Any = None):
        super().__init__()
        self.base_model = model
        self.adapters = nn.Module()
        self.adapter_specs: dict[str, AdapterSpec] = {}
        self.active_adapters: list[str] = []
        self._graphs: dict[Any, fx.GraphModule] = {}  # (Signature, adapters) -> rewritten graph
        self._base_graphs: dict[Any, fx.GraphModule] = {}  # Signature -> pristine export
        self._merged: list[str] = []
        self._disabled = False
        self._transformers = is_transformers_model(model)
        self._params = forward_parameters(model)
        self._example, self._dynamic_shapes = _as_kwargs(model, self._params, example_inputs), dynamic_shapes
        if not self._transformers and self._example is None:
            raise TraceError(
                f"{type(model).__name__} is not a transformers model, so graphpeft cannot synthesize inputs for "
                "tracing; pass example_inputs=(tensor, ...) or example_inputs={'x': tensor} to graphpeft.apply"
            )
        self._grad_before = {id(p): p.requires_grad for p in model.parameters()}
        # Code that inspects ``model.forward`` to learn the inputs (transformers' Trainer keeps only the
        # dataset columns named there) must see the base model's parameters, not ``*args, **kwargs``.
        signed_forward = functools.partial(type(self).forward, self)
        signed_forward.__signature__ = inspect.signature(model.forward)
        self.__dict__["forward"] = signed_forward
        self._sites: list[Site] | None = None
        self.training = model.training
        self.checkpointing = False  # training graphs recompute each block in backward (graphpeft.checkpointing)
        self.reuse_blocks = True  # export a few repeated blocks and copy the rest (graphpeft.block_reuse)
        self.quantization: str | None = None  # "int8" / "nf4" once quantize() ran (graphpeft.quantize)

    # ------------------------------------------------------------------ attributes
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    @property
    def active_adapter(self) -> str | None:
        return self.active_adapters[0] if self.active_adapters else None

    # ------------------------------------------------------------------ adapters
    def sites(self) -> list[Site]:
        """Every site of the base model's graph (traced once on demand), plus module sites."""
        if self._sites is None:
            gm = self._base_graph()
            self._sites = [site for site, _ in graph_sites(gm)] + module_sites(self.base_model)
        return self._sites

    def add_adapter(self, adapter_name: str, rules: Any, **overrides: Any) -> None:
        """Add an adapter made by ``rules`` (every form :func:`graphpeft.apply` takes, or resolved rules).

        The first adapter becomes active; later ones wait for :meth:`set_adapter`.
        """
        check_adapter_name(adapter_name)
        if adapter_name in self.adapter_specs:
            raise AdapterError(f"adapter {adapter_name!r} already exists; delete it first or pick another name")
        if not (isinstance(rules, list) and rules and all(isinstance(r, ResolvedRule) for r in rules)):
            from .rulebook import resolve_rules

            rules = resolve_rules(self.base_model, rules, overrides)
        claims = match(rules, self.sites(), adapter_name)
        for param in self.base_model.parameters():
            param.requires_grad_(False)
        for site, claim in claims.values():
            get_method(claim.method).create(site, claim.options, self.base_model, self.adapters, adapter_name)
        self.adapter_specs[adapter_name] = AdapterSpec(list(rules), claims)
        if not self.active_adapters:
            self.active_adapters = [adapter_name]
        self._graphs.clear()

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name in names:
            self._spec(name)
        self.active_adapters = names

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and its parameters."""
        self._spec(adapter_name)
        if adapter_name in self._merged:
            raise AdapterError(f"adapter {adapter_name!r} is merged; call unmerge() before deleting it")
        self.delete_adapter_state(adapter_name)

    def delete_adapter_state(self, adapter_name: str) -> None:
        """Drop whatever exists of an adapter (also a half-created one); no error if absent."""
        for module in list(self.adapters.modules()):
            if isinstance(module, (nn.ParameterDict, nn.ModuleDict)) and adapter_name in module:
                del module[adapter_name]
        self.adapter_specs.pop(adapter_name, None)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]
        if not self.active_adapters and self.adapter_specs:
            self.active_adapters = [next(iter(self.adapter_specs))]
        self._graphs.clear()

    def save_pretrained(
        self,
        save_directory: str,
        adapter_names: Sequence[str] | None = None,
        overwrite: bool = False,
        *,
        selected_adapters: Sequence[str] | None = None,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        **unsupported: Any,
    ) -> None:
        """Write adapter weights, PEFT's config (when PEFT can express it) and graphpeft's manifest.

        ``selected_adapters``, ``is_main_process``, ``safe_serialization`` and ``state_dict`` are
        accepted as PEFT's ``save_pretrained`` takes them, so training loops written for PEFT work:
        only the main process writes; the format is always safetensors (never pickle); the weights
        are read from the adapter parameters themselves, so ``state_dict`` is not consulted.
        """
        from .checkpoint import save_pretrained

        if unsupported:
            raise CallError(
                f"save_pretrained() takes no argument {', '.join(map(repr, unsupported))}; it takes save_directory, "
                "adapter_names (or selected_adapters), overwrite, is_main_process, safe_serialization and state_dict"
            )
        if not is_main_process:
            return
        names = adapter_names if adapter_names is not None else selected_adapters
        save_pretrained(self, save_directory, list(names) if names is not None else None, overwrite)

    def load_adapter(self, directory: str, adapter_name: str, is_trainable: bool = False) -> None:
        """Add an adapter from a graphpeft or PEFT directory (this model is unchanged if it fails)."""
        from .checkpoint import load_into

        load_into(self, directory, adapter_name, is_trainable)

    def _spec(self, name: str) -> AdapterSpec:
        if name not in self.adapter_specs:
            raise AdapterError(
                f"no adapter named {name!r}{did_you_mean(name, self.adapter_specs)}; "
                f"adapters: {', '.join(self.adapter_specs) or '(none)'}"
            )
        return self.adapter_specs[name]

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model inside this block (merged adapters are unmerged meanwhile)."""
        merged = list(self._merged)
        if merged:
            self.unmerge()
        self._disabled = True
        try:
            yield
        finally:
            self._disabled = False
            if merged:
                self.merge(merged)

    # ------------------------------------------------------------------ parameters
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, counted as PEFT counts them."""
        trainable = total = 0
        for _, param in self.named_parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def adapter_parameters(self, adapter_name: str | None = None) -> dict[str, nn.Parameter]:
        """``name -> parameter`` of one adapter (all adapters when None)."""
        out = {}
        for name, param in self.adapters.named_parameters():
            parts = name.split(".")
            if adapter_name is None or adapter_name in parts:
                out[name] = param
        return out

    # ------------------------------------------------------------------ merge
    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Fold the adapters into the base weights; forward then runs the plain base graph."""
        names = list(adapter_names) if adapter_names is not None else list(self.active_adapters)
        if self.quantization:
            from .quantize import refuse_on_quantized

            refuse_on_quantized(self.base_model, "merge()", "rounding the sum into codes would lose the adapter")
        for name in names:
            spec = self._spec(name)
            if name in self._merged:
                raise AdapterError(f"adapter {name!r} is already merged; call unmerge() first")
            blocked = sorted(m for m in spec.methods() if not get_method(m).mergeable)
            if blocked:
                raise AdapterError(
                    f"adapter {name!r} uses {', '.join(blocked)}, which cannot be merged (no weight can absorb a "
                    "non-linear adapter block); run it unmerged, or merge only the other adapters"
                )
        for name in names:
            for site, claim in self._spec(name).claims.values():
                get_method(claim.method).merge(site, claim.options, self.base_model, self.adapters, name)
            self._merged.append(name)

    def unmerge(self) -> None:
        """Undo :meth:`merge` (restores the base weights up to float rounding)."""
        while self._merged:
            name = self._merged.pop()
            for site, claim in reversed(list(self._spec(name).claims.values())):
                get_method(claim.method).unmerge(site, claim.options, self.base_model, self.adapters, name)

    def quantize(self, scheme: str) -> list[str]:
        """Store the frozen base linear weights as ``"int8"`` or ``"nf4"`` codes (see :mod:`graphpeft.quantize`);
        returns the quantized weight names."""
        from .quantize import quantize_base

        if self._merged:
            raise AdapterError("unmerge() before quantizing: merged adapters would be rounded into the codes")
        done = quantize_base(self.base_model, scheme)
        self.quantization = scheme
        self._graphs.clear()
        self._base_graphs.clear()
        return done

    def _refuse_quantized(self, action: str) -> None:
        if self.quantization:
            from .quantize import refuse_on_quantized

            refuse_on_quantized(self.base_model, action, "its graphs do not decode quantized weights yet")

    def dequantize(self) -> None:
        """Give the base full-precision weights again (decoded from the codes); merging is then allowed."""
        from .quantize import dequantize_base

        dequantize_base(self.base_model)
        self.quantization = None
        self._graphs.clear()
        self._base_graphs.clear()

    @property
    def merged(self) -> bool:
        return bool(self._merged)

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapters and return the base model itself (its own forward, generate, ...)."""
        self.merge([a for a in self.active_adapters if a not in self._merged])
        return self.unload()

    def unload(self) -> nn.Module:
        """Return the base model without adapters (merged ones stay folded in), trainability restored."""
        self._refuse_quantized("unload()")
        for param in self.base_model.parameters():
            param.requires_grad_(self._grad_before.get(id(param), True))
        self._graphs.clear()
        self._base_graphs.clear()
        return self.base_model

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Run the base model's forward with the active adapters.

        ``adapter_names`` (one name per row, ``"__base__"`` for none) runs a mixed-adapter batch:
        each row with its own adapter, in one batched graph (see :mod:`graphpeft.mixed`).
        Virtual-token adapters add their tokens to the inputs first (see :mod:`graphpeft.virtual_inputs`).
        """
        kwargs = self._bind(args, kwargs)
        if adapter_names is not None:
            from .mixed import mixed_call

            self._refuse_quantized("a mixed-adapter batch")

            return mixed_call(self, kwargs, adapter_names)
        from .virtual_inputs import expand

        kwargs = expand(self, kwargs, self._graph_adapters())
        return self._graph(kwargs)(**kwargs)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        adapter_names: Sequence[str] | None = None,
        **unsupported: Any,
    ) -> torch.Tensor:
        """Greedy or sampled decoding on the adapted prefill and decode graphs, with a KV cache.

        ``None`` options take the model's ``generation_config``; ``eos_token_id=[]`` never stops early.
        Returns token ids like transformers' ``generate``: prompt + new tokens (decoder-only), or decoder ids with the start token first
        (encoder-decoder). ``adapter_names`` (one per row, ``"__base__"`` for none) generates each row with its
        own adapter in one batched computation. See :mod:`graphpeft.generation`.
        """
        from .generation import generate

        self._refuse_quantized("generate()")
        options = dict(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=generator,
        )
        return generate(self, input_ids, attention_mask, adapter_names, **options, **unsupported)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = [p for p in self._params if p not in ("self", "args", "kwargs")]
        if len(args) > len(names):
            raise CallError(f"{type(self.base_model).__name__} takes at most {len(names)} positional inputs, got {len(args)}")
        for name, value in zip(names, args):
            if name in kwargs:
                raise CallError(f"input {name!r} given both positionally and by keyword")
            kwargs[name] = value
        allowed = set(names) | _extra_kwargs(self.base_model)
        for name in kwargs:
            if name not in allowed:
                raise CallError(
                    f"{type(self.base_model).__name__} takes no input {name!r}{did_you_mean(name, allowed)}; "
                    f"it takes {', '.join(sorted(allowed))}"
                )
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if self._transformers and "use_cache" in names:
            if kwargs.get("use_cache"):
                raise CallError("use_cache=True is not supported in forward(); graphpeft's generate() manages the KV cache")
            kwargs["use_cache"] = False
        for name in ("cache", "past_key_values", "encoder_outputs"):
            if name in kwargs:
                raise CallError(f"input {name!r} is not supported by GraphPeftModel.forward(); use generate() for cached decoding")
        return kwargs

    def _graph_adapters(self) -> tuple[str, ...]:
        if self._disabled:
            return ()
        return tuple(a for a in self.active_adapters if a not in self._merged)

    def _graph(self, kwargs: dict[str, Any]) -> fx.GraphModule:
        adapters = self._graph_adapters()
        signature = self._signature(kwargs)
        if not adapters and not self.quantization:
            return self._traced(signature, kwargs)
        key = (signature, adapters)
        graph = self._graphs.get(key)
        if graph is None:
            graph = clone_graph(self._traced(signature, kwargs))
            self._rewrite(graph, adapters, signature.training)
            if self.quantization:
                from .quantize import quantize_graph

                quantize_graph(graph, self.base_model)
            if self.checkpointing and signature.training:
                from .checkpointing import checkpoint_blocks

                checkpoint_blocks(graph)
            self._graphs[key] = graph
        return graph

    def _signature(self, kwargs: dict[str, Any]) -> Any:
        """The graph key of a call: dynamic dims where the export's ranges allow, exact shapes otherwise."""
        static = not self._transformers and self._dynamic_shapes is None
        signature = signature_of(self.base_model, kwargs, self.training, static)
        if not fits(self._traced(signature, kwargs), signature, kwargs):
            signature = signature_of(self.base_model, kwargs, self.training, static=True)
        return signature

    def _traced(self, signature: Any, kwargs: dict[str, Any]) -> fx.GraphModule:
        """The unrewritten export of the base model for this signature (exported once, kept pristine)."""
        graph = self._base_graphs.get(signature)
        if graph is None:
            if self._transformers:
                example, shapes = example_inputs(self.base_model, signature)
            else:
                example, shapes = kwargs, self._dynamic_shapes
            graph = export_graph(self.base_model, (), example, shapes, signature.training, reuse_blocks=self.reuse_blocks)
            self._base_graphs[signature] = graph
        return graph

    def _canonical_kwargs(self) -> dict[str, Any]:
        if not self._transformers:
            return dict(self._example)
        device = next(self.base_model.parameters()).device
        ids = torch.zeros(2, 8, dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if getattr(self.base_model.config, "is_encoder_decoder", False):
            kwargs["decoder_input_ids"] = torch.zeros(2, 5, dtype=torch.long, device=device)
        return self._bind((), kwargs)

    def _base_graph(self) -> fx.GraphModule:
        """The unrewritten graph of the canonical call (input_ids + attention_mask)."""
        kwargs = self._canonical_kwargs()
        static = not self._transformers and self._dynamic_shapes is None
        return self._traced(signature_of(self.base_model, kwargs, self.training, static), kwargs)

    def _rewrite(self, gm: fx.GraphModule, adapters: tuple[str, ...], training: bool, skip_missing: bool = False) -> None:
        """Place ``adapters`` on ``gm``. ``skip_missing`` leaves out claimed sites that ``gm`` never
        computes (an encoder-decoder's decode step runs neither the encoder nor the cross-attention
        key/value projections); otherwise a missing site is an error."""
        located: dict[str, tuple[Site, fx.Node | None]] = {s.key: (s, n) for s, n in graph_sites(gm)}
        located.update({s.key: (s, None) for s in module_sites(self.base_model)})
        plan = []
        wanted: dict[str, list[Claim]] = {}
        for name in adapters:
            for key, (_, claim) in self._spec(name).claims.items():
                if not get_method(claim.method).virtual_tokens:  # they enter through the inputs instead
                    wanted.setdefault(key, []).append(claim)
        for key, claims in wanted.items():
            if key not in located:
                if skip_missing:
                    continue
                raise TraceError(
                    f"site {key} (claimed by rule {claims[0].rule!r}) is not in the graph traced for this call; "
                    "the model's graph changes with these inputs, so the adapter cannot be placed"
                )
            site, node = located[key]
            plan.append((site, node, claims))
        annotate(plan)
        materialize(gm, plan, self.adapters, training)

    def _apply(self, fn: Any, recurse: bool = True) -> GraphPeftModel:
        # Graphs bake devices and dtypes into some ops (arange(..., device=cpu)); retrace after .to().
        self._graphs.clear()
        self._base_graphs.clear()
        return super()._apply(fn, recurse)

    def export(self, path: str, merged: bool = False, **kwargs: Any) -> None:
        """Save the adapted model (eval mode) as a ``torch.export`` program that runs without graphpeft.

        ``merged=True`` folds the active adapters into the weights for the export (the model is
        restored afterwards). ``kwargs`` name the inputs the program takes (default ``input_ids``
        and ``attention_mask``). Load it with ``torch.export.load(path).module()``.
        """
        from .deploy import export_program

        export_program(self, path, merged, kwargs)

    def explain(self, adapter_names: Sequence[str] | None = None, show: bool = False) -> Any:
        """An :class:`~graphpeft.explain.ExplainReport` of the adapters (sites, rules, shapes, counts);
        ``show=True`` also prints it."""
        from .explain import explain_model

        report = explain_model(self, adapter_names)
        if show:
            report.print()
        return report

    def graph(self, **kwargs: Any) -> fx.GraphModule:
        """The rewritten GraphModule that a call with these kwargs runs (for inspection)."""
        return self._graph(self._bind((), kwargs))


def check_adapter_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise AdapterError(f"adapter names must be non-empty strings, got {name!r}")
    if name == BASE or "/" in name or "\\" in name or "." in name or name.startswith("-") or not name.isprintable():
        raise AdapterError(
            f"adapter name {name!r} is not allowed: names are used as parameter names and folder names, so they "
            f"may not contain '/', '\\\\' or '.', start with '-', or be {BASE!r}; use letters, digits, '_' and '-'"
        )


def _extra_kwargs(model: nn.Module) -> set[str]:
    """Keyword inputs a transformers model takes through ``**kwargs``."""
    if not is_transformers_model(model):
        return set()
    extra = {"return_dict", "output_attentions", "output_hidden_states"}
    try:
        from transformers.utils.generic import TransformersKwargs

        extra |= set(TransformersKwargs.__annotations__)
    except ImportError:
        pass
    return extra


def _as_kwargs(model: nn.Module, params: list[str], example: Any) -> dict[str, Any] | None:
    if example is None:
        return None
    if isinstance(example, dict):
        return dict(example)
    if isinstance(example, torch.Tensor):
        example = (example,)
    names = [p for p in params if p not in ("self", "args", "kwargs")]
    if len(example) > len(names):
        raise CallError(f"example_inputs has {len(example)} entries but {type(model).__name__}.forward takes {len(names)}")
    return dict(zip(names, example))
