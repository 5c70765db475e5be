"""Right ``PeftModel.generate`` for prompt-learning adapters, decided by behaviour.

**What is wrong upstream.** Greedy ``generate`` on a peft prompt-learning model should produce
what greedy decoding with peft's own *training* forward produces (the virtual tokens or the
prefix inserted once, in front of the whole unpadded sequence, no cache), for one row alone
and for each row of a left-padded batch, with and without the KV cache. Measured with the
check below on a tiny Llama:

- peft 0.21.2 + transformers 5.24.0: transformers 5 renamed the cache argument of
  ``prepare_inputs_for_generation`` to ``cache``; peft still reads ``past_key_values``, so with
  the cache on it re-inserts the soft prompt in front of every new token (prompt tuning,
  P-tuning) or loses the prefix (prefix tuning, which is wrong uncached too);
- peft 0.22.0 + transformers 5.25.0: peft reads the cache under its new name, and one row alone
  is right for prompt tuning and P-tuning, but peft still drops generate's position ids
  ("prompt learning methods ignore them"), so in a left-padded batch the padding sits between
  the virtual tokens and the text and a padded row decodes differently from the same row
  alone; prefix tuning with ``use_cache=False`` raises a shape error (the model hands back the
  cache it was given and peft feeds it in again).

**The check** (:func:`check`) runs that comparison itself: for every registered prompt method,
a tiny Llama built from a config (seeded, no download, about a second for all methods), a
single row and a left-padded batch of two, cached and uncached, once with peft's own
``generate`` and once with the fix below. It is never decided by reading peft's code or
version numbers, so a fixed peft is recognised as fixed and a changed peft is not patched
blindly. The result is remembered per process for the installed peft and transformers and
peft's current ``prepare_inputs_for_generation``.

**The fix** (:func:`fix_generate`) is applied to one model at a time, by one call, and only
where the check found peft wrong and the fix right for that model's prompt method: it binds
a ``prepare_inputs_for_generation`` on that model instance (peft's ``generate`` calls it
through the instance), which inserts the virtual tokens (or the prefix cache) exactly once, at
the prefill step, as the training forward does (on every step when ``use_cache=False``), and
counts positions over attended tokens plus the virtual ones, so a left-padded row decodes as
it would alone. Nothing is changed process-wide: importing this package leaves peft as it
is. The library's own evaluation does not need it (it decodes with
:func:`hf_tsprompt.evaluation.greedy_prompt_learning`); :func:`hf_tsprompt.hub.load_adapter`
applies it to the model it returns; users who load an adapter with plain peft call
``fix_generate(model)`` once before ``generate`` (the model card's snippet does so where the
check says it is needed).
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .prompts import PromptMethod, get_prompt_method, method_of, prompt_methods

__all__ = ["SETTINGS", "MethodCheck", "check", "fix_generate", "needs_fix", "unfix_generate"]

logger = logging.getLogger(__name__)

#: The settings the check compares, each as ``(name, left-padded batch?, use_cache)``.
SETTINGS: tuple[tuple[str, bool, bool], ...] = (
    ("single row, cached", False, True),
    ("single row, uncached", False, False),
    ("left-padded batch, cached", True, True),
    ("left-padded batch, uncached", True, False),
)
_ORIGINAL = "__hf_tsprompt_original__"  # attribute of the bound fix: peft's own method
_NEW_TOKENS = 8
# Token ids of the check's rows (vocabulary 128; 0 is the padding). Two lengths, so the
# batch is padded; the weights are redrawn with std 0.3 so greedy text varies from token to
# token (at the default init a tiny model repeats one token, and a wrong decoder could agree
# with the right one by accident): the check refuses a reference with fewer than 3 distinct
# tokens.
_ROWS = ((5, 17, 33, 9, 71, 12), (88, 3, 41))


@dataclass(frozen=True)
class MethodCheck:
    """What :func:`check` found for one prompt method.

    Attributes:
        method: the registered prompt method's name (``prompt_tuning``).
        versions: ``"peft X, transformers Y"`` the check ran with.
        peft_wrong: the settings (:data:`SETTINGS` names) where peft's own ``generate``
            differs from the reference or raises, each with what it gave.
        fix_wrong: the same with the fix bound (empty: the fix is right everywhere).
        error: why the method could not be checked at all (its config could not be built on
            the tiny model), else None.
    """

    method: str
    versions: str
    peft_wrong: tuple[str, ...]
    fix_wrong: tuple[str, ...]
    error: str | None = None

    @property
    def needs_fix(self) -> bool:
        """peft is wrong and the fix is right in every setting."""
        return self.error is None and bool(self.peft_wrong) and not self.fix_wrong

    @property
    def wrong_settings(self) -> tuple[str, ...]:
        """The :data:`SETTINGS` names where peft's own ``generate`` is wrong (``peft_wrong``
        without the evidence), in the order of :data:`SETTINGS`."""
        named = {entry.split(":")[0] for entry in self.peft_wrong}
        return tuple(name for name, _, _ in SETTINGS if name in named)

    def wrong_in(self, setting: str) -> bool:
        """Whether peft's own ``generate`` is wrong in ``setting`` (a :data:`SETTINGS` name,
        e.g. ``"single row, cached"``, what a model card's snippet does)."""
        if setting not in {name for name, _, _ in SETTINGS}:
            raise ValueError(f"unknown setting {setting!r}; choose one of {_setting_names()}")
        return setting in self.wrong_settings

    def describe(self) -> str:
        """One line: the verdict and its evidence."""
        if self.error is not None:
            return f"{self.method}: not checked ({self.error})"
        if not self.peft_wrong:
            return f"{self.method}: peft's generate is right ({self.versions}); no fix needed"
        wrong = "; ".join(self.peft_wrong)
        if self.fix_wrong:
            return (
                f"{self.method}: peft's generate is wrong ({wrong}) and hf_tsprompt's fix is "
                f"wrong too ({'; '.join(self.fix_wrong)}) with {self.versions}; not fixed"
            )
        return (
            f"{self.method}: peft's generate is wrong ({wrong}) with {self.versions}; "
            "fix_generate fixes it"
        )


