"""Recipes: one YAML file describing a whole training run, validated before anything loads.

A recipe has seven sections, each a dataclass below with documented fields::

    name: smollm2-gsm8k-tsloss        # run name; the run folder is runs/<name> by default
    output_dir: runs/smollm2-gsm8k    # optional
    seed: 0
    model:      {name_or_path: smollm2-135m-instruct, dtype: float32}   # + hub_id: org/name
    data:       {task: gsm8k, source: ../../shared/data/gsm8k, train_size: 10, test_size: 100}
                # your own data: {task: custom, source: my.jsonl, scorer: exact}
    peft:       {method: prompt_tuning, num_virtual_tokens: 20, init: normal, init_std: 0.02}
    ts:         {regularizer: tsloss, weight: 1.0, tau: 0.1, alpha: 10.0, ...}
    topology:   {every_n_steps: 20, evaluate: train}
    training:   {learning_rate: 5.0e-5, num_train_epochs: 300, ...}   # any TrainingArguments field
    evaluation: {batch_size: 8, max_new_tokens: 256, before: true, after: true}

Relative paths (``data.source``, ``model.name_or_path``) are resolved against the recipe
file's folder when such a path exists there, so a recipe works from any working directory,
else against the working directory (``--set data.source=my.jsonl``); anything else
(``openai/gsm8k``) is taken as a Hub id. ``output_dir`` is relative to the working directory.
``--set section.key=value`` overrides any field (values parsed as YAML:
``--set training.learning_rate=3e-2``).

Validation happens here, before any model or dataset is touched: an unknown key, a value of
the wrong type or a missing local file raises :class:`~hf_tsprompt.errors.ConfigError` /
:class:`~hf_tsprompt.errors.MissingFileError` naming the key (with a "did you mean").

The ``training`` section *is* the trainer's config (TRL's way): :func:`load_recipe` builds the
``TopologicalPromptConfig`` from it (:func:`training_arguments`), so transformers' own
validation runs here, and so do torch's optimizer and transformers' scheduler, built on one
dummy parameter; their errors name the recipe key (``training.optim: adamw is not a valid
OptimizerNames, ...``). Only what transformers does not check and this trainer needs is
checked by this module, in one place (``_check_training``). What depends on the machine (fp16
without a GPU, a missing optimizer or logging package) fails in ``pipeline.training_config``,
also before any model loads. The ``ts`` section is checked by the validator of the ``ts_*``
fields (:func:`hf_tsprompt.regularizers.check_ts_settings`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .embedded import DEFAULT_MODEL
from .errors import ConfigError, MissingFileError
from .models import is_hub_id
from .prompts import DEFAULT_PROMPT_METHOD, PROMPT_INITS, prompt_method_names, prompt_methods
from .regularizers import (
    DEFAULT_REGULARIZER,
    FIELD_PARAMS,
    WEIGHT,
    check_ts_settings,
    get_regularizer,
    list_regularizers,
    with_ts_fields,
)
from .runs import read_recipe_text

__all__ = [
    "PAPER_TRAINING",
    "TRAINING_DEFAULTS",
    "DataSection",
    "EvaluationSection",
    "ModelSection",
    "PeftSection",
    "Recipe",
    "TSSection",
    "TopologySection",
    "load_recipe",
    "load_run_recipe",
    "parse_overrides",
    "recipe_from_dict",
    "recipe_variants",
    "training_arguments",
]

# Paper settings (section V-B).
PAPER_TRAINING: dict[str, Any] = {
    "learning_rate": 5e-5,
    "weight_decay": 0.01,
    "adam_epsilon": 1e-8,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 300,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0.1,  # a float in [0, 1) is a ratio of the total steps
    "optim": "adamw_torch",
}


@dataclass
class ModelSection:
    """The base causal LM."""

    name_or_path: str = DEFAULT_MODEL
    """Hub id, local folder, or an embedded name (``smollm2-135m-instruct``, ``gemma-3-270m``)."""
    hub_id: str | None = None
    """The base model's Hub id (``org/name``), recorded in the adapter and on the card, for a
    local folder that does not say which Hub model it is. Embedded names, Hub ids and HF cache
    snapshot folders need none (``hf_tsprompt.models.resolve_model_name``)."""
    dtype: str = "float32"
    """Weights dtype: ``float32``, ``bfloat16`` or ``float16``."""


@dataclass
class DataSection:
    """The task and the paper's subsets (section V-B).

    ``task: custom`` trains on your own rows in TRL's prompt-completion or conversational
    format (``hf_tsprompt.data.CustomTask``); ``columns``, ``scorer``, ``answer_pattern``,
    ``train_split`` and ``test_split`` apply to it (and to plugin tasks that declare them).
    """

    task: str = "gsm8k"
    """A registered task (``hf_tsprompt.data.TASKS``): gsm8k, mmlu, bbh, mmlu_cf, ..., or
    custom (your own data)."""
    source: str | None = None
    """Hub dataset id or local path; null = the task's own Hub id (custom: required)."""
    config: str | None = None
    """Dataset config / subset (e.g. a BBH task name, a LongBench subset, a Hub config)."""
    train_split: str = "train"
    """custom: the training split, a ``datasets`` split expression (``train``,
    ``train[:80%]``). A source with one split (a single file) is one pool: test rows first,
    training rows after them, disjoint."""
    test_split: str = "test"
    """custom: the test split (``test``, ``validation``, ``train[80%:]``)."""
    columns: dict[str, str] | None = None
    """custom: your column names for TRL's roles, ``{prompt: q, completion: a}`` or
    ``{messages: chat}``; null = read the format off the columns (as TRL does)."""
    scorer: str = "exact"
    """custom: how a generation is scored against the completion: exact (after
    normalisation) | contains | choice (option letter) | number | regex."""
    answer_pattern: str | None = None
    """custom, with ``scorer: regex``: the pattern whose first group (or match) is the answer."""
    train_size: int = 10
    """k training examples: 1 = single-sample, 10 = multi-sample (the paper's settings)."""
    test_size: int = 100
    """Held-out examples scored before and after training (the paper: 100)."""
    max_length: int = 512
    """Token budget of one training example (prompt + target); longer prompts are cut."""


