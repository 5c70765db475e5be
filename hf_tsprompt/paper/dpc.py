"""DPC, dynamic prompt corruption (Fan et al. 2025), as an inference option for soft prompts.

Fan, Xie, Shen, Teng, Yuan, Zhang, Huang, Wang, He and Ye, "Improving complex reasoning with
dynamic prompt corruption: a soft prompt optimization approach" (ICLR 2025, arXiv
2503.13208; no public code). Their analysis: a soft prompt helps when the late reasoning
steps build on the earlier steps, and hurts when the late steps keep drawing on the soft
prompt, whose information has *accumulated* in a few of its tokens. DPC works per instance,
in two stages, after a first full reasoning pass:

1. **Dynamic Trigger.** Information flow is measured with saliency scores (their Eq. 1, the
   attention-times-gradient saliency of Wang et al. 2023, "Label words are anchors"):
   ``I_l = | sum_h A_{h,l} * dL/dA_{h,l} |`` (elementwise product), where ``I_l[i, j]`` is
   the flow from token ``j`` to token ``i`` in layer ``l``. The rationale's tokens are split
   into a former and a latter half; the threshold ``beta`` is the average flow from the soft
   prompt to the former half; a latter-half token is *affected* when its flow from the soft
   prompt exceeds ``beta``; DPC fires when the proportion ``R`` of affected tokens reaches
   a threshold.
2. **Dynamic Corruption.** The soft prompt token where the information accumulates (their
   Eq. 6) is masked, ``t_c = {v_1, ..., mask * v_j, ..., v_n}``, the smallest ``Gamma``
   percent (Gamma = 10) of the remaining prompt's embedding values are eliminated, and the
   answer is generated again with the corrupted prompt.

The method section was read through secondary copies only (published reviews that quote
it, and summaries): they give Eq. 1, the trigger's ``beta``, the masking formula and
Gamma = 10, but not Eq. 6 nor the trigger thresholds. What is ours (the paper leaves it
open, or we could not read it), each a decision:

- **The loss L at test time.** No label exists at inference; ``L`` is the cross-entropy of
  the model's *own* greedy rationale under teacher forcing. The rationale is the decoded
  first-pass generation, re-tokenized (it can differ from the sampled ids only where the
  tokenizer would merge differently).
- **Layers.** The paper places the harmful flow in the deeper layers without fixing which;
  ``layers=None`` averages ``I_l`` over the deeper half of the layers.
- **Flow per token.** ``f(i) = mean_j I[i, j]`` over the n soft prompt positions ``j``, with
  ``i`` the query at each rationale token's own position; ``S_pq`` / ``S_pr`` (question /
  rationale) are the same means over all question / rationale tokens (reported, not used).
- **Trigger threshold.** The paper "summarizes" thresholds per task and model from many
  instances and does not report them; ``trigger_ratio`` (default 0.5: most of the latter half
  draws more from the soft prompt than the former half did on average) fires when
  ``R >= trigger_ratio``. Rationales shorter than ``min_rationale_tokens`` never fire.
- **Where information accumulates (Eq. 6 is not in any copy we could read).** The soft
  prompt position(s) with the largest summed flow to the latter half of the rationale:
  ``argmax_j sum_{i in latter} I[i, j]``; ``num_masked`` > 1 takes the top k (paper: one).
- **Masking.** ``corruption="attention"`` (default) removes the chosen positions from every
  attention row of every layer and head (``mask = 0`` taken literally would still leave a
  zero vector that attention can attend to; removing it is the clean version of "masking a
  token"). ``corruption="zero"`` is the paper's literal ``0 * v_j`` on the embedding (prompt
  tuning only).
- **Gamma.** "Eliminate the smallest Gamma percent of the embedding values" is read as:
  zero the ``prune_percent`` percent of entries with the smallest magnitude among the
  *remaining* soft prompt vectors (prompt tuning's embedding table only; set 0 otherwise).
- **Regeneration** runs the same greedy decoding as the first pass
  (:func:`~hf_tsprompt.evaluation.evaluate_model`, batch size 1) and replaces the answer.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..data import IGNORE_INDEX, build_prompt, encode_prompt, get_task, truncate_ids
from ..errors import ConfigError
from ..evaluation import EvalResult, evaluate_model
from ..prompts import get_prompt_peft_model, method_of, peft_type_name
from .attention import AttentionRecord, attention_hooks, base_model, layer_head_counts

__all__ = [
    "DPCConfig",
    "DPCDecision",
    "SoftPromptFlow",
    "accumulation_positions",
    "corrupt_soft_prompt",
    "dpc_decide",
    "dynamic_trigger",
    "evaluate_with_dpc",
    "saliency_maps",
    "soft_prompt_flow",
]

Corruption = Literal["attention", "zero"]


@dataclass
class DPCConfig:
    """DPC's knobs (see the module docstring for how each maps onto the paper).

    Attributes:
        enabled: False = plain evaluation, bit for bit.
        trigger_ratio: fire when the share R of affected latter-half tokens is >= this.
        num_masked: soft prompt positions corrupted when DPC fires (paper: 1).
        corruption: ``"attention"`` (remove the positions from attention) or ``"zero"``.
        prune_percent: Gamma, percent of the remaining prompt's embedding values zeroed
            (paper: 10; prompt tuning only, 0 for other methods).
        layers: layers whose saliency is averaged; None = the deeper half.
        min_rationale_tokens: shorter rationales never fire (need both halves).
    """

    enabled: bool = True
    trigger_ratio: float = 0.5
    num_masked: int = 1
    corruption: Corruption = "attention"
    prune_percent: float = 10.0
    layers: list[int] | None = None
    min_rationale_tokens: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.trigger_ratio, (int, float)) or not 0 <= self.trigger_ratio <= 1:
            raise ConfigError(f"trigger_ratio must be in [0, 1], got {self.trigger_ratio!r}")
        if not isinstance(self.num_masked, int) or self.num_masked < 1:
            raise ConfigError(f"num_masked must be an int >= 1, got {self.num_masked!r}")
        if self.corruption not in ("attention", "zero"):
            raise ConfigError(f"corruption must be 'attention' or 'zero', got {self.corruption!r}")
        if not isinstance(self.prune_percent, (int, float)) or not 0 <= self.prune_percent < 100:
            raise ConfigError(f"prune_percent must be in [0, 100), got {self.prune_percent!r}")
        if self.layers is not None:
            if not self.layers or any(not isinstance(x, int) or x < 0 for x in self.layers):
                raise ConfigError(f"layers must be non-empty ints >= 0 or None, got {self.layers}")
            self.layers = sorted(set(self.layers))
        if not isinstance(self.min_rationale_tokens, int) or self.min_rationale_tokens < 2:
            raise ConfigError(
                f"min_rationale_tokens must be an int >= 2, got {self.min_rationale_tokens!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DPCConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown DPC config field(s) {unknown}")
        return cls(**dict(data))


@dataclass
class SoftPromptFlow:
    """Saliency flow from the soft prompt of one example (layers averaged).

    ``token_flow[t]``: mean flow from the n prompt positions to rationale token t.
    ``position_flow[j]``: summed flow from prompt position j to the rationale's latter half.
    ``s_pq`` / ``s_pr``: mean flow soft prompt -> question / -> rationale.
    """

    token_flow: torch.Tensor
    position_flow: torch.Tensor
    s_pq: float
    s_pr: float


@dataclass
class DPCDecision:
    """The Dynamic Trigger's verdict for one example and where corruption would go."""

    triggered: bool
    ratio: float
    beta: float
    positions: list[int] = field(default_factory=list)
    s_pq: float = math.nan
    s_pr: float = math.nan
    rationale_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("ratio", "beta", "s_pq", "s_pr"):  # JSON has no NaN
            out[key] = None if math.isnan(out[key]) else out[key]
        return out


