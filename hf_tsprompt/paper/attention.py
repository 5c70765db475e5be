"""Attention edits: one registered attention function that ACT and DPC both act through.

A registered attention function (``transformers.AttentionInterface`` plus a mask function in
``AttentionMaskInterface``, both under :data:`ATTN_IMPLEMENTATION`). The context manager
:func:`attention_hooks` switches a model's attention implementation to it and restores the
previous one exactly; no model file is forked, so
:func:`hf_tsprompt.evaluation.evaluate_model` runs unchanged inside it. Layers without edits
are delegated to the model's own implementation (eager or sdpa); edited layers use eager math
(softmax in float32, exactly as transformers' ``eager_attention_forward``), and the
calibration itself runs in float32.

This module owns *how* attention probabilities are edited inside one forward call, whatever
asks for it: key masking (DPC's corruption, :mod:`hf_tsprompt.paper.dpc`), ACT's sink rule (scale
each sink's attention by ``beta`` and hand the freed mass to the other keys, with column
statistics that carry across the calls of one generation), gradient probes on the
probabilities and capture of them (:class:`AttentionRecord`). *Which* heads and positions to
edit, and when, is the methods' business: ACT's configuration and head search are
:mod:`hf_tsprompt.paper.calibration` (its :class:`~hf_tsprompt.paper.calibration.ACTConfig` is what
``act=`` takes, read through :class:`SinkCalibration`), DPC's triggers are
:mod:`hf_tsprompt.paper.dpc`. Both import this module; it imports neither.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..prompts import unwrap_model

__all__ = [
    "ATTN_IMPLEMENTATION",
    "AttentionRecord",
    "SinkCalibration",
    "attention_hooks",
    "base_model",
    "layer_head_counts",
    "num_virtual_tokens",
]

ATTN_IMPLEMENTATION = "hf_tsprompt"
"""Name of the attention function registered in ``transformers.AttentionInterface``."""


class SinkCalibration(Protocol):
    """What the sink rule reads from ``attention_hooks(act=...)``; the one implementation is
    :class:`hf_tsprompt.paper.calibration.ACTConfig` (see it for each field's meaning)."""

    heads: Mapping[int, Sequence[int]]
    scale: float
    threshold: float
    threshold_mode: str
    protect_prompt: bool
    num_virtual_tokens: int


# --------------------------------------------------------------------------- model helpers


def base_model(model: nn.Module) -> nn.Module:
    """The transformers ``PreTrainedModel`` inside a (possibly wrapped) peft model."""
    model = unwrap_model(model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _peft_prompt_config(model: nn.Module) -> Any | None:
    config = getattr(unwrap_model(model), "active_peft_config", None)
    return config if getattr(config, "is_prompt_learning", False) else None


def num_virtual_tokens(model: nn.Module) -> int:
    """n: the first n key positions of every attention call are the soft prompt (prompt
    tuning and P-tuning prepend n embeddings; prefix tuning prepends n cached keys)."""
    config = _peft_prompt_config(model)
    return int(config.num_virtual_tokens) if config is not None else 0


def _text_config(base: nn.Module) -> Any:
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_head_counts(base: nn.Module) -> tuple[int, int]:
    """(decoder layers, attention heads per layer) of a transformers model."""
    config = _text_config(base)
    return int(config.num_hidden_layers), int(config.num_attention_heads)


# --------------------------------------------------------------------------- the attention function


@dataclass
class _Running:
    """Column statistics of one layer across the forward calls of one generation."""

    received: torch.Tensor  # (B, h, K) summed attention each key received (calibrated heads)
    count: torch.Tensor  # (B, K) number of real queries that could attend each key

    @property
    def length(self) -> int:
        return int(self.count.shape[-1])


@dataclass
class AttentionRecord:
    """What :func:`attention_hooks` recorded, per layer index, one entry per forward call.

    ``probs``: the attention probabilities actually used (float32, detached), for every
    layer when ``capture=True`` and always for ``probe_layers``. ``probes``: the zero
    tensors added to the probabilities of ``probe_layers`` (``requires_grad``;
    ``torch.autograd.grad(loss, probe)`` is dL/dA).
    ``act_deltas``: ``A' - A`` of calibrating *every* head of ``act_delta_layers`` (not
    applied; used to rank heads). ``sinks``: the sink masks (B, h, K) per calibrated call.
    """

    probs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    probes: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    act_deltas: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    sinks: dict[int, list[torch.Tensor]] = field(default_factory=dict)


class _Hooks:
    """The edits active on one model and the state they keep between forward calls."""

    def __init__(
        self,
        *,
        original: str,
        act: SinkCalibration | None,
        masked_keys: Sequence[int],
        probe_layers: Sequence[int],
        act_delta_layers: Sequence[int],
        capture: bool,
        record_sinks: bool,
        num_virtual_tokens: int,
    ) -> None:
        self.original = original
        self.act = act
        self.act_heads = dict(act.heads) if act is not None else {}
        self.masked_keys = sorted({int(k) for k in masked_keys})
        self.probe_layers = frozenset(int(x) for x in probe_layers)
        self.act_delta_layers = frozenset(int(x) for x in act_delta_layers)
        self.capture = capture
        self.record_sinks = record_sinks
        self.n_prompt = num_virtual_tokens
        self.record = AttentionRecord()
        self.running: dict[int, _Running] = {}

    def edits(self, layer: int | None) -> bool:
        if self.capture or self.masked_keys:
            return True
        return (
            layer in self.act_heads or layer in self.probe_layers or layer in self.act_delta_layers
        )

    # -- the parts of one call

    def allowed(
        self, mask: torch.Tensor | None, batch: int, q: int, k: int, device
    ) -> torch.Tensor:
        """(B, Q, K) bool: which keys each query may attend to (causal + padding + edits)."""
        if mask is None:
            past = k - q
            rows = torch.arange(q, device=device)[:, None] + past
            allowed = (torch.arange(k, device=device)[None, :] <= rows)[None].expand(batch, q, k)
        elif mask.dtype == torch.bool:
            allowed = mask[:, 0].expand(batch, q, k)
        else:  # an additive float mask (a custom 4D mask passed by the caller)
            allowed = (mask[:, 0] > torch.finfo(mask.dtype).min / 2).expand(batch, q, k)
        if self.masked_keys:
            allowed = allowed.clone()
            columns = [j for j in self.masked_keys if j < k]
            allowed[:, :, columns] = False
        return allowed

    def calibrate(
        self,
        layer: int,
        probs: torch.Tensor,
        heads: Sequence[int],
        allowed: torch.Tensor,
        *,
        update: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ACT on ``heads`` of one layer: ``(calibrated probs of those heads, sink mask)``.

        ``probs`` is (B, H, Q, K) float32. ``update`` advances the running column statistics
        (only the call that really applies the calibration does)."""
        assert self.act is not None
        batch, _, q, k = probs.shape
        past = k - q
        heads_index = torch.tensor(list(heads), device=probs.device)
        sel = probs.index_select(1, heads_index)  # (B, h, Q, K)
        valid_k = allowed.any(dim=1)  # a key nobody may attend is padding (or removed)
        valid_q = valid_k[:, past:]  # query i is the key at position past + i
        received = (sel * valid_q[:, None, :, None]).sum(dim=2)  # (B, h, K)
        count = (allowed & valid_q[:, :, None]).sum(dim=1).to(probs.dtype)  # (B, K)
        state = self.running.get(layer)
        if (
            state is not None
            and state.length == past
            and state.received.shape[:2] == received.shape[:2]
        ):
            # Continuing a generation: the keys before this call were judged on earlier queries.
            received = received + nn.functional.pad(state.received, (0, k - past))
            count = count + nn.functional.pad(state.count, (0, k - past))
        if update:
            self.running[layer] = _Running(received.detach(), count.detach())
        mean = received / count.clamp(min=1.0)[:, None, :]  # a_t: mean attention received
        if self.act.threshold_mode == "absolute":
            threshold = torch.full((batch, 1, 1), float(self.act.threshold), device=probs.device)
        else:  # the paper's alpha / N, N = attendable keys of the row
            n_keys = valid_k.sum(dim=-1).clamp(min=1).to(probs.dtype)
            threshold = (float(self.act.threshold) / n_keys)[:, None, None]
        protected = torch.zeros_like(valid_k)
        first = valid_k.to(torch.int8).argmax(dim=-1)  # the initial token keeps its sink
        protected[torch.arange(batch, device=probs.device), first] = True
        if self.act.protect_prompt and self.n_prompt:
            protected[:, : self.n_prompt] = True
        sink = (mean > threshold) & valid_k[:, None, :] & ~protected[:, None, :]  # (B, h, K)

        beta = float(self.act.scale)
        is_sink = sink[:, :, None, :]  # same sinks for every query row
        sink_mass = (sel * is_sink).sum(dim=-1, keepdim=True)
        rest = sel * ~is_sink
        rest_mass = rest.sum(dim=-1, keepdim=True)
        share = rest / torch.where(rest_mass > 0, rest_mass, torch.ones_like(rest_mass))
        calibrated = torch.where(is_sink, sel * beta, sel + (1.0 - beta) * sink_mass * share)
        # A row whose whole mass sits on sinks has nowhere to send it: leave it as it was.
        calibrated = torch.where(rest_mass > 0, calibrated, sel)
        return calibrated, sink

    def attend(
        self,
        module: nn.Module,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        dropout: float,
        softcap: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.models.llama.modeling_llama import repeat_kv

        groups = int(getattr(module, "num_key_value_groups", 1))
        key_states = repeat_kv(key, groups)
        value_states = repeat_kv(value, groups)
        batch, _, q, _ = query.shape
        k = key_states.shape[2]
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        # Same ops, in the same dtype, as transformers' eager_attention_forward, so heads that
        # are not edited get bit-identical probabilities.
        scores = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = self.allowed(attention_mask, batch, q, k, query.device)
        additive = torch.where(
            allowed[:, None],
            torch.zeros((), dtype=scores.dtype, device=scores.device),
            torch.finfo(scores.dtype).min,
        )
        probs = nn.functional.softmax(scores + additive, dim=-1, dtype=torch.float32)
        if self.masked_keys:
            # A query left with no key (a removed virtual token whose predecessors are all
            # removed too) would get eager's uniform row over masked, even future, keys;
            # give it zero attention instead. Its own output reaches nobody: it is masked.
            empty = ~allowed.any(dim=-1)
            probs = probs.masked_fill(empty[:, None, :, None], 0.0)

        heads = self.act_heads.get(layer)
        if heads:
            calibrated, sink = self.calibrate(layer, probs, heads, allowed, update=True)
            index = torch.tensor(heads, device=probs.device)
            probs = probs.index_copy(1, index, calibrated)
            if self.record_sinks:
                self.record.sinks.setdefault(layer, []).append(sink.detach())
        if layer in self.act_delta_layers:
            every = list(range(probs.shape[1]))
            calibrated, _ = self.calibrate(layer, probs.detach(), every, allowed, update=False)
            self.record.act_deltas.setdefault(layer, []).append(calibrated - probs.detach())
        if layer in self.probe_layers:
            probe = torch.zeros_like(probs, requires_grad=True)
            probs = probs + probe  # dL/d(probe) = dL/dA, with every downstream path kept
            self.record.probes.setdefault(layer, []).append(probe)
        if self.capture or layer in self.probe_layers:
            self.record.probs.setdefault(layer, []).append(probs.detach().clone())
        weights = probs.to(value_states.dtype)
        if dropout and module.training:
            weights = nn.functional.dropout(weights, p=dropout, training=True)
        output = torch.matmul(weights, value_states).transpose(1, 2).contiguous()
        return output, weights


_ACTIVE: dict[int, _Hooks] = {}


def _delegate(
    original: str,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An unedited layer: the model's own implementation (its modeling file's eager function,
    or sdpa for the rest: our boolean mask is sdpa's format, and flash/flex kernels want
    other mask formats)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama import modeling_llama

    if original == "eager" or kwargs.get("softcap") is not None:  # sdpa has no softcap
        modeling = sys.modules.get(type(module).__module__)
        eager_attention_forward = getattr(
            modeling, "eager_attention_forward", modeling_llama.eager_attention_forward
        )
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = torch.where(
                attention_mask,
                torch.zeros((), dtype=query.dtype, device=query.device),
                torch.finfo(query.dtype).min,
            )
        return eager_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The function registered as :data:`ATTN_IMPLEMENTATION` (transformers' signature)."""
    hooks = _ACTIVE.get(id(getattr(module, "config", None)))
    layer = getattr(module, "layer_idx", None)
    if kwargs.get("s_aux") is not None:
        raise ConfigError("attention with learned sink logits (s_aux) is not supported by ACT/DPC")
    if hooks is None or layer is None or not hooks.edits(int(layer)):
        original = hooks.original if hooks is not None else "sdpa"
        return _delegate(
            original, module, query, key, value, attention_mask, scaling, dropout, **kwargs
        )
    return hooks.attend(
        module,
        int(layer),
        query,
        key,
        value,
        attention_mask,
        scaling,
        dropout,
        kwargs.get("softcap"),
    )


def _boolean_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """sdpa's (B, 1, Q, K) boolean mask, always materialised: ACT must see the padding."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _boolean_mask)


@contextlib.contextmanager
def attention_hooks(
    model: nn.Module,
    *,
    act: SinkCalibration | None = None,
    masked_keys: Sequence[int] = (),
    probe_layers: Sequence[int] = (),
    act_delta_layers: Sequence[int] = (),
    capture: bool = False,
    record_sinks: bool = False,
) -> Iterator[AttentionRecord]:
    """Route ``model``'s attention through :data:`ATTN_IMPLEMENTATION` for the block.

    ``act`` calibrates its heads (ACT); ``masked_keys`` are key positions no query may attend
    to (DPC's corruption); ``probe_layers`` / ``act_delta_layers`` / ``capture`` /
    ``record_sinks`` fill the yielded :class:`AttentionRecord`. The model's attention
    implementation (every sub-config's) is restored exactly on exit, also after an error.
    One block per model at a time.

    Raises:
        ConfigError: the model does not dispatch attention through ``AttentionInterface``,
            ``act`` does not fit it, or the model is already inside such a block.
    """
    from transformers import PreTrainedModel

    base = base_model(model)
    if not isinstance(base, PreTrainedModel):
        raise ConfigError(
            f"ACT/DPC need a transformers PreTrainedModel (or a peft model of one), "
            f"got {type(base).__name__}"
        )
    if id(base.config) in _ACTIVE:
        raise ConfigError(
            "this model is already inside act_attention / attention_hooks; leave that block "
            "first (one set of attention edits per model at a time)"
        )
    if not base._can_set_attn_implementation():
        raise ConfigError(
            f"{type(base).__name__} does not route attention through transformers' "
            "AttentionInterface, so ACT/DPC cannot hook it (Llama, Mistral, Qwen2, Gemma, "
            "SmolLM2 and most current architectures do)"
        )
    n_prompt = num_virtual_tokens(model)
    if act is not None:
        _check_act_fits(act, base, n_prompt)
    _register()
    configs = {id(base.config): base.config}
    for sub in base.modules():
        if isinstance(sub, PreTrainedModel):
            configs.setdefault(id(sub.config), sub.config)
    saved = [(cfg, getattr(cfg, "_attn_implementation_internal", None)) for cfg in configs.values()]
    original = base.config._attn_implementation or "sdpa"
    hooks = _Hooks(
        original=original,
        act=act,
        masked_keys=masked_keys,
        probe_layers=probe_layers,
        act_delta_layers=act_delta_layers,
        capture=capture,
        record_sinks=record_sinks,
        num_virtual_tokens=n_prompt,
    )
    try:
        base.set_attn_implementation(ATTN_IMPLEMENTATION)
        _ACTIVE[id(base.config)] = hooks
        yield hooks.record
    finally:
        _ACTIVE.pop(id(base.config), None)
        for cfg, value in saved:  # the private field, so no validation can alter the value
            cfg._attn_implementation_internal = value


def _check_act_fits(act: SinkCalibration, base: nn.Module, n_prompt: int) -> None:
    layers, heads = layer_head_counts(base)
    for layer, layer_heads in act.heads.items():
        if layer >= layers or max(layer_heads) >= heads:
            raise ConfigError(
                f"ACT config calibrates layer {layer} heads {layer_heads}, but the model has "
                f"{layers} layers of {heads} heads; it was searched on another model"
            )
    if act.num_virtual_tokens != n_prompt:
        raise ConfigError(
            f"ACT config was searched with a {act.num_virtual_tokens}-token soft prompt but "
            f"the model has {n_prompt}; search again for this run (calibrate_run)"
        )
