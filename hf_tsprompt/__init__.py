"""hf-tsprompt: soft prompt tuning regularised and explained by topology.

Implements "Optimizing Soft Prompt Tuning via Structural Evolution" (TSLoss) on top of peft,
transformers and TRL. Public names are imported lazily, so ``import hf_tsprompt`` (and the
CLI's ``--help``) stays fast; each lives in one module:

- :func:`ts_loss`, :class:`TSLoss` (``losses``): the regulariser, Eq. 1-6.
- :func:`prompt_matrix` (``prompts``): the prompt point cloud P of any peft prompt model;
  :class:`PromptMethod`, :func:`get_prompt_method`, :func:`register_prompt_method`: the
  table of prompt methods.
- :class:`TopologicalPromptConfig`, :class:`TopologicalPromptTrainer`,
  :class:`TopologicalSFTConfig`, :class:`TopologicalSFTTrainer` (``sft``: imports trl).
- :func:`persistence` (``topology``): H0/H1 persistence and the paper's metrics.
- :class:`PersistenceCallback` (``callbacks``): barcodes recorded during training.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ts_loss": "losses",
    "TSLoss": "losses",
    "TSLossOutput": "losses",
    "l2_loss": "losses",
    "pairwise_distance_loss": "losses",
    "prompt_matrix": "prompts",
    "get_prompt_model": "prompts",
    "init_prompt_": "prompts",
    "PromptMethod": "prompts",
    "get_prompt_method": "prompts",
    "register_prompt_method": "prompts",
    "TopologicalPromptConfig": "trainer",
    "TopologicalPromptTrainer": "trainer",
    "TopologicalSFTConfig": "sft",
    "TopologicalSFTTrainer": "sft",
    "persistence": "topology",
    "PersistenceCallback": "callbacks",
    "read_records": "records",
}

__all__ = [
    "PersistenceCallback",
    "PromptMethod",
    "TSLoss",
    "TSLossOutput",
    "TopologicalPromptConfig",
    "TopologicalPromptTrainer",
    "TopologicalSFTConfig",
    "TopologicalSFTTrainer",
    "__version__",
    "get_prompt_method",
    "get_prompt_model",
    "init_prompt_",
    "l2_loss",
    "pairwise_distance_loss",
    "persistence",
    "prompt_matrix",
    "read_records",
    "register_prompt_method",
    "ts_loss",
]

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import PersistenceCallback
    from .losses import TSLoss, TSLossOutput, l2_loss, pairwise_distance_loss, ts_loss
    from .prompts import (
        PromptMethod,
        get_prompt_method,
        get_prompt_model,
        init_prompt_,
        prompt_matrix,
        register_prompt_method,
    )
    from .records import read_records
    from .sft import TopologicalSFTConfig, TopologicalSFTTrainer
    from .topology import persistence
    from .trainer import TopologicalPromptConfig, TopologicalPromptTrainer


# Correct cached PeftModel.generate for prompt-learning adapters (peft 0.21 + transformers 5);
# applied when peft is imported, and only where the installed peft has the bug. See generation.py.
from .generation import install as _install_generate_fix  # noqa: E402 - no torch/peft, fast

_install_generate_fix()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_tsprompt' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__