def _setting_names() -> str:
    return ", ".join(name for name, _, _ in SETTINGS)


@functools.cache
def _cache_key() -> str:
    """The keyword under which the installed transformers hands the KV cache to
    ``prepare_inputs_for_generation`` (``cache`` since transformers 5)."""

    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


# --- the fixed method ---------------------------------------------------------------------------


def _prepare(self: Any, config: Any, args: tuple, kwargs: dict, task_ids: Any) -> dict[str, Any]:
    """``prepare_inputs_for_generation`` for prompt tuning, P-tuning and prefix tuning."""
    import torch
    from transformers import DynamicCache

    key = _cache_key()
    inputs = self.base_model_prepare_inputs_for_generation(*args, **kwargs)
    n = config.num_virtual_tokens
    prefix = method_of(config).kv_cache
    if inputs.get("use_cache", kwargs.get("use_cache", True)) is False:
        # Uncached: the model returns the cache it was given and generate passes it back in.
        inputs.pop(key, None)
    cache = inputs.get(key)
    prefill = cache is None or cache.get_seq_length() == 0
    ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
    batch = (ids if ids is not None else embeds).shape[0]

    # Mask: generate's 2D mask over the real tokens, with the virtual tokens attended. (The base
    # model's 4D mask, made for compileable caches, would not cover them; the model makes its own.)
    mask = kwargs.get("attention_mask")
    if mask is None:
        inputs.pop("attention_mask", None)
    elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
        inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
    else:
        raise ValueError(
            "generate with a prompt-learning adapter needs a 2D attention_mask "
            f"(batch, sequence), got {type(mask).__name__} {getattr(mask, 'shape', '')}"
        )
    # Positions: generate counts attended real tokens from 0; the virtual tokens come first.
    positions = inputs.get("position_ids")
    if positions is not None:
        positions = positions + n if positions.dim() == 2 else None
    inputs.pop("token_type_ids", None)  # as peft: not supported with virtual tokens

    if prefix:
        if prefill:
            # as peft: a fixed-size cache (Gemma's, a static one) tells its length
            if cache is None or isinstance(cache, DynamicCache):
                max_len = -1
            else:
                max_len = getattr(cache, "max_cache_len", -1)
            inputs[key] = self.get_prompt(batch_size=batch, max_cache_len=max_len)
            if inputs.get("cache_position") is not None:  # remote-code models only
                inputs["cache_position"] = inputs["cache_position"] + n
    else:
        if prefill:
            if embeds is None:
                embeds = self.word_embeddings(ids)
            prompts = self.get_prompt(batch_size=batch, task_ids=task_ids).to(embeds.dtype)
            inputs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
            inputs["input_ids"] = None
            if positions is not None:
                virtual = torch.arange(n, dtype=positions.dtype, device=positions.device)
                positions = torch.cat([virtual.expand(positions.shape[0], n), positions], dim=1)
        inputs.pop("cache_position", None)  # the model derives it from the embeddings
    if "position_ids" in inputs:
        inputs["position_ids"] = positions
    return inputs


