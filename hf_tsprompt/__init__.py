"""hf-tsprompt: soft prompt tuning regularised and explained by topology.

Implements "Optimizing Soft Prompt Tuning via Structural Evolution" (TSLoss) on top of peft,
transformers and TRL. Public names are imported lazily, so ``import hf_tsprompt`` (and the
CLI's ``--help``) stays fast; each lives in one module:

- :func:`ts_loss`, :class:`TSLoss` (``losses``): the regulariser, Eq. 1-6.
- :func:`register_regularizer`, :func:`get_regularizer`, :func:`list_regularizers`,
  :class:`Param` (``regularizers``): the registry of regularisers the trainer and recipes
  select by name; register one with its declared parameters to train with it.
- :func:`prompt_matrix` (``prompts``): the prompt point cloud P of any peft prompt model;
  :class:`PromptMethod`, :func:`get_prompt_method`, :func:`register_prompt_method`: the
  table of prompt methods.
- :class:`TopologicalPromptConfig`, :class:`TopologicalPromptTrainer`,
  :class:`TopologicalSFTConfig`, :class:`TopologicalSFTTrainer` (``sft``: imports trl).
- :func:`persistence` (``topology``): H0/H1 persistence and the paper's metrics.
- :class:`PersistenceCallback` (``callbacks``): barcodes recorded during training.

The core (``pip install hf-tsprompt``) is everything above plus the card, the Hub push and the
recipe pipeline. Three subpackages hold the rest, so the tree shows what is core
(:mod:`hf_tsprompt.extras` is the table of extras): ``viz`` (figures and the HTML report: the
``[viz]`` extra), ``embedded`` (the offline models installed from PyPI as GGUF files: the
``[embedded]`` extra converts them) and ``paper`` (the paper's ACT and DPC baselines, which
need nothing beyond the core). A missing extra raises
:class:`~hf_tsprompt.errors.MissingDependencyError` with the command that installs it.

Layers. A module imports only from its own layer or the layers listed before it, and the
imports inside one layer form no cycle; ``tests/test_layers.py`` reads this table and walks
every import of the package (those inside functions included) to enforce it. Imports inside
functions are kept for optional or heavy third-party packages, and for the lower layers that
the CLI loads only when a command needs them (so ``--help`` stays fast); the pipeline imports
at module level (the CLI imports it lazily), except the optional [viz] extra.

1. foundations: _version, errors, extras, fsutil, hyperparams, metrics, runs
2. core: topology, losses, regularizers, prompts
3. pieces: records, callbacks, cards, config, hub, trainer, sft, data, data.answers,
   data.tasks, data.custom, data.loading, data.features, embedded, models, evaluation,
   generation, distributed, paper, paper.attention, paper.calibration, paper.dpc
4. recipes: recipes
5. readers: explain, analysis, finished, viz, viz.plots, viz.report
6. pipeline: pipeline
7. entry: cli, __main__, hf_tsprompt

Foundations hold no torch code. Core is pure (tensors in, tensors out: no Trainer, no files).
Pieces train, evaluate, record and publish; ``runs`` (the run folder's layout, ``run.json``,
lock and adapter saving) sits in the foundations because the callback and the trainer write
into the run folder themselves. ``cards`` (the run's summaries and its model card) and ``hub``
(the push that publishes a run folder with no path of this machine, and the load back) are
pieces: the Trainer writes its card (``create_model_card``) and pushes its output folder
(``push_to_hub``) through them, as TRL's trainers do. Readers take a finished run folder.
No import points up a layer.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "ts_loss": "losses",
    "TSLoss": "losses",
    "TSLossOutput": "losses",
    "l2_loss": "losses",
    "pairwise_distance_loss": "losses",
    "Param": "regularizers",
    "Regularizer": "regularizers",
    "get_regularizer": "regularizers",
    "list_regularizers": "regularizers",
    "register_regularizer": "regularizers",
    "unregister_regularizer": "regularizers",
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
    "register_task": "data",
    "get_task": "data",
    "Recipe": "recipes",
    "load_recipe": "recipes",
    "train_from_recipe": "pipeline",
    "push_to_hub": "hub",
    "load_adapter": "hub",
    "MetricSource": "trainer",
    "register_metric": "metrics",
    "persistence": "topology",
    "PersistenceCallback": "callbacks",
    "read_records": "records",
}

__all__ = [
    "MetricSource",
    "Param",
    "PersistenceCallback",
    "PromptMethod",
    "Recipe",
    "Regularizer",
    "TSLoss",
    "TSLossOutput",
    "TopologicalPromptConfig",
    "TopologicalPromptTrainer",
    "TopologicalSFTConfig",
    "TopologicalSFTTrainer",
    "__version__",
    "get_prompt_method",
    "get_prompt_model",
    "get_regularizer",
    "get_task",
    "init_prompt_",
    "l2_loss",
    "list_regularizers",
    "load_adapter",
    "load_recipe",
    "pairwise_distance_loss",
    "persistence",
    "prompt_matrix",
    "push_to_hub",
    "read_records",
    "register_metric",
    "register_prompt_method",
    "register_regularizer",
    "register_task",
    "train_from_recipe",
    "ts_loss",
    "unregister_regularizer",
]

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import PersistenceCallback
    from .data import get_task, register_task
    from .hub import load_adapter, push_to_hub
    from .losses import TSLoss, TSLossOutput, l2_loss, pairwise_distance_loss, ts_loss
    from .metrics import register_metric
    from .pipeline import train_from_recipe
    from .prompts import (
        PromptMethod,
        get_prompt_method,
        get_prompt_model,
        init_prompt_,
        prompt_matrix,
        register_prompt_method,
    )
    from .recipes import Recipe, load_recipe
    from .records import read_records
    from .regularizers import (
        Param,
        Regularizer,
        get_regularizer,
        list_regularizers,
        register_regularizer,
        unregister_regularizer,
    )
    from .sft import TopologicalSFTConfig, TopologicalSFTTrainer
    from .topology import persistence
    from .trainer import MetricSource, TopologicalPromptConfig, TopologicalPromptTrainer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_tsprompt' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__
