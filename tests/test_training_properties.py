"""Property test (hypothesis) for a recipe's ``training:`` section (issue 18).

The section passes any ``transformers.TrainingArguments`` field through, so a bad value used to
surface minutes later, after the model had loaded and been evaluated, as a traceback from torch
or the Trainer. Guaranteed here, for ANY section of 1 to 3 entries drawn from the
``TrainingArguments`` fields, each set to a boundary value of its type (0, -1, huge, NaN, inf,
a value of the wrong type) or an unknown key:

* either the recipe is refused with a :class:`~hf_tsprompt.errors.ConfigError` that names one
  of the drawn keys, raised by :func:`hf_tsprompt.recipes.recipe_from_dict` or by
  :func:`hf_tsprompt.pipeline.training_config` (the two steps ``train`` takes before it loads a
  model; neither touches a model),
* or the config it builds trains: the real ``TopologicalPromptTrainer`` with the pipeline's
  dataset, collator and barcode callback takes an optimiser step on the tiny model (stopped
  after the first step, so a drawn ``max_steps: 10**12`` ends too);
* never any other exception.

Runs are deterministic (``derandomize=True``, no example database) so CI sees the same
examples every time; ``HF_TSPROMPT_PROPERTY_EXAMPLES`` / ``HF_TSPROMPT_PROPERTY_RANDOM`` widen
the search as in ``test_properties.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import TrainerCallback, TrainingArguments

from hf_tsprompt.errors import ConfigError
from hf_tsprompt.finished import load_data
from hf_tsprompt.pipeline import training_config
from hf_tsprompt.recipes import recipe_from_dict

from tiny import save_tiny_model, tiny_llama, tiny_recipe, tiny_tokenizer, write_tiny_gsm8k

#: About 0.05 s per refused section, 0.5-1 s per one that trains (on a busy 2-core machine).
PROPERTY = settings(
    max_examples=int(os.environ.get("HF_TSPROMPT_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    derandomize=not os.environ.get("HF_TSPROMPT_PROPERTY_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_HINTS = typing.get_type_hints(TrainingArguments)
FIELDS: tuple[str, ...] = tuple(
    sorted(f.name for f in dataclasses.fields(TrainingArguments) if f.init)
)
UNKNOWN: tuple[str, ...] = ("learnig_rate", "batch_size", "epochs", "not_a_field")
HUGE_INT, HUGE_FLOAT = 10**12, 1e12


def _scalar(tp: Any) -> Any:
    """The scalar type behind ``X | None`` (else the annotation itself)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def boundary_values(key: str) -> list[Any]:
    """0, -1, huge, NaN/inf where the type is a number; always one value of a wrong type."""
    tp = _scalar(_HINTS.get(key))
    if tp is int:
        return [0, -1, HUGE_INT, math.nan, "x"]
    if tp is float:
        return [0.0, -1.0, HUGE_FLOAT, math.nan, math.inf, "x"]
    # bool, str, enums, dicts, lists: numbers are the wrong type for all of them
    return [0, -1, HUGE_FLOAT, math.nan]


#: The number-valued fields, drawn more often: their boundary values are of the right type,
#: so they get past the type check and reach the range rules (or train).
NUMERIC: tuple[str, ...] = tuple(k for k in FIELDS if _scalar(_HINTS[k]) in (int, float))


@st.composite
def training_sections(draw: Any) -> dict[str, Any]:
    key = st.one_of(
        st.sampled_from(NUMERIC),
        st.sampled_from(NUMERIC),
        st.sampled_from(FIELDS),
        st.sampled_from(UNKNOWN),
    )
    keys = draw(st.lists(key, min_size=1, max_size=3, unique=True))
    return {k: draw(st.sampled_from(boundary_values(k) if k in FIELDS else [1])) for k in keys}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-properties")
    return root, save_tiny_model(root / "model"), write_tiny_gsm8k(root / "data")