@dataclass
class PeftSection:
    """The prompt-learning method (see ``hf_tsprompt.prompts``)."""

    method: str = DEFAULT_PROMPT_METHOD
    """A registered prompt method: prompt_tuning | p_tuning | prefix_tuning | p_tuning_v2, or a
    plugin's (``hf_tsprompt.prompts.register_prompt_method``)."""
    num_virtual_tokens: int = 20
    """n, the number of virtual tokens = points of the cloud."""
    init: str = "normal"
    """normal (N(0, init_std^2), the paper) | random (peft's N(0, 1)) | text | sample_vocab."""
    init_std: float = 0.02
    init_text: str | None = None
    """Text for ``init: text``."""


@with_ts_fields("", params=(dict[str, Any], field(default_factory=dict)))
class TSSection:
    """The regulariser (``TopologicalPromptConfig.ts_*``); see ``hf_tsprompt.regularizers``.

    Keys: ``regularizer`` (a registered name: tsloss | l2 | pdloss | none, or one added with
    ``hf_tsprompt.register_regularizer``), ``weight`` (lambda_ts), TSLoss's ``beta_h0``,
    ``beta_h1``, ``tau``, ``alpha``, ``lambda_repel``, ``lambda_attract``, ``variant`` (soft,
    the paper | exact, true persistence pairs) and ``scale`` (absolute, the paper | mean,
    distances divided by their mean: tau, alpha relative), and ``params``: the parameters of
    a registered regulariser that have no key of their own (``params: {gamma: 0.3}``).
    """

    def ts_arguments(self) -> dict[str, Any]:
        """The ``ts_*`` keyword arguments of ``TopologicalPromptConfig``: ``ts.<key>`` is
        ``ts_<key>`` (both are built by ``regularizers.with_ts_fields``)."""
        return {
            f"ts_{f.name}": dict(value) if isinstance(value, dict) else value
            for f in dataclasses.fields(self)
            for value in [getattr(self, f.name)]
        }


@dataclass
class TopologySection:
    """The barcode schedule (``PersistenceCallback``)."""

    every_n_steps: int | None = 20
    every_n_epochs: int | None = None
    evaluate: str = "train"
    """Accuracy recorded at each snapshot: none | train (the k training examples, Table IV)
    | test (``eval_size`` test examples, Table II) | both."""
    eval_size: int = 20
    """Test examples scored at each snapshot when ``evaluate`` is test or both."""