def _fixed(model: Any, applies: Callable[[PromptMethod], bool]) -> Callable[..., dict[str, Any]]:
    """The ``prepare_inputs_for_generation`` bound to ``model``: the fix when the active
    adapter's method ``applies``, peft's own method otherwise (decided at every call, since the
    active adapter can change)."""
    original = model.prepare_inputs_for_generation

    def prepare_inputs_for_generation(self, *args, task_ids=None, **kwargs):
        config = self.active_peft_config
        method = method_of(config, missing_ok=True) if config.is_prompt_learning else None
        if method is None or not applies(method):
            return original(*args, task_ids=task_ids, **kwargs)
        return _prepare(self, config, args, kwargs, task_ids)

    setattr(prepare_inputs_for_generation, _ORIGINAL, original)
    return prepare_inputs_for_generation


def _is_fixed(model: Any) -> bool:
    bound = model.__dict__.get("prepare_inputs_for_generation")
    return hasattr(getattr(bound, "__func__", None), _ORIGINAL)


def _bind_fix(model: Any, applies: Callable[[PromptMethod], bool]) -> None:
    if not _is_fixed(model):
        model.prepare_inputs_for_generation = types.MethodType(_fixed(model, applies), model)


def _needs_fix(method: PromptMethod) -> bool:
    return _check_method(method).needs_fix


# --- the check -------------------------------------------------------------------------------


def _peft_versions() -> str:
    import peft
    import transformers

    return f"peft {peft.__version__}, transformers {transformers.__version__}"


def _tiny_model() -> Any:
    """A 2-layer Llama from a config, weights redrawn with std 0.3 (see ``_ROWS``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _reference(model: Any, row: tuple[int, ...]) -> list[int]:
    """Greedy decoding with peft's training forward over the whole unpadded row, no cache."""
    import torch

    seq = torch.tensor([row])
    for _ in range(_NEW_TOKENS):
        step = model(input_ids=seq).logits[0, -1].argmax()
        seq = torch.cat([seq, step.view(1, 1)], dim=1)
    return seq[0, len(row) :].tolist()


def _generated(model: Any, batch: bool, use_cache: bool) -> list[list[int]]:
    import torch

    rows = _ROWS if batch else _ROWS[:1]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=_NEW_TOKENS,
        min_new_tokens=_NEW_TOKENS,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0,
    )
    return out[:, width:].tolist()


def _wrong_settings(model: Any, truth: list[list[int]]) -> tuple[str, ...]:
    wrong = []
    for name, batch, use_cache in SETTINGS:
        expected = truth if batch else truth[:1]
        try:
            got = _generated(model, batch, use_cache)
        except Exception as err:  # peft's generate raising is one of the wrong behaviours
            wrong.append(f"{name}: raises {type(err).__name__}: {str(err)[:120]}")
            continue
        if got != expected:
            rows = [
                str(i + 1) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e
            ]
            wrong.append(f"{name}: row {', '.join(rows)} differs from the reference")
    return tuple(wrong)


