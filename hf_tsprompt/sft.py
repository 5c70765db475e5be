"""The TRL variant: TSLoss on ``trl.SFTTrainer`` (:class:`TopologicalSFTTrainer`).

Its own module so that ``trl`` is imported only by those who use it: the plain
:class:`hf_tsprompt.trainer.TopologicalPromptTrainer` (and the CLI) never load it. The loss
and logging are the trainer module's :class:`~hf_tsprompt.trainer.TopologicalLossMixin`, so
both variants add the same regulariser the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from .config import TSArguments
from .trainer import TopologicalLossMixin, upgrade_args

__all__ = ["TopologicalSFTConfig", "TopologicalSFTTrainer"]


@dataclass
class TopologicalSFTConfig(SFTConfig, TSArguments):
    """TRL's ``SFTConfig`` plus the ``ts_*`` fields of :class:`TSArguments`.

    One default differs from TRL: ``bf16=None`` resolves to False when no bf16-capable GPU is
    present (TRL's True refuses to start on a CPU-only machine: "Your setup doesn't support
    bf16/gpu"). Set ``bf16=True`` explicitly for bf16 autocast on CPU.
    """

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        self.validate_ts()


class TopologicalSFTTrainer(TopologicalLossMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` with the regulariser added to its loss.

    Same constructor as ``trl.SFTTrainer`` (pass a peft prompt-learning model, or a base model
    with ``peft_config=PromptTuningConfig(...)``). TRL's own metrics (entropy, token accuracy)
    and ours share TRL's ``self._metrics`` / ``log()`` mechanism. Its model card is
    hf-tsprompt's (``create_model_card``, which TRL also calls at each checkpoint), and
    ``push_to_hub`` publishes as :class:`~hf_tsprompt.trainer.TopologicalPromptTrainer`'s does.
    """

    def __init__(self, model: Any = None, args: Any = None, **kwargs: Any):
        args = upgrade_args(args, TopologicalSFTConfig)
        super().__init__(model=model, args=args, **kwargs)
        self._init_topological()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss, outputs = result if return_outputs else (result, None)
        loss = self._add_regularizer(model, loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # SFTTrainer.log merges TRL's metrics from the same self._metrics afterwards.
        self._merge_metrics(logs)
        super().log(logs, start_time)
