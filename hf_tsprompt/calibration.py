"""ACT, the attention calibration technique (Yu et al. 2024), on top of a trained soft prompt.

Yu, Wang, Fu, Shi, Shaikh and Lin, "Unveiling and harnessing hidden attention sinks:
enhancing large language models without training through attention calibration" (ICML 2024,
arXiv 2406.15765; code: GATECH-EIC/ACT) observe that *attention sinks* — keys that receive
far more attention than their meaning warrants — occur not only at the first token but also
later in the input, and that damping the later ones in some heads raises accuracy. ACT is
training-free and has two parts, both implemented here:

1. **Offline head filtering** on a calibration set: calibrate one head at a time and keep
   the heads whose calibration improves the calibration score (public code:
   ``scripts/calibration.sh`` loops over heads and layers 2..30 of Llama-2-7B, then lists the
   winners per layer in ``models/augment_index.py``).
2. **Input-adaptive calibration at inference**, in the kept heads only. For every key ``t``
   the *attention score it receives* is its mean attention over the queries that can see it,
   ``a_t = sum_i A[i, t] / #{i : i can attend t}``; key ``t`` is a sink when ``a_t`` exceeds a
   threshold (summaries of the paper state it relative to the length, ``alpha / N``; the
   public code uses an absolute ``THRES = 0.1``). Every sink except the initial token gets
   its attention scaled by ``beta`` (``BETA = 0.4`` in the code) and each row's freed mass
   ``(1 - beta) * sum_{s in S} A[i, s]`` goes to the non-sink keys in proportion to their
   attention, so rows still sum to 1 (``atten_process_eval`` in
   ``models/llama_modelling_aug.py``).

How it is wired: a registered attention function (``transformers.AttentionInterface`` plus a
mask function in ``AttentionMaskInterface``, both under :data:`ATTN_IMPLEMENTATION`). The
context managers :func:`act_attention` / :func:`attention_hooks` switch a model's attention
implementation to it and restore the previous one exactly; no model file is forked, so
:func:`hf_tsprompt.evaluation.evaluate_model` runs unchanged inside them. Layers without
edits are delegated to the model's own implementation (eager or sdpa); edited layers use
eager math (softmax in float32, exactly as transformers' ``eager_attention_forward``), and
the calibration itself runs in float32.

Where it differs from the paper and the public code (each one deliberate; the method is
taken from the public code, and from summaries of the paper where the code is silent):

- **Score for head filtering**: mean token negative log-likelihood of the calibration rows'
  reference targets (teacher forcing), not accuracy. The public code scores classification
  / one-token multiple choice; our tasks are generative and calibration sets are small (the
  TSLoss paper trains on 10 rows), where accuracy is too coarse to rank heads.
- **Head search**: ``search="exact"`` calibrates every candidate head on its own, as ACT does.
  The default ``"taylor"`` first ranks all heads at once by the first-order change of the loss,
  ``sum <dL/dA_h, A'_h - A_h>`` (one forward + backward pass), then checks only the
  ``verify_top`` most promising heads exactly; a head is kept only if its exact loss drop
  exceeds ``min_gain``. Heads are judged one at a time and the winners combined, as in ACT.
- **Candidate layers**: by default all but the first two and the last, mirroring the code's
  layers 2..30 of 32 (all layers for models with fewer than five).
- **Initial token**: the first attendable key of each row (the first virtual token under
  prompt tuning, the first real token for a plain left-padded model) is never calibrated. The
  public code skips the first *detected* sink instead, which is the same position whenever
  the first token is a sink. ``protect_prompt=True`` also exempts all soft prompt positions.
- **Padding**: column means count only real queries, and padded keys are never sinks (the
  public code ran batch size 1 without padding).
- **Generation with a KV cache**: the public code only ever ran one forward pass. During
  decoding the column statistics keep accumulating over every query seen so far (prompt and
  generated tokens), so the sink set is re-judged at each step from all the evidence so far
  (and, as for the last keys of the public code's single pass, a new key is first judged on
  the few queries that have seen it). The last decoding step equals the last row of one
  uncached pass over the same tokens whenever the calibrated layers' inputs agree.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import ConfigError, MissingFileError
from .fsutil import atomic_write_json

__all__ = [
    "ACT_FILE",
    "ATTN_IMPLEMENTATION",
    "ACTConfig",
    "AttentionRecord",
    "act_attention",
    "act_path",
    "adapter_fingerprint",
    "attention_hooks",
    "calibrate_run",
    "default_act_layers",
    "evaluate_with_act",
    "find_act_heads",
    "load_act",
    "save_act",
]

ATTN_IMPLEMENTATION = "hf_tsprompt"
"""Name of the attention function registered in ``transformers.AttentionInterface``."""
ACT_FILE = Path("calibration") / "act.json"
"""Where :func:`save_act` puts the head search result inside a run folder."""
ThresholdMode = Literal["absolute", "relative"]
_IGNORE = -100


# --------------------------------------------------------------------------- configuration


@dataclass
class ACTConfig:
    """The result of ACT's head search: which heads to calibrate and how.

    Attributes:
        heads: layer index -> attention heads (query heads) calibrated in that layer.
        scale: ``beta``, the factor applied to a sink's attention, in (0, 1] (1 = off).
        threshold: sink threshold on the mean attention a key receives. ``absolute``:
            the number itself (public code: 0.1). ``relative``: ``alpha`` in the paper's
            ``alpha / N``, N = the row's number of attendable keys.
        threshold_mode: ``"absolute"`` or ``"relative"``.
        protect_prompt: also exempt every soft prompt position (not only the first key).
        num_virtual_tokens: soft prompt length of the model the heads were searched on.
        calibration: how the heads were found (rows, losses, gains, timing); informational.
    """

    heads: dict[int, list[int]] = field(default_factory=dict)
    scale: float = 0.4
    threshold: float = 0.1
    threshold_mode: ThresholdMode = "absolute"
    protect_prompt: bool = False
    num_virtual_tokens: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a value ACT cannot use."""
        if not isinstance(self.scale, (int, float)) or not 0.0 < float(self.scale) <= 1.0:
            raise ConfigError(
                f"ACT scale (beta) must be in (0, 1], got {self.scale!r}; 0.4 is the paper's "
                "value and 1 leaves attention unchanged"
            )
        if self.threshold_mode not in ("absolute", "relative"):
            raise ConfigError(
                f"ACT threshold_mode must be 'absolute' or 'relative', got {self.threshold_mode!r}"
            )
        limit = 1.0 if self.threshold_mode == "absolute" else math.inf
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < limit:
            raise ConfigError(
                f"ACT threshold must be in (0, {limit}) for threshold_mode "
                f"{self.threshold_mode!r}, got {self.threshold!r}"
            )
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 0:
            raise ConfigError(
                f"num_virtual_tokens must be an int >= 0, got {self.num_virtual_tokens!r}"
            )
        heads: dict[int, list[int]] = {}
        for layer, layer_heads in dict(self.heads).items():
            try:
                key = int(layer)
                values = sorted({int(h) for h in layer_heads})
            except (TypeError, ValueError):
                raise ConfigError(
                    f"ACT heads must map layer -> list of head indices, got {layer!r}: "
                    f"{layer_heads!r}"
                ) from None
            if key < 0 or any(h < 0 for h in values):
                raise ConfigError(f"ACT layer and head indices must be >= 0, got {layer!r}")
            if values:
                heads[key] = values
        self.heads = dict(sorted(heads.items()))

    @property
    def num_heads(self) -> int:
        """How many (layer, head) pairs are calibrated."""
        return sum(len(h) for h in self.heads.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["heads"] = {str(k): list(v) for k, v in self.heads.items()}  # JSON keys are strings
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ACTConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ACT config field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ACTConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"ACT config is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError("ACT config JSON must be an object")
        return cls.from_dict(data)


# --------------------------------------------------------------------------- model helpers


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers ``PreTrainedModel`` inside a (possibly wrapped) peft model."""
    from .prompts import unwrap_model

    model = unwrap_model(model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _peft_prompt_config(model: nn.Module) -> Any | None:
    from .prompts import unwrap_model

    config = getattr(unwrap_model(model), "active_peft_config", None)
    return config if getattr(config, "is_prompt_learning", False) else None


def _num_virtual_tokens(model: nn.Module) -> int:
    """n: the first n key positions of every attention call are the soft prompt (prompt
    tuning and P-tuning prepend n embeddings; prefix tuning prepends n cached keys)."""
    config = _peft_prompt_config(model)
    return int(config.num_virtual_tokens) if config is not None else 0


def _text_config(base: nn.Module) -> Any:
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _shape(base: nn.Module) -> tuple[int, int]:
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
        act: ACTConfig | None,
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
    act: ACTConfig | None = None,
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

    base = _base_model(model)
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
    n_prompt = _num_virtual_tokens(model)
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


def _check_act_fits(act: ACTConfig, base: nn.Module, n_prompt: int) -> None:
    layers, heads = _shape(base)
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


@contextlib.contextmanager
def act_attention(model: nn.Module, config: ACTConfig | None) -> Iterator[None]:
    """Apply ACT (``config``) to ``model`` inside the block; ``None`` or no heads = no-op.

    The no-op never touches the model, so "off" is the model's own output bit for bit.
    Any evaluation code runs unchanged inside, e.g.::

        with act_attention(model, load_act(run_dir)):
            result = evaluate_model(model, tokenizer, task, rows)
    """
    if config is None or not config.heads or config.scale == 1.0:
        yield
        return
    with attention_hooks(model, act=config):
        yield


# --------------------------------------------------------------------------- head search


def _calibration_batches(
    tokenizer: Any, task: Any, rows: Sequence[Any], batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """Right-padded teacher-forcing batches of the rows (prompt + reference target + eos)."""
    from .data import tokenize_example

    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise ConfigError(
            f"calibration rows must be a list of {task.name} rows, got {type(rows).__name__}"
        )
    if not rows:
        raise ConfigError("ACT needs at least one calibration row (e.g. the run's train rows)")
    features = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ConfigError(f"calibration row {i} is a {type(row).__name__}, not a row dict")
        try:
            features.append(tokenize_example(tokenizer, task, row, max_length=max_length))
        except ConfigError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise ConfigError(
                f"calibration row {i} is not a {task.name} row ({type(err).__name__}: {err}); "
                "pass rows from hf_tsprompt.data.load_subsets / load_task_rows"
            ) from None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = []
    for first in range(0, len(features), batch_size):
        chunk = features[first : first + batch_size]
        width = max(len(f["input_ids"]) for f in chunk)
        ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), _IGNORE, dtype=torch.long)
        for slot, f in enumerate(chunk):
            n = len(f["input_ids"])
            ids[slot, :n] = torch.tensor(f["input_ids"])
            mask[slot, :n] = 1
            labels[slot, :n] = torch.tensor(f["labels"])
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def _nll_sum(
    model: nn.Module, batch: Mapping[str, torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Summed token NLL of the batch's labels (the soft prompt's positions carry no label)."""
    ids = batch["input_ids"].to(device)
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
    offset = logits.shape[1] - ids.shape[1]  # prompt tuning returns logits for the n virtual tokens
    shift = logits[:, offset:-1].float()
    labels = batch["labels"][:, 1:].to(device)
    return nn.functional.cross_entropy(
        shift.reshape(-1, shift.shape[-1]),
        labels.reshape(-1),
        ignore_index=_IGNORE,
        reduction="sum",
    )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_act_layers(num_layers: int) -> list[int]:
    """ACT's candidate layers: all but the first two and the last (the public code searches
    layers 2..30 of Llama-2-7B's 32); every layer when the model has fewer than five."""
    return list(range(2, num_layers - 1)) if num_layers >= 5 else list(range(num_layers))


def find_act_heads(
    model: nn.Module,
    tokenizer: Any,
    task: Any,
    rows: Sequence[Any],
    *,
    scale: float = 0.4,
    threshold: float = 0.1,
    threshold_mode: ThresholdMode = "absolute",
    protect_prompt: bool = False,
    layers: Sequence[int] | None = None,
    search: Literal["taylor", "exact"] = "taylor",
    verify_top: int = 16,
    min_gain: float = 1e-4,
    batch_size: int = 4,
    max_length: int = 1024,
    allow_empty: bool = False,
    progress: bool = False,
) -> ACTConfig:
    """ACT's offline head filtering on calibration ``rows``; returns the kept heads.

    Score: mean NLL (nats per target token) of the rows' reference targets under teacher
    forcing. A head is kept when calibrating it alone lowers that score by more than
    ``min_gain`` (ACT keeps heads whose calibration raises calibration accuracy); the kept
    heads are then applied together. ``search="exact"`` tries every head of ``layers``;
    ``"taylor"`` (default) ranks all of them with one forward + backward pass by the
    first-order loss change and checks the ``verify_top`` best exactly (module docstring).
    Use the run's training rows, never its test rows.

    Raises:
        ConfigError: bad ``scale`` / ``threshold`` / ``layers`` / ``search``, rows that are
            not rows of ``task``, or no head helps (unless ``allow_empty``, which returns a
            config that leaves the model unchanged).
    """
    from tqdm.auto import tqdm

    from .data import get_task

    task = get_task(task)
    probe_config = ACTConfig(
        heads={}, scale=scale, threshold=threshold, threshold_mode=threshold_mode,
        protect_prompt=protect_prompt, num_virtual_tokens=_num_virtual_tokens(model),
    )  # fmt: skip
    if search not in ("taylor", "exact"):
        raise ConfigError(f"search must be 'taylor' or 'exact', got {search!r}")
    if batch_size < 1 or verify_top < 1:
        raise ConfigError(f"batch_size and verify_top must be >= 1, got {batch_size}, {verify_top}")
    base = _base_model(model)
    num_layers, num_heads = _shape(base)
    layers = default_act_layers(num_layers) if layers is None else sorted({int(x) for x in layers})
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ConfigError(f"layers must be a non-empty subset of 0..{num_layers - 1}, got {layers}")
    batches = _calibration_batches(tokenizer, task, rows, batch_size, max_length)
    n_tokens = int(sum(int((b["labels"] != _IGNORE).sum()) for b in batches))
    if n_tokens == 0:
        raise ConfigError("the calibration rows have no target tokens to score")
    device = _device(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad(), attention_hooks(model):
            base_loss = sum(float(_nll_sum(model, b, device)) for b in batches) / n_tokens

        candidates = [(layer, head) for layer in layers for head in range(num_heads)]
        predicted: dict[tuple[int, int], float] = {}
        if search == "taylor":
            scores = torch.zeros(num_layers, num_heads, dtype=torch.float64)
            for b in batches:
                with (
                    torch.enable_grad(),
                    attention_hooks(
                        model, act=probe_config, probe_layers=layers, act_delta_layers=layers
                    ) as record,
                ):
                    loss = _nll_sum(model, b, device) / n_tokens
                    probes = [record.probes[layer][0] for layer in layers]
                    grads = torch.autograd.grad(loss, probes)
                for layer, grad in zip(layers, grads, strict=True):
                    delta = record.act_deltas[layer][0]
                    scores[layer] += (grad * delta).sum(dim=(0, 2, 3)).double().cpu()
            predicted = {c: float(scores[c]) for c in candidates}
            ranked = sorted((c for c in candidates if predicted[c] < 0), key=predicted.__getitem__)
            to_check = ranked[:verify_top]
        else:
            to_check = candidates

        gains: dict[tuple[int, int], float] = {}
        bar = tqdm(to_check, desc="ACT head search", disable=not progress)
        for layer, head in bar:
            single = ACTConfig(**{**asdict(probe_config), "heads": {layer: [head]}})
            with torch.no_grad(), attention_hooks(model, act=single):
                loss = sum(float(_nll_sum(model, b, device)) for b in batches) / n_tokens
            gains[(layer, head)] = base_loss - loss
    finally:
        model.train(was_training)
    kept = sorted(c for c, gain in gains.items() if gain > min_gain)
    heads: dict[int, list[int]] = {}
    for layer, head in kept:
        heads.setdefault(layer, []).append(head)
    seconds = time.perf_counter() - start
    if not heads and not allow_empty:
        raise ConfigError(
            f"ACT found no head whose calibration lowers the calibration loss by more than "
            f"{min_gain} nats/token on {len(rows)} rows ({len(to_check)} heads checked). Use "
            "more calibration rows, another scale/threshold, search='exact', or evaluate "
            "without ACT"
        )
    info = {
        "task": task.name,
        "rows": len(rows),
        "target_tokens": n_tokens,
        "metric": "mean target-token NLL (teacher forcing)",
        "base_loss": base_loss,
        "search": search,
        "layers": layers,
        "checked": len(to_check),
        "min_gain": min_gain,
        "gains": {f"{layer}.{head}": gains[(layer, head)] for layer, head in kept},
        "seconds": seconds,
    }
    if predicted:
        info["predicted"] = {f"{layer}.{head}": predicted[(layer, head)] for layer, head in kept}
    return ACTConfig(**{**asdict(probe_config), "heads": heads, "calibration": info})


# ------------------------------------------------------------------------- run folders, evaluation


def act_path(run_dir: str | Path) -> Path:
    """``<run>/calibration/act.json``."""
    return Path(run_dir) / ACT_FILE


def save_act(config: ACTConfig, run_dir: str | Path) -> Path:
    """Write ``config`` to ``<run>/calibration/act.json`` atomically; returns the path."""
    return atomic_write_json(act_path(run_dir), config.to_dict())


def load_act(run_dir: str | Path) -> ACTConfig:
    """The ACT heads saved in a run folder (so every evaluation uses the same heads)."""
    path = act_path(run_dir)
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist: search the heads first (hf_tsprompt.calibration."
            "calibrate_run(run_dir), or `hf-tsprompt evaluate RUN_DIR --calibration act`)"
        )
    return ACTConfig.from_json(path.read_text(encoding="utf-8"))


def adapter_fingerprint(run_dir: str | Path) -> str | None:
    """sha256 over the files of ``<run>/adapter`` (None when there is no adapter folder):
    ties a saved head search to the exact soft prompt it was searched with."""
    import hashlib

    adapter = Path(run_dir) / "adapter"
    if not adapter.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        digest.update(path.relative_to(adapter).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def calibrate_run(
    run_dir: str | Path,
    *,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    **search: Any,
) -> ACTConfig:
    """Load ``<run>/calibration/act.json``, or search ACT's heads on the run's *training*
    rows and save them there, so every later evaluation uses the same heads.

    A saved search is reused only if it was made with the adapter now in the run folder
    (:func:`adapter_fingerprint`); otherwise (or with ``overwrite``) the heads are searched
    again. ``model`` / ``tokenizer`` reuse an already loaded run model (from
    :func:`hf_tsprompt.pipeline.load_run_model`); ``search`` goes to :func:`find_act_heads`
    (``batch_size`` and ``max_length`` default to the recipe's evaluation batch size and
    ``data.max_length``)."""
    from .pipeline import load_data, load_run_model, load_run_recipe

    run_dir = Path(run_dir)
    fingerprint = adapter_fingerprint(run_dir)
    if act_path(run_dir).is_file() and not overwrite:
        saved = load_act(run_dir)
        if saved.calibration.get("adapter_sha256") == fingerprint:
            return saved
    if model is None or tokenizer is None:
        model, tokenizer, recipe, _ = load_run_model(run_dir)
    else:
        recipe = load_run_recipe(run_dir)
    task, train_rows, _ = load_data(recipe)
    search.setdefault("batch_size", recipe.evaluation.batch_size)
    if recipe.data.max_length:
        search.setdefault("max_length", recipe.data.max_length)
    config = find_act_heads(model, tokenizer, task, train_rows, **search)
    config.calibration.update(
        rows_source="train", seed=recipe.seed, run=recipe.name, adapter_sha256=fingerprint
    )
    save_act(config, run_dir)
    return config


def evaluate_with_act(
    model: nn.Module,
    tokenizer: Any,
    task: Any,
    rows: Sequence[Any],
    *,
    config: ACTConfig | None,
    **evaluate_kwargs: Any,
) -> Any:
    """:func:`~hf_tsprompt.evaluation.evaluate_model` with ACT applied (``None`` = plain)."""
    from .evaluation import evaluate_model

    with act_attention(model, config):
        return evaluate_model(model, tokenizer, task, rows, **evaluate_kwargs)