def _prompt_learning(model: nn.Module) -> tuple[Any, str, Any]:
    return get_prompt_peft_model(model)


def _num_layers(model: nn.Module) -> int:
    return layer_head_counts(base_model(model))[0]


def _layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    total = _num_layers(model)
    chosen = list(range(total // 2, total)) if layers is None else sorted(set(layers))
    if not chosen or chosen[0] < 0 or chosen[-1] >= total:
        raise ConfigError(f"saliency layers must be within 0..{total - 1}, got {chosen}")
    return chosen


def saliency_maps(
    model: nn.Module,
    input_ids: Sequence[int],
    target_start: int,
    layers: Sequence[int],
) -> dict[int, torch.Tensor]:
    """DPC Eq. 1 per layer: ``I_l = |sum_h A_{h,l} * dL/dA_{h,l}|``, shape (queries, keys).

    ``L`` is the summed cross-entropy of the tokens ``input_ids[target_start:]`` given
    everything before them. Keys include the n soft prompt positions first; queries are all
    positions the model computes (prompt tuning: n + T; prefix tuning: T). The gradient is
    taken with respect to a zero tensor added to each probability matrix, so every
    downstream path (later layers' attention included) counts, and no parameter needs
    ``requires_grad``.
    """
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=next(model.parameters()).device)
    if not 0 < target_start < ids.shape[1]:
        raise ConfigError(f"target_start must be within 1..{ids.shape[1] - 1}, got {target_start}")
    layers = list(layers)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), attention_hooks(model, probe_layers=layers) as record:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            offset = logits.shape[1] - ids.shape[1]
            labels = ids[0, 1:].clone()
            labels[: target_start - 1] = IGNORE_INDEX
            loss = nn.functional.cross_entropy(
                logits[0, offset:-1].float(), labels, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            probes = [record.probes[layer][0] for layer in layers]
            grads = torch.autograd.grad(loss, probes)
    finally:
        model.train(was_training)
    return {
        layer: (record.probs[layer][0] * grad).sum(dim=1)[0].abs()
        for layer, grad in zip(layers, grads, strict=True)
    }


def soft_prompt_flow(
    model: nn.Module,
    prompt_ids: Sequence[int],
    rationale_ids: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
) -> SoftPromptFlow:
    """Flow from the soft prompt to the question and the rationale (module docstring)."""
    _, _, peft_config = _prompt_learning(model)
    n = int(peft_config.num_virtual_tokens)
    n_question, n_rationale = len(prompt_ids), len(rationale_ids)
    if n_question < 1 or n_rationale < 2:
        raise ConfigError("soft_prompt_flow needs a prompt and at least two rationale tokens")
    maps = saliency_maps(model, [*prompt_ids, *rationale_ids], n_question, _layers(model, layers))
    flow = torch.stack(list(maps.values())).mean(dim=0)  # (Q, K)
    keys = n + n_question + n_rationale
    first_query = keys - flow.shape[0]  # key position of query row 0 (prefix tuning: n)
    question_rows = slice(n - first_query, n + n_question - first_query)
    rationale_rows = slice(n + n_question - first_query, keys - first_query)
    token_flow = flow[rationale_rows, :n].mean(dim=-1)
    latter = flow[rationale_rows][n_rationale // 2 :, :n]
    return SoftPromptFlow(
        token_flow=token_flow.detach().cpu(),
        position_flow=latter.sum(dim=0).detach().cpu(),
        s_pq=float(flow[question_rows, :n].mean()),
        s_pr=float(token_flow.mean()),
    )


def dynamic_trigger(
    token_flow: torch.Tensor, *, trigger_ratio: float = 0.5, min_tokens: int = 4
) -> tuple[bool, float, float]:
    """The Dynamic Trigger on per-token flows: ``(fired, R, beta)``.

    ``beta`` = mean flow to the former half; R = share of latter-half tokens whose flow
    exceeds ``beta``; fires when ``R >= trigger_ratio``. Fewer than ``min_tokens`` tokens:
    never fires (``R`` and ``beta`` are NaN).
    """
    flow = torch.as_tensor(token_flow, dtype=torch.float64).flatten()
    if flow.numel() < max(min_tokens, 2):
        return False, math.nan, math.nan
    half = flow.numel() // 2
    beta = float(flow[:half].mean())
    ratio = float((flow[half:] > beta).double().mean())
    return ratio >= trigger_ratio, ratio, beta


def accumulation_positions(position_flow: torch.Tensor, k: int = 1) -> list[int]:
    """The ``k`` soft prompt positions with the largest flow, largest first (ties: lower
    position first)."""
    flow = torch.as_tensor(position_flow, dtype=torch.float64).flatten()
    if not 1 <= k <= flow.numel():
        raise ConfigError(f"cannot pick {k} of {flow.numel()} soft prompt positions")
    order = sorted(range(flow.numel()), key=lambda j: (-float(flow[j]), j))
    return order[:k]


@contextlib.contextmanager
def corrupt_soft_prompt(
    model: nn.Module,
    positions: Sequence[int],
    *,
    corruption: Corruption = "attention",
    prune_percent: float = 0.0,
    capture: bool = False,
) -> Iterator[AttentionRecord | None]:
    """Dynamic Corruption of the soft prompt inside the block, restored exactly after.

    ``"attention"``: no query of any layer or head may attend to ``positions`` (their
    probability is exactly 0; other keys renormalise as if the tokens were absent).
    ``"zero"``: the embedding rows at ``positions`` are set to 0 (prompt tuning).
    ``prune_percent``: also zero that percent of the remaining rows' entries with the
    smallest magnitude (prompt tuning). ``capture`` yields the attention record.
    """
    inner, name, peft_config = _prompt_learning(model)
    n = int(peft_config.num_virtual_tokens)
    chosen = sorted({int(p) for p in positions})
    if not chosen or chosen[0] < 0 or chosen[-1] >= n:
        raise ConfigError(f"positions must be soft prompt positions in 0..{n - 1}, got {positions}")
    if corruption not in ("attention", "zero"):
        raise ConfigError(f"corruption must be 'attention' or 'zero', got {corruption!r}")
    edit_embedding = corruption == "zero" or prune_percent > 0
    if edit_embedding and not method_of(peft_config).matrix_is_embedding:
        raise ConfigError(
            f"corruption='zero' and prune_percent > 0 edit prompt tuning's embedding table; "
            f"this adapter is {peft_type_name(peft_config)}: use corruption='attention' and "
            "prune_percent=0"
        )
    weight = inner.prompt_encoder[name].embedding.weight if edit_embedding else None
    original = weight.data if weight is not None else None
    hooks: contextlib.AbstractContextManager[AttentionRecord | None]
    if corruption == "attention":
        hooks = attention_hooks(model, masked_keys=chosen, capture=capture)
    elif capture:
        hooks = attention_hooks(model, capture=True)
    else:
        hooks = contextlib.nullcontext()
    try:
        if weight is not None and original is not None:
            corrupted = original.clone()
            if corruption == "zero":
                corrupted[chosen] = 0
            if prune_percent > 0:
                keep = [j for j in range(n) if j not in chosen]
                values = corrupted[keep]
                count = int(values.numel() * prune_percent / 100)
                if count:
                    flat = values.flatten()
                    smallest = flat.abs().argsort(stable=True)[:count]
                    flat[smallest] = 0
                    corrupted[keep] = flat.view_as(values)
            weight.data = corrupted
        with hooks as record:
            yield record
    finally:
        if weight is not None and original is not None:
            weight.data = original  # the very tensor that was there: restored bit for bit


def dpc_decide(
    model: nn.Module,
    prompt_ids: Sequence[int],
    rationale_ids: Sequence[int],
    config: DPCConfig,
) -> DPCDecision:
    """Dynamic Trigger for one example; ``positions`` says where to corrupt if it fired."""
    if len(rationale_ids) < config.min_rationale_tokens:
        return DPCDecision(False, math.nan, math.nan, rationale_tokens=len(rationale_ids))
    flow = soft_prompt_flow(model, prompt_ids, rationale_ids, layers=config.layers)
    fired, ratio, beta = dynamic_trigger(
        flow.token_flow,
        trigger_ratio=config.trigger_ratio,
        min_tokens=config.min_rationale_tokens,
    )
    positions = accumulation_positions(flow.position_flow, config.num_masked) if fired else []
    return DPCDecision(
        triggered=fired,
        ratio=ratio,
        beta=beta,
        positions=positions,
        s_pq=flow.s_pq,
        s_pr=flow.s_pr,
        rationale_tokens=len(rationale_ids),
    )


def evaluate_with_dpc(
    model: nn.Module,
    tokenizer: Any,
    task: Any,
    rows: Sequence[Any],
    *,
    config: DPCConfig | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
) -> Any:
    """:func:`~hf_tsprompt.evaluation.evaluate_model` with DPC: first pass, Dynamic Trigger
    per example, corrupted regeneration where it fires.

    ``config=None`` or ``enabled=False`` returns ``evaluate_model``'s result unchanged. With
    DPC on, each prediction gains ``"dpc"`` (the :class:`DPCDecision`, plus
    ``"first_generation"`` where the answer was regenerated); accuracy, time and token counts
    cover both passes.
    """
    kwargs = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "max_prompt_tokens": max_prompt_tokens,
    }
    if config is None or not config.enabled:
        return evaluate_model(model, tokenizer, task, rows, progress=progress, **kwargs)
    task = get_task(task)
    _, _, peft_config = _prompt_learning(model)  # fails early on a model without a soft prompt
    edit_embedding = config.corruption == "zero" or config.prune_percent > 0
    if edit_embedding and not method_of(peft_config).matrix_is_embedding:
        raise ConfigError(
            f"DPC with corruption={config.corruption!r}, prune_percent={config.prune_percent} "
            f"needs a prompt tuning adapter; this one is {peft_type_name(peft_config)}: use "
            "corruption='attention', prune_percent=0"
        )
    _layers(model, config.layers)
    start = time.perf_counter()
    first = evaluate_model(model, tokenizer, task, rows, progress=progress, **kwargs)
    predictions = [dict(p) for p in first.predictions]
    new_tokens = first.new_tokens
    for prediction, row in zip(predictions, rows, strict=True):
        prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, task, row), task)
        if max_prompt_tokens is not None:
            prompt_ids = truncate_ids(prompt_ids, max_prompt_tokens)
        rationale = tokenizer(prediction["generation"], add_special_tokens=False)["input_ids"]
        decision = dpc_decide(model, prompt_ids, list(rationale), config)
        info = decision.to_dict()
        if decision.triggered:
            with corrupt_soft_prompt(
                model,
                decision.positions,
                corruption=config.corruption,
                prune_percent=config.prune_percent,
            ):
                again = evaluate_model(
                    model, tokenizer, task, [row], progress=False, **{**kwargs, "batch_size": 1}
                )
            new_tokens += again.new_tokens
            info["first_generation"] = prediction["generation"]
            prediction.update({k: v for k, v in again.predictions[0].items() if k != "index"})
        prediction["dpc"] = info
    correct = sum(bool(p["correct"]) for p in predictions)
    return EvalResult(
        accuracy=correct / len(predictions),
        correct=correct,
        total=len(predictions),
        predictions=predictions,
        task=first.task,
        seconds=time.perf_counter() - start,
        new_tokens=new_tokens,
    )