@dataclass
class EvaluationSection:
    """Greedy-generation accuracy on the test subset, before and after training."""

    batch_size: int = 8
    max_new_tokens: int = 256
    before: bool = True
    after: bool = True
    calibration: str = "none"
    """none | act: also score with ACT attention calibration (Table III's ACT row)."""
    dpc: bool = False
    """Also score with dynamic prompt corruption (Table III's DPC row)."""


@dataclass
class Recipe:
    """A whole run. Build with :func:`load_recipe` (validated) or directly in Python."""

    name: str = "run"
    output_dir: str | None = None
    """Run folder; default ``runs/<name>``."""
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    peft: PeftSection = field(default_factory=PeftSection)
    ts: TSSection = field(default_factory=TSSection)
    topology: TopologySection = field(default_factory=TopologySection)
    training: Any = None
    """The ``training:`` section *is* the trainer's config: a ``TopologicalPromptConfig``
    (a ``TrainingArguments``) built by :func:`load_recipe` from the section's keys (any
    ``TrainingArguments`` field) and what the other sections fix (:func:`training_arguments`),
    so transformers validates it before any model loads. Given as a mapping (a recipe built in
    Python), it is that mapping's keys; ``pipeline.training_config`` builds the config."""
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    training_given: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})
    """The ``training`` keys the recipe gave (what ``recipe.yaml`` records: the config holds
    every field, defaults included)."""
    base_dir: str = field(default=".", metadata={"internal": True})
    """Folder relative paths are resolved against (the recipe file's folder)."""

    def __post_init__(self) -> None:
        if isinstance(self.training, dict):
            self.training_given, self.training = dict(self.training), None

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain YAML-ready data (without internal fields, and without
        ``ts.params`` when the regulariser has none)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            if f.name == "training":
                value = dict(self.training_given)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        if not out["ts"]["params"]:
            del out["ts"]["params"]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "peft": PeftSection,
    "ts": TSSection,
    "topology": TopologySection,
    "evaluation": EvaluationSection,
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "peft.method": prompt_method_names(),  # re-read at validation: registered methods count
    "peft.init": PROMPT_INITS,
    "evaluation.calibration": ("none", "act"),
    "topology.evaluate": ("none", "train", "test", "both"),
}
_POSITIVE: tuple[str, ...] = (
    "data.train_size",
    "data.test_size",
    "data.max_length",
    "peft.init_std",
    "evaluation.batch_size",
    "evaluation.max_new_tokens",
    "topology.every_n_steps",
    "topology.every_n_epochs",
    "topology.eval_size",
)
_NON_NEGATIVE: tuple[str, ...] = ("seed",)


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _check_type(where: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against an annotation (scalars, optionals, ``list[X]``, ``dict``,
    ``Literal``, classes); ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(where, value, option)
            except ConfigError:
                continue
        names = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"{where} must be {names}, got {value!r} ({type(value).__name__}).")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads 3e-2 (no dot) as a string; accept what is plainly a number.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    elif origin is list or tp is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    elif origin is typing.Literal:
        if any(value is option for option in typing.get_args(tp)):
            return value
    elif isinstance(tp, type) and tp is not typing.Any:
        if isinstance(value, tp):  # e.g. an enum or config class given from Python
            return value
    else:
        return value
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}).")


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe section {name!r} must be a mapping, got {type(raw).__name__}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            hint = _ts_key_hint(raw, str(key)) if cls is TSSection else ""
            raise ConfigError(
                f"unknown key {name}.{key} in the recipe.{hint or _suggest(str(key), known)} "
                f"Known keys of {name!r}: {', '.join(sorted(known))}."
            )
        values[key] = _check_type(f"{name}.{key}", value, hints[key])
    return cls(**values)