def _run_check(method: PromptMethod) -> MethodCheck:
    import torch
    from peft import get_peft_model

    versions = _peft_versions()
    # Its own seeded RNG (the caller's stays as it was) and no warnings: peft and transformers
    # warn about the very settings being compared.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        base = _tiny_model()
        try:
            config = method.build_config(
                {"task_type": "CAUSAL_LM", "num_virtual_tokens": 4},
                init="random",
                init_text=None,
                tokenizer_name_or_path=None,
                encoder_hidden_size=16,
            )
            model = get_peft_model(base, config).eval()
        except Exception as err:  # a user's method whose config needs more than this
            return MethodCheck(method.name, versions, (), (), error=repr(err))
        truth = [_reference(model, row) for row in _ROWS]
        for row in truth:
            if len(set(row)) < 3:  # pragma: no cover - guards the check's own design
                raise RuntimeError(f"degenerate reference {row}: the check could not fail")
        peft_wrong = _wrong_settings(model, truth)
        _bind_fix(model, lambda _: True)  # the fix itself, whatever peft does
        fix_wrong = _wrong_settings(model, truth)
    return MethodCheck(method.name, versions, peft_wrong, fix_wrong)


@functools.cache
def _cached_check(method: PromptMethod, versions: str, peft_method: Any) -> MethodCheck:
    result = _run_check(method)
    logger.debug("peft generate check: %s", result.describe())
    return result


def _check_method(method: PromptMethod) -> MethodCheck:
    """The remembered check of ``method`` for the installed versions and peft's current
    ``prepare_inputs_for_generation`` (a patched or reloaded peft is checked again)."""
    from peft.peft_model import PeftModelForCausalLM

    peft_method = PeftModelForCausalLM.__dict__.get("prepare_inputs_for_generation")
    return _cached_check(method, _peft_versions(), peft_method)


def check(method: str | None = None) -> dict[str, MethodCheck]:
    """Compare peft's ``generate`` with its training forward for ``method`` (a registered
    prompt method name) or every registered method: ``{name: MethodCheck}``.

    Raises:
        ConfigError: ``method`` is not a registered prompt method.
    """
    methods = prompt_methods() if method is None else (get_prompt_method(method),)
    return {m.name: _check_method(m) for m in methods}


def needs_fix(adapter: Any) -> bool:
    """Whether ``generate`` needs :func:`fix_generate` for ``adapter``: a registered prompt
    method's name, a peft config or an ``adapter_config.json`` dict (False for adapters that
    are not of a registered prompt method, e.g. LoRA)."""
    if isinstance(adapter, str):
        method: PromptMethod | None = get_prompt_method(adapter)
    elif isinstance(adapter, Mapping) or hasattr(adapter, "peft_type"):
        method = method_of(adapter, missing_ok=True)
    else:
        raise TypeError(
            "needs_fix expects a prompt method name, a peft config or an adapter_config.json "
            f"dict, got {type(adapter).__name__}"
        )
    return method is not None and _check_method(method).needs_fix


def fix_generate(model: Any) -> bool:
    """Make ``model.generate`` right for its prompt-learning adapter, where peft's is not.

    ``model`` is a peft ``PeftModelForCausalLM`` (as ``PeftModel.from_pretrained`` or
    ``get_peft_model`` return it). The first call in a process runs :func:`check` (about a
    second); the fix is bound to this model only, and only if the check found peft's
    ``generate`` wrong and the fix right for the active adapter's method. Returns whether the
    fix is now in effect for the active adapter. Calling it again is harmless.

    Raises:
        TypeError: ``model`` is not a peft causal-LM model.
    """
    config = getattr(model, "active_peft_config", None)
    if config is None or not callable(getattr(model, "prepare_inputs_for_generation", None)):
        raise TypeError(
            "fix_generate expects a peft PeftModelForCausalLM (from PeftModel.from_pretrained "
            f"or get_peft_model), got {type(model).__name__}"
        )
    method = method_of(config, missing_ok=True) if config.is_prompt_learning else None
    if method is None:
        return False
    result = _check_method(method)
    if result.peft_wrong and not result.needs_fix:
        warnings.warn(
            f"{result.describe()}. Decode with hf_tsprompt.evaluation.greedy_prompt_learning "
            "instead, and please report this at the hf-tsprompt issue tracker.",
            RuntimeWarning,
            stacklevel=2,
        )
    if result.needs_fix:
        _bind_fix(model, _needs_fix)
    return result.needs_fix


def unfix_generate(model: Any) -> None:
    """Undo :func:`fix_generate` on ``model`` (no-op when it was not applied)."""
    if _is_fixed(model):
        del model.__dict__["prepare_inputs_for_generation"]
