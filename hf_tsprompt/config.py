"""The trainer's config: :class:`TopologicalPromptConfig`, ``TrainingArguments`` plus the
``ts_*`` fields (TRL's layout: ``<x>_config.py`` beside the trainer).

Its own module, apart from :mod:`hf_tsprompt.trainer`, so that a recipe can build it (a
recipe's ``training:`` section *is* this config, :func:`hf_tsprompt.recipes.training_arguments`)
without importing the trainer and what the trainer's ``push_to_hub`` reaches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .errors import ConfigError
from .regularizers import FIELD_PARAMS, WEIGHT, check_ts_settings, with_ts_fields

__all__ = ["TSArguments", "TopologicalPromptConfig"]


@with_ts_fields(
    "ts_",
    params=(
        dict | str | None,
        field(
            default=None,
            metadata={
                "help": "Parameters of a regulariser registered with "
                "hf_tsprompt.register_regularizer that have no ts_* field of their own, "
                'e.g. {"gamma": 0.3} (a JSON string on the command line).'
            },
        ),
    ),
    extra=[
        (
            "ts_adapter",
            str | None,
            field(
                default=None,
                metadata={
                    "help": "peft adapter whose prompt is regularised (default: the active one)."
                },
            ),
        )
    ],
)
class TSArguments:
    """The ``ts_*`` fields shared by :class:`TopologicalPromptConfig` and the TRL variant.

    Built from the declarations in :mod:`hf_tsprompt.regularizers` by the builder the recipe's
    ``ts:`` section uses too (:func:`~hf_tsprompt.regularizers.with_ts_fields`; paper
    symbols in brackets in each field's help; defaults follow section V-B where the paper
    gives a value): ``ts_regularizer`` (a registered name), ``ts_weight`` (lambda_ts),
    ``ts_beta_h0``, ``ts_beta_h1``, ``ts_tau``, ``ts_alpha``, ``ts_lambda_repel``,
    ``ts_lambda_attract``, ``ts_variant``, ``ts_scale`` (TSLoss's), ``ts_params`` (the
    parameters of a registered regulariser that have no field of their own) and
    ``ts_adapter``.
    """

    def validate_ts(self) -> dict[str, Any]:
        """Raise :class:`ConfigError` naming the first bad ``ts_*`` field
        (:func:`~hf_tsprompt.regularizers.check_ts_settings`, the recipe's validator too);
        return the chosen regulariser's parameters (:meth:`ts_regularizer_params`)."""
        if isinstance(self.ts_params, str):
            # A JSON object from the command line, as TrainingArguments reads its dict fields.
            self.ts_params = _json_mapping("ts_params", self.ts_params)
        return self.ts_regularizer_params()

    def ts_regularizer_params(self) -> dict[str, Any]:
        """The chosen regulariser's parameters, checked: from its ``ts_<name>`` field where
        the parameter has one, else from ``ts_params``, else the declared default.

        Raises:
            ConfigError: a bad ``ts_*`` value, or ``ts_params`` is not a mapping, names a
                parameter the regulariser does not declare or one that has a field of its
                own, or holds a bad value.
        """
        return check_ts_settings(
            self.ts_regularizer,
            {p.name: getattr(self, f"ts_{p.name}") for p in (WEIGHT, *FIELD_PARAMS)},
            self.ts_params,
            key=lambda name: f"ts_{name}",
            param_key=lambda name: f"ts_params[{name!r}]",
        )


def _json_mapping(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name}={text!r} is not valid JSON ({err}).") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object like '{{\"gamma\": 0.3}}', got {text!r}.")
    return value


@dataclass
class TopologicalPromptConfig(TrainingArguments, TSArguments):
    """``TrainingArguments`` plus the ``ts_*`` fields of :class:`TSArguments`.

    Everything else (optimiser, schedule, batch size, logging, ``report_to``) is transformers'
    own and behaves exactly as documented there.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_ts()