#: TrainingArguments fields the pipeline sets itself: where each one belongs instead.
_TRAINING_OWNED: dict[str, str] = {
    "output_dir": "training.output_dir is set from the recipe's top-level output_dir; move it "
    "there.",
    "seed": "training.seed is set from the recipe's top-level seed (it also seeds the prompt "
    "init and the data subsets); move it there.",
    "hub_token": "training.hub_token: never put a token in a recipe (recipes are saved into the "
    "run folder and pushed). Use `hf auth login` or the HF_TOKEN environment variable.",
    "push_to_hub": "training.push_to_hub: the Trainer would push bare checkpoints without the "
    "card; push the finished run with `hf-tsprompt push RUN_DIR --repo-id USER/NAME`.",
    "resume_from_checkpoint": "training.resume_from_checkpoint: pass --resume to "
    "`hf-tsprompt train` (it continues from the run folder's last complete checkpoint).",
    "local_rank": "training.local_rank is set by the launcher (torchrun / accelerate launch) "
    "for each process; remove it from the recipe.",
}
#: Pipeline defaults under the recipe's own training values (see pipeline.training_config).
TRAINING_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "logging_steps": 10,
    "save_strategy": "no",
}


def _given_training(raw: Any) -> dict[str, Any]:
    """The ``training`` keys as given, type-checked against ``TrainingArguments``' own
    annotations (the dataclass does not check types; its CLI parser would)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe section 'training' must be a mapping, got {type(raw).__name__}.")
    from transformers import TrainingArguments

    fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    hints = typing.get_type_hints(TrainingArguments)
    out = {}
    for key, value in raw.items():
        key = str(key)
        if key in _TRAINING_OWNED:
            raise ConfigError(_TRAINING_OWNED[key])
        if key.startswith("ts_"):
            raise ConfigError(
                f"training.{key}: regulariser settings belong in the 'ts' section (ts.{key[3:]})."
            )
        if key not in fields:
            raise ConfigError(
                f"unknown key training.{key}: not a transformers TrainingArguments field."
                f"{_suggest(key, fields)}"
            )
        out[key] = _check_type(f"training.{key}", value, hints.get(key))
    return out


def _has_accelerator() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or torch.backends.mps.is_available()
    )


def training_arguments(recipe: Recipe, given: dict[str, Any] | None = None) -> Any:
    """The recipe's ``TopologicalPromptConfig``: the ``training`` keys (``given``, default
    ``recipe.training_given``) over :data:`TRAINING_DEFAULTS`, with what the other sections
    fix: ``output_dir`` (the run folder), ``seed``, the ``ts_*`` fields (``ts:``) and
    ``use_cpu`` (without an accelerator, say so: only then does ``TrainingArguments`` set up
    gloo DDP under torchrun / accelerate launch).

    transformers validates it (``TrainingArguments.__post_init__``); its errors become
    :class:`ConfigError`s naming the recipe key (``training.optim: adamw is not a valid
    OptimizerNames, ...``). Then :func:`_check_training` refuses what transformers does not
    check and this trainer needs. No model is loaded.
    """
    from .config import TopologicalPromptConfig  # lazy: transformers; --help and checks stay light

    given = recipe.training_given if given is None else given
    values = {**TRAINING_DEFAULTS, "use_cpu": not _has_accelerator(), **given}
    try:
        args = TopologicalPromptConfig(
            output_dir=str(recipe.run_dir),
            seed=recipe.seed,
            **recipe.ts.ts_arguments(),
            **values,
        )
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, NotImplementedError) as err:
        raise _training_error(err, given) from None
    _check_training(args, given, recipe.peft.method)
    return args


def _training_error(err: BaseException, given: dict[str, Any], keys: Any = None) -> ConfigError:
    """transformers' (or torch's) own error, naming the recipe keys it is about: the given
    ``keys`` (default: all given ones) that the message names, else whose value it quotes,
    else all of them; with a "did you mean" where it lists the choices."""

    # A KeyError's str() is the repr of its key.
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err).strip()
    candidates = [k for k in (keys if keys is not None else given) if k in given]
    named = [k for k in candidates if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", text)]
    if not named:
        named = [
            k
            for k in candidates
            if isinstance(given[k], (str, int, float))
            and not isinstance(given[k], bool)
            and re.search(rf"(?<![\w.-]){re.escape(str(given[k]))}(?![\w.])", text)
        ]
    named = named or (candidates if keys is not None else [])
    where = " / ".join(f"training.{k}" for k in named) or "the recipe's training section"
    hint = ""
    choices = re.search(r"select one of \[(.*?)\]", text)
    if choices and len(named) == 1:
        hint = _suggest(str(given[named[0]]), re.findall(r"'([^']*)'", choices.group(1)))
    return ConfigError(f"{where}: {text}{hint}")


#: What ``TrainingArguments`` does not check and torch or this trainer needs, refused before
#: any model loads (checked once, in :func:`_check_training`). Each range says why.
_TRAINING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    # torch refuses lr < 0 only when the optimizer is built; lr = 0 is the issue-18 rule.
    "learning_rate": (lambda x: x > 0, "> 0 (at 0 the prompt never moves)"),
    # the Trainer passes it in a parameter group, which torch does not check.
    "weight_decay": (lambda x: x >= 0, ">= 0"),
    # DataLoader refuses it, after the model loads.
    "per_device_train_batch_size": (lambda x: x >= 1, ">= 1"),
    # DataLoader refuses it, after the model loads.
    "dataloader_num_workers": (lambda x: x >= 0, ">= 0"),
    # the Trainer's NEFTune hook scales noise by it; a negative one fails there.
    "neftune_noise_alpha": (lambda x: x > 0, "> 0 (or null for no NEFTune noise)"),
    # the Trainer divides the loss by it.
    "gradient_accumulation_steps": (lambda x: x >= 1, ">= 1"),
    # 0 or < -1 trains nothing, silently.
    "max_steps": (lambda x: x == -1 or x >= 1, ">= 1, or -1 to train num_train_epochs epochs"),
    # the Trainer's label smoother fails on the shapes: the logits include the virtual tokens.
    "label_smoothing_factor": (lambda x: x == 0, "0 (not supported with soft prompts)"),
}
#: Features that need an evaluation set; hf-tsprompt gives the Trainer none (it scores
#: accuracy itself: ``evaluation`` and ``topology.evaluate``).
_NEEDS_EVAL = (
    "hf-tsprompt trains without an evaluation set (accuracy is scored by the recipe's "
    "'evaluation' section and, at each barcode, by topology.evaluate)"
)
#: The keys that feed the optimizer and the scheduler (their errors name these).
_OPTIMIZER_KEYS = (
    "optim",
    "optim_args",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
)
_SCHEDULER_KEYS = ("lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps")


def _check_training(args: Any, given: dict[str, Any], peft_method: str) -> None:
    """The one place for what transformers does not check at construction: refuse here what
    torch or the Trainer would reject only after the model has loaded, and what this trainer
    needs. ``args`` is the built config; messages name the recipe's ``training`` keys."""

    def bad(key: str, accepted: str) -> ConfigError:
        return ConfigError(f"training.{key}={given[key]!r} is not accepted; it must be {accepted}.")

    for key, value in given.items():
        # NaN passes every range (each comparison is False) and reaches the optimizer.
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(key, "a finite number")
        if key in _TRAINING_RANGES and value is not None and not _TRAINING_RANGES[key][0](value):
            raise bad(key, _TRAINING_RANGES[key][1])
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ConfigError(
            f"training.num_train_epochs={args.num_train_epochs!r} with "
            "max_steps -1 trains nothing; set num_train_epochs > 0 or max_steps >= 1."
        )
    # The Trainer looks log levels up only when it starts.
    from transformers.training_args import trainer_log_levels

    for key in ("log_level", "log_level_replica"):
        if key in given and given[key] not in trainer_log_levels:
            raise ConfigError(
                f"training.{key}={given[key]!r} is not allowed; choose one of "
                f"{', '.join(trainer_log_levels)}.{_suggest(str(given[key]), trainer_log_levels)}"
            )
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no":
        raise ConfigError(f"training.eval_strategy must be 'no': {_NEEDS_EVAL}.")
    for key in ("eval_on_start", "do_eval", "load_best_model_at_end"):
        if given.get(key):
            raise ConfigError(f"training.{key} must be false: {_NEEDS_EVAL}.")
    if str(getattr(args.save_strategy, "value", args.save_strategy)) == "best":
        raise ConfigError(
            f"training.save_strategy 'best' needs a metric: {_NEEDS_EVAL}; use "
            "'steps', 'epoch' or 'no'."
        )
    checkpointable = [m.name for m in prompt_methods() if m.supports_gradient_checkpointing]
    if args.gradient_checkpointing and peft_method not in checkpointable:
        raise ConfigError(
            f"training.gradient_checkpointing does not work with peft.method={peft_method!r}: "
            "the prefix enters every layer as a key/value cache, which checkpointed layers do "
            f"not accept. Set it to false, or use {' or '.join(checkpointable)}."
        )
    _build_optimizer_and_scheduler(args, given)


