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

How it is wired: :func:`act_attention` applies an :class:`ACTConfig` through
:func:`hf_tsprompt.paper.attention.attention_hooks`, the registered attention function that owns the
per-call editing (the sink rule above, in float32) and restores the model's own attention
implementation exactly on exit; :func:`hf_tsprompt.evaluation.evaluate_model` runs unchanged
inside it. This module owns ACT the method: its configuration, the head search, applying
it, and the heads a run folder keeps (``<run>/calibration/act.json``: :func:`save_act`,
:func:`load_act`, :func:`saved_act`; ``hf_tsprompt.finished.calibrate_run`` searches a
finished run's heads with its recipe). ``ATTN_IMPLEMENTATION``, ``AttentionRecord`` and
``attention_hooks`` are re-exported here, where they were first defined.
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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import IGNORE_INDEX, get_task, tokenize_example
from ..errors import ConfigError, MissingFileError
from ..evaluation import evaluate_model
from ..fsutil import atomic_write_json
from ..runs import ACT_FILE, adapter_fingerprint
from .attention import (
    ATTN_IMPLEMENTATION,
    AttentionRecord,
    attention_hooks,
    base_model,
    layer_head_counts,
    num_virtual_tokens,
)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "ACTConfig",
    "AttentionRecord",
    "act_attention",
    "act_path",
    "attention_hooks",
    "default_act_layers",
    "evaluate_with_act",
    "find_act_heads",
    "load_act",
    "save_act",
    "saved_act",
]

ThresholdMode = Literal["absolute", "relative"]


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
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
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
        ignore_index=IGNORE_INDEX,
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
    task = get_task(task)
    probe_config = ACTConfig(
        heads={}, scale=scale, threshold=threshold, threshold_mode=threshold_mode,
        protect_prompt=protect_prompt, num_virtual_tokens=num_virtual_tokens(model),
    )  # fmt: skip
    if search not in ("taylor", "exact"):
        raise ConfigError(f"search must be 'taylor' or 'exact', got {search!r}")
    if batch_size < 1 or verify_top < 1:
        raise ConfigError(f"batch_size and verify_top must be >= 1, got {batch_size}, {verify_top}")
    base = base_model(model)
    num_layers, num_heads = layer_head_counts(base)
    layers = default_act_layers(num_layers) if layers is None else sorted({int(x) for x in layers})
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ConfigError(f"layers must be a non-empty subset of 0..{num_layers - 1}, got {layers}")
    batches = _calibration_batches(tokenizer, task, rows, batch_size, max_length)
    n_tokens = int(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches))
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
    """``<run>/calibration/act.json``: ACT's heads, searched once per adapter."""
    return Path(run_dir) / ACT_FILE


def save_act(config: ACTConfig, run_dir: str | Path) -> Path:
    """Write ``config`` to ``<run>/calibration/act.json`` atomically; returns the path."""
    return atomic_write_json(act_path(run_dir), config.to_dict())


def load_act(run_dir: str | Path) -> ACTConfig:
    """The ACT heads saved in a run folder (so every evaluation uses the same heads)."""
    path = act_path(run_dir)
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist: search the heads first (hf_tsprompt.finished."
            "calibrate_run(run_dir), or `hf-tsprompt evaluate RUN_DIR --calibration act`)"
        )
    return ACTConfig.from_json(path.read_text(encoding="utf-8"))


def saved_act(run_dir: str | Path) -> ACTConfig | None:
    """The heads saved in the run folder if they were searched with the adapter now in it
    (its :func:`~hf_tsprompt.runs.adapter_fingerprint` is recorded as ``adapter_sha256``);
    None when there is no saved search or it is stale."""
    if not act_path(run_dir).is_file():
        return None
    saved = load_act(run_dir)
    if saved.calibration.get("adapter_sha256") != adapter_fingerprint(run_dir):
        return None
    return saved


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
    with act_attention(model, config):
        return evaluate_model(model, tokenizer, task, rows, **evaluate_kwargs)