def _raw(tiny: tuple[Path, Path, Path], training: dict[str, Any]) -> dict[str, Any]:
    root, model_dir, data_dir = tiny
    raw = tiny_recipe(
        model_dir,
        data_dir,
        name="prop",
        output_dir=str(root / "run"),
        data={"train_size": 2, "test_size": 1},
        peft={"num_virtual_tokens": 3},
        topology={"every_n_steps": 1},
        training={"max_steps": 2, **training},
    )
    del raw["evaluation"]  # the recipe's own evaluation defaults, as drawn sections expect
    return raw


class _StopAfterOneStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True


def _train_one_step(recipe: Any, args: Any) -> int:
    """What ``train_from_recipe`` does after its checks, on the tiny model, for one step."""
    from hf_tsprompt.callbacks import PersistenceCallback
    from hf_tsprompt.data import TrainCollator, build_train_dataset
    from hf_tsprompt.prompts import get_prompt_model
    from hf_tsprompt.trainer import TopologicalPromptTrainer

    tokenizer = tiny_tokenizer()
    model = get_prompt_model(
        tiny_llama(vocab_size=len(tokenizer)),
        recipe.peft.method,
        num_virtual_tokens=recipe.peft.num_virtual_tokens,
    )
    task, train_rows, _ = load_data(recipe)
    trainer = TopologicalPromptTrainer(
        model=model,
        args=args,
        train_dataset=build_train_dataset(
            tokenizer, task, train_rows, max_length=recipe.data.max_length
        ),
        data_collator=TrainCollator(tokenizer),
        callbacks=[PersistenceCallback(every_n_steps=1), _StopAfterOneStep()],
    )
    args.disable_tqdm = True
    trainer.train()
    return int(trainer.state.global_step)


@PROPERTY
@given(section=training_sections())
def test_a_training_section_is_refused_by_name_or_trains(tiny, section: dict[str, Any]) -> None:
    raw = _raw(tiny, section)
    try:
        recipe = recipe_from_dict(raw, base_dir=tiny[0])
        args = training_config(recipe, tiny[0] / "run")
    except ConfigError as err:
        text = " ".join(str(err).split())
        named = [k for k in section if f"training.{k}" in text]
        assert named, f"{text!r} names none of {sorted(section)}"
        return
    assert _train_one_step(recipe, args) == 1


@pytest.mark.parametrize(
    "key,value",
    [
        ("learning_rate", -1.0),
        ("learning_rate", math.nan),
        ("adam_epsilon", -1.0),
        ("adam_beta1", 1.0),
        ("adam_beta2", -0.5),
        ("per_device_train_batch_size", 0),
        ("gradient_accumulation_steps", 0),
        ("warmup_steps", math.nan),
        ("dataloader_num_workers", -1),
        ("label_smoothing_factor", 0.1),
        ("neftune_noise_alpha", -1.0),
        ("lr_scheduler_type", "cosine_with_min_lr"),
        ("lr_scheduler_type", "warmup_stable_decay"),
        ("lr_scheduler_kwargs", {"bogus": 1}),
        ("optim_args", "garbage"),
        ("eval_on_start", True),
    ],
)
def test_each_refused_value_is_one_the_trainer_or_torch_rejects(tiny, key: str, value: Any):
    """Independent truth for the rules in ``recipes._check_training``: the same value,
    given straight to ``TopologicalPromptConfig`` (bypassing the recipe), fails inside the
    Trainer or torch once training starts."""
    with pytest.raises(ConfigError, match=f"training.{key}"):
        recipe_from_dict(_raw(tiny, {key: value}), base_dir=tiny[0])
    recipe = recipe_from_dict(_raw(tiny, {}), base_dir=tiny[0])
    args = training_config(recipe, tiny[0] / "run")
    setattr(args, key, value)  # past the recipe's checks, as the value was before issue 18
    with pytest.raises((ValueError, TypeError, RuntimeError, ZeroDivisionError)):
        _train_one_step(recipe, args)