def _build_optimizer_and_scheduler(args: Any, given: dict[str, Any]) -> None:
    """Build the optimizer (torch's own ones: their ranges of lr, betas, eps)
    and the scheduler (its arguments) as the Trainer will, on one dummy parameter, so their
    own checks run now; an optimizer from another package is resolved on the training
    machine instead (``pipeline.training_config``: it may not be installed here)."""
    import torch
    from transformers import Trainer
    from transformers.optimization import get_scheduler

    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    except ImportError:
        return  # a package missing here: checked on the machine that trains
    except (ValueError, TypeError) as err:  # e.g. optim_args that are not key=value pairs
        raise _training_error(err, given, _OPTIMIZER_KEYS) from None
    if not getattr(cls, "__module__", "").startswith("torch.optim"):
        return
    try:
        optimizer = cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except (ValueError, TypeError) as err:
        raise _training_error(err, given, _OPTIMIZER_KEYS) from None
    try:
        get_scheduler(
            args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=args.get_warmup_steps(100),
            num_training_steps=100,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
    except (ValueError, TypeError) as err:
        raise _training_error(err, given, _SCHEDULER_KEYS) from None


def _get_path(recipe: Recipe, dotted: str) -> Any:
    obj: Any = recipe
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _validate_ts(ts: TSSection) -> None:
    """The ``ts`` section, by the validator ``TopologicalPromptConfig`` uses too
    (:func:`~hf_tsprompt.regularizers.check_ts_settings`), keys in YAML spelling; the
    ``params`` values are kept as checked (an int given for a float parameter is a float)."""
    values = check_ts_settings(
        ts.regularizer,
        {p.name: getattr(ts, p.name) for p in (WEIGHT, *FIELD_PARAMS)},
        ts.params,
        key=lambda name: f"ts.{name}",
        param_key=lambda name: f"ts.params.{name}",
    )
    ts.params = {key: values[key] for key in ts.params}


def _ts_key_hint(raw: dict[str, Any], key: str) -> str:
    """Where a misplaced ``ts.<key>`` belongs: a registered regulariser's parameter that has
    no key of its own goes under ``ts.params``."""
    name = raw.get("regularizer", DEFAULT_REGULARIZER)
    if not (isinstance(name, str) and name in list_regularizers()):
        return ""
    if any(p.name == key for p in get_regularizer(name).params):
        return (
            f" {key} is a parameter of regulariser {name!r}: put it under ts.params "
            f"(ts: {{params: {{{key}: ...}}}})."
        )
    return ""


def _validate_task(recipe: Recipe, *, check_sources: bool) -> None:
    """``data.task`` is registered (read now: plugin tasks count), the ``data`` keys that only
    some tasks take keep their defaults elsewhere, and (``check_sources``) the task accepts
    its config and options: no model or dataset is read, only paths are looked at."""
    from .data import TASKS, get_task, get_task_class  # lazy: datasets, loaded only to check a task

    data = recipe.data
    try:
        cls = get_task_class(data.task)
    except ConfigError:
        names = sorted(TASKS)
        raise ConfigError(
            f"data.task={data.task!r} is not a registered task; choose one of "
            f"{', '.join(names)}.{_suggest(str(data.task), names)} Your own data: data.task: "
            "custom with data.source: FILE or Hub id; a new task: a @register_task class in a "
            "module named with hf-tsprompt --plugin MODULE."
        ) from None
    defaults = DataSection()
    option_keys = ("columns", "scorer", "answer_pattern", "train_split", "test_split")
    for key in option_keys:
        if key not in cls.options and getattr(data, key) != getattr(defaults, key):
            takers = sorted(name for name, c in TASKS.items() if key in c.options)
            raise ConfigError(
                f"data.{key} applies to task {' or '.join(takers) or 'custom'} only, not to "
                f"data.task={data.task!r}; remove data.{key}."
            )
    if check_sources:
        options = {key: getattr(data, key) for key in cls.options if hasattr(data, key)}
        get_task(data.task, data.config, **options)


def _validate_values(recipe: Recipe) -> None:
    for dotted, choices in {**_CHOICES, "peft.method": prompt_method_names()}.items():
        value = _get_path(recipe, dotted)
        if value not in choices:
            raise ConfigError(
                f"{dotted}={value!r} is not allowed; choose one of {', '.join(choices)}."
                f"{_suggest(str(value), choices)}"
            )
    for dotted in _POSITIVE:
        value = _get_path(recipe, dotted)
        if value is not None and value <= 0:
            raise ConfigError(f"{dotted} must be > 0, got {value}.")
    for dotted in _NON_NEGATIVE:
        if _get_path(recipe, dotted) < 0:
            raise ConfigError(f"{dotted} must be >= 0, got {_get_path(recipe, dotted)}.")
    _validate_ts(recipe.ts)
    if recipe.seed >= 2**32:
        raise ConfigError(f"seed must be below 2**32 (torch's limit), got {recipe.seed}.")
    if recipe.peft.num_virtual_tokens < 3:
        raise ConfigError(
            "peft.num_virtual_tokens must be >= 3 (a point cloud needs 3 points for topology), "
            f"got {recipe.peft.num_virtual_tokens}."
        )
    if recipe.model.hub_id is not None and not is_hub_id(recipe.model.hub_id):
        raise ConfigError(
            f"model.hub_id must be a Hub model id of the form 'org/name' (the base model as "
            f"published on the Hub), got {recipe.model.hub_id!r}."
        )
    if recipe.peft.init == "text" and not recipe.peft.init_text:
        raise ConfigError("peft.init is 'text' but peft.init_text is empty; give the init text.")
    if not recipe.name or any(c in recipe.name for c in "/\\\n") or recipe.name in (".", ".."):
        raise ConfigError(f"name must be a plain run name (no slashes), got {recipe.name!r}.")


def _resolve_local(
    base: Path, value: str | None, *, key: str, must_exist: bool = False
) -> str | None:
    """A path relative to the recipe's folder (else the working directory) if it exists
    there; else the value unchanged (a Hub id).
    ``key`` names the recipe key in messages; ``must_exist`` refuses an absolute path that
    does not exist (a ConfigError naming the key)."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        if must_exist and not p.exists():
            raise ConfigError(f"{key}: {value} does not exist; fix the path.")
        return str(p)
    for candidate in (base / p, Path.cwd() / p):  # the recipe's folder, then (--set) the cwd
        if candidate.exists():
            return str(candidate.resolve())
    looks_local = (
        value.startswith((".", "~"))
        or value.count("/") > 1
        or p.suffix in (".jsonl", ".json", ".parquet", ".csv", ".gguf")
    )
    if looks_local:
        raise ConfigError(
            f"{key}: {value} does not exist (looked relative to the recipe's folder {base} "
            "and to the working directory); fix the path, or give a Hub id like "
            "'openai/gsm8k'."
        )
    return value


def recipe_from_dict(
    raw: Any,
    *,
    base_dir: str | Path = ".",
    check_sources: bool = True,
    build_training: bool = True,
) -> Recipe:
    """Validate a parsed recipe mapping and build a :class:`Recipe`.

    ``check_sources`` (default) also refuses a ``data.source`` path that does not exist and
    builds the task once to check its config and options; a finished run's saved recipe is
    read without (its data may have moved since; ``push`` does not need it).
    ``build_training`` (default) builds ``recipe.training``, the trainer's config
    (:func:`training_arguments`); a finished run's recipe is read without, as building it
    sets up this machine's devices and may need what only the training machine had (``tf32``,
    a DeepSpeed file): its ``training`` keys are type-checked, ``recipe.training`` is None."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"a recipe must be a YAML mapping of sections, got {type(raw).__name__}; see "
            "recipes/smollm2-gsm8k.yaml for an example."
        )
    known = {f.name for f in dataclasses.fields(Recipe) if not f.metadata.get("internal")}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"unknown top-level key {key!r} in the recipe.{_suggest(str(key), known)} "
                f"Known keys: {', '.join(sorted(known))}."
            )
    hints = typing.get_type_hints(Recipe)
    kwargs: dict[str, Any] = {}
    for key in ("name", "output_dir", "seed"):
        if key in raw:
            kwargs[key] = _check_type(key, raw[key], hints[key])
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build_section(name, cls, raw.get(name))
    training = _given_training(raw.get("training"))
    base = Path(base_dir)
    recipe = Recipe(base_dir=str(base), training_given=training, **kwargs)
    _validate_values(recipe)
    recipe.data.source = _resolve_local(
        base, recipe.data.source, key="data.source", must_exist=check_sources
    )
    recipe.model.name_or_path = (
        _resolve_local(base, recipe.model.name_or_path, key="model.name_or_path") or ""
    )
    _validate_task(recipe, check_sources=check_sources)
    if recipe.output_dir is not None:
        out = Path(recipe.output_dir).expanduser()
        recipe.output_dir = str(out if out.is_absolute() else Path.cwd() / out)
    if build_training:
        recipe.training = training_arguments(recipe)
    return recipe


def parse_overrides(overrides: typing.Sequence[str]) -> dict[str, Any]:
    """``["training.learning_rate=3e-2", "ts.weight=0"]`` -> a nested mapping (YAML values)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value.")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: the key is empty or malformed.")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err}).") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set for {part!r}.")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(
            f"recipe {path} not found. Recipes shipped with hf-tsprompt are in recipes/ "
            "(e.g. recipes/smollm2-gsm8k.yaml)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"recipe {path} is not valid YAML{where}: {problem}. Fix the syntax there (indent "
            "with spaces, not tabs; close every bracket and quote)."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {path} is not UTF-8 text; save it as UTF-8.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"recipe {path} must be a YAML mapping of sections, got {type(raw).__name__}; "
            "write `section: {key: value}` lines (see recipes/smollm2-gsm8k.yaml)."
        )
    return raw


def _resolve_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at ``path`` merged over its ``base:`` chain (paths relative to each file).

    Relative paths inside a base (``data.source``) are rewritten to absolute ones, so they
    keep pointing where the base meant wherever the including recipe lives.
    """
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"recipe base chain loops: {chain}.")
    raw = _read_yaml_mapping(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"base in {path} must be a path to another recipe, got {base!r}.")
    base_path = (path.parent / base).resolve()
    parent = _resolve_bases(base_path, (*seen, path))
    for section, key in (("data", "source"), ("model", "name_or_path")):
        value = (parent.get(section) or {}).get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            candidate = base_path.parent / value
            if candidate.exists():
                parent[section][key] = str(candidate.resolve())
    parent.pop("name", None)  # a base never names the run
    return _merge(parent, raw)


def load_recipe(
    path: str | Path, overrides: typing.Sequence[str] = (), *, variant: str | None = None
) -> Recipe:
    """Read a recipe file (with its ``base:`` chain), apply a variant and ``--set`` overrides,
    and validate it. The default name is the file's stem (plus ``-<variant>``).

    A recipe may declare ``variants: {name: {section: {key: value}}}``: named overrides for the
    baselines of the same setup (e.g. ``soft-prompt``, ``l2``, ``prefix-tuning``), selected
    with ``variant=`` / ``hf-tsprompt train RECIPE --variant NAME``.
    """
    path = Path(path)
    raw = _resolve_bases(path)
    raw.setdefault("name", path.stem)
    variants = raw.pop("variants", None) or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"variants in {path} must be a mapping of name -> overrides.")
    if variant is not None:
        if variant not in variants:
            known = ", ".join(sorted(variants)) or "none"
            raise ConfigError(
                f"recipe {path} has no variant {variant!r}.{_suggest(variant, variants)} "
                f"Its variants: {known}."
            )
        chosen = variants[variant]
        if not isinstance(chosen, dict):
            raise ConfigError(f"variant {variant!r} in {path} must be a mapping of overrides.")
        raw = _merge(raw, chosen)
        raw["name"] = f"{raw['name']}-{variant}"
    merged = _merge(raw, parse_overrides(overrides))
    return recipe_from_dict(merged, base_dir=path.resolve().parent)


def recipe_variants(path: str | Path) -> list[str]:
    """The names of the variants a recipe file (or its bases) declares."""
    return sorted((_resolve_bases(Path(path)).get("variants") or {}).keys())


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe saved in a run folder (``<run>/recipe.yaml``), validated, without
    its data sources or its training config (``recipe.training`` is None; see
    :func:`recipe_from_dict`)."""
    raw, _ = read_recipe_text(run_dir, strict=True)
    return recipe_from_dict(raw, base_dir=run_dir, check_sources=False, build_training=False)
