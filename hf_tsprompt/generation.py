"""Correct (and cached) ``PeftModel.generate`` for prompt-learning adapters on transformers 5.

**The upstream bug.** transformers 5 renamed the KV-cache argument of
``prepare_inputs_for_generation`` and of the models' ``forward`` from ``past_key_values`` to
``cache`` (5.24 also stopped passing ``cache_position``). peft 0.21.2's
``PeftModelForCausalLM.prepare_inputs_for_generation`` still reads
``model_kwargs["past_key_values"]``, finds nothing, and so treats every generation step as the
first one:

- prompt tuning and P-tuning: the soft prompt is re-inserted in front of *every* new token
  (``inputs_embeds = [prompt, last token]`` while the cache already holds the prompt), so with
  ``use_cache=True`` (generate's default) the output is garbage after the first token;
- prefix tuning: peft puts the prefix cache under ``past_key_values``; the model's deprecation
  shim drops it because ``cache`` (generate's own, empty cache) is set too, so cached generation
  equals the *base model's*. Uncached, the first step is right, but the model returns the cache
  it was given (prefix + prompt), generate carries it on as ``cache``, and every later step
  attends to that stale cache again while peft's fresh prefix is dropped.

A lesser, older difference: for prompt tuning and P-tuning peft drops generate's position ids
("Position ids are not supported ..."), so in a left-padded batch the padding sits between the
virtual tokens and the text and shifts their relative positions: a padded row then decodes
differently from the same row alone, cached or not.

The training forward (``model(input_ids=...)``) is right for all three; only ``generate`` is
wrong. Minimal reproduction (peft 0.21.2, transformers 5.24.0, torch 2.13, CPU): greedy
``generate`` should match greedy decoding with peft's own forward, so every line should end
in ``True``::

    import torch
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
    )
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    for peft_config in (
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    ):
        torch.manual_seed(0)
        model = get_peft_model(LlamaForCausalLM(config), peft_config).eval()
        with torch.no_grad():
            seq = ids  # reference: peft's own forward over the whole sequence, no cache
            for _ in range(8):
                seq = torch.cat([seq, model(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
            for use_cache in (True, False):
                out = model.generate(
                    input_ids=ids, max_new_tokens=8, do_sample=False, use_cache=use_cache
                )
                same = torch.equal(out[:, 5:], seq[:, 5:])
                print(f"{peft_config.peft_type.value:14} use_cache={use_cache!s:5} {same}")

    # peft 0.21.2 + transformers 5.24.0 prints:
    # PROMPT_TUNING  use_cache=True  False
    # PROMPT_TUNING  use_cache=False True
    # P_TUNING       use_cache=True  False
    # P_TUNING       use_cache=False True
    # PREFIX_TUNING  use_cache=True  False
    # PREFIX_TUNING  use_cache=False False

**The fix here.** :func:`install` (called by ``import hf_tsprompt``, so also by
``hf_tsprompt.hub.load_adapter`` and everything else in the package) replaces
``PeftModelForCausalLM.prepare_inputs_for_generation`` for prompt tuning, P-tuning and prefix
tuning only (every other adapter type goes to peft's own method). It reads the cache under the
name the installed transformers uses, inserts the virtual tokens (or the prefix cache) exactly
once, at the prefill step, as peft's training forward does, and on every step when
``use_cache=False``; positions count only attended tokens plus the virtual ones, so a
left-padded row decodes as it would alone. peft itself is not imported until the user imports
it (an import hook waits for ``peft.peft_model``), so ``import hf_tsprompt`` stays fast.

It is version-guarded by feature detection, and stands aside when peft is fixed: it is applied
only if the installed transformers passes the cache as ``cache`` and a probe shows that
peft's own ``prepare_inputs_for_generation``, fed the inputs transformers actually gives it,
re-inserts the prompt at a decode step or fails to put the prefix where the model reads the
cache. If peft reads the cache correctly, or its code changed so that the probe cannot run, peft
is left untouched (:func:`status` says why). Verified against peft 0.21.2 and transformers
5.24.0. Set ``HF_TSPROMPT_NO_GENERATE_FIX=1`` to keep peft's behaviour (e.g. to reproduce the
bug); :func:`remove` undoes the patch in a running process.
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

from .prompts import method_of, peft_type_name, prompt_methods

__all__ = ["DISABLE_ENV_VAR", "FIXED_PEFT_TYPES", "apply", "install", "remove", "status"]

logger = logging.getLogger(__name__)

DISABLE_ENV_VAR = "HF_TSPROMPT_NO_GENERATE_FIX"
# The peft types of the built-in prompt methods (a snapshot at import): the ones whose
# generation path `_prepare` replaces. A method registered later with another peft type keeps
# peft's own path.
FIXED_PEFT_TYPES = tuple(dict.fromkeys(m.peft_type for m in prompt_methods()))
VERIFIED_WITH = {"peft": "0.21.2", "transformers": "5.24.0"}
_PEFT_MODULE = "peft.peft_model"
_ORIGINAL = "__hf_tsprompt_original__"  # attribute of the patched function: peft's own

_state: dict[str, Any] = {"reason": "not checked yet: peft has not been imported"}


def _cache_key() -> str:
    """The keyword under which the installed transformers hands the KV cache to
    ``prepare_inputs_for_generation`` (``cache`` since transformers 5)."""
    import inspect

    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


# --- feature detection --------------------------------------------------------------------------


class _StandIn:
    """Just enough of a ``PeftModelForCausalLM`` to run peft's ``prepare_inputs_for_generation``
    on one step, with the base model's preparation replaced by what transformers returns
    (the cache under ``cache_key``). Any other method peft calls is peft's own, bound here."""

    def __init__(self, module: ModuleType, peft_type: str, prepared: dict[str, Any]) -> None:
        import torch

        self._cls = module.PeftModelForCausalLM
        self._prepared = prepared
        self.active_peft_config = SimpleNamespace(
            peft_type=module.PeftType(peft_type), is_prompt_learning=True, num_virtual_tokens=2
        )
        self.base_model = SimpleNamespace(config=SimpleNamespace(model_type="llama"))
        self.word_embeddings = lambda ids: torch.zeros(*ids.shape, 4)

    def base_model_prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict:
        return dict(self._prepared)

    def get_prompt(self, batch_size: int, task_ids: Any = None, max_cache_len: Any = None) -> Any:
        import torch
        from transformers import DynamicCache

        if method_of(self.active_peft_config).kv_cache:
            cache = DynamicCache()
            cache.update(torch.zeros(batch_size, 1, 2, 4), torch.zeros(batch_size, 1, 2, 4), 0)
            return cache
        return torch.zeros(batch_size, 2, 4)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cls, name).__get__(self)


def _probe(module: ModuleType, function: Callable, cache_key: str) -> list[str]:
    """What peft's ``function`` gets wrong, as sentences (empty: nothing, peft is fixed)."""
    import warnings

    import torch
    from transformers import DynamicCache

    wrong = []
    ids = torch.tensor([[3, 4, 5, 6]])
    mask = torch.ones_like(ids)
    seen = DynamicCache()  # a decode step: the cache holds 2 virtual + 3 prompt tokens
    seen.update(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4), 0)
    decode = {"input_ids": ids[:, -1:], cache_key: seen, "attention_mask": mask, "use_cache": True}
    prefill = {"input_ids": ids, cache_key: DynamicCache(), "attention_mask": mask}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = function(_StandIn(module, "PROMPT_TUNING", decode), ids, **decode)
        if out.get("inputs_embeds") is not None:
            wrong.append("prompt tuning re-inserts the soft prompt at a cached decode step")
        out = function(_StandIn(module, "PREFIX_TUNING", prefill), ids, **prefill)
        cache = out.get(cache_key)
        if cache is None or cache.get_seq_length() != 2:
            wrong.append(f"prefix tuning does not put the prefix under {cache_key!r}")
    return wrong


def _bug_present(module: ModuleType, function: Callable) -> tuple[bool, str]:
    import peft
    import transformers

    versions = f"peft {peft.__version__}, transformers {transformers.__version__}"
    try:
        cache_key = _cache_key()
    except Exception as err:  # any failure: cannot tell, leave peft alone
        return False, f"{versions}: cannot read transformers' generation API ({err!r}); not patched"
    if cache_key != "cache":
        return False, f"{versions}: transformers passes past_key_values, which peft reads"
    try:
        wrong = _probe(module, function, cache_key)
    except Exception as err:  # peft's internals changed: it is not the known bug
        return False, f"{versions}: peft's generation code changed ({err!r}); not patched"
    if not wrong:
        return False, f"{versions}: peft reads the cache as {cache_key!r}; not patched"
    return True, f"{versions}: patched ({'; '.join(wrong)})"


# --- the fixed method ---------------------------------------------------------------------------


def _prepare(self: Any, config: Any, args: tuple, kwargs: dict, task_ids: Any) -> dict[str, Any]:
    """``prepare_inputs_for_generation`` for prompt tuning, P-tuning and prefix tuning."""
    import torch
    from transformers import DynamicCache

    key = _state["cache_key"]
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


def _fixed(original: Callable) -> Callable:
    @functools.wraps(original)
    def prepare_inputs_for_generation(self, *args, task_ids=None, **kwargs):
        config = self.active_peft_config
        if peft_type_name(config) not in FIXED_PEFT_TYPES:
            return original(self, *args, task_ids=task_ids, **kwargs)
        return _prepare(self, config, args, kwargs, task_ids)

    setattr(prepare_inputs_for_generation, _ORIGINAL, original)
    return prepare_inputs_for_generation


# --- applying it --------------------------------------------------------------------------------


def apply(module: ModuleType | None = None) -> bool:
    """Patch ``PeftModelForCausalLM`` now if the bug is present; whether the fix is active.

    Idempotent. Imports peft (``module`` is ``peft.peft_model`` when the import hook calls)."""
    if module is None:
        import peft.peft_model as module
    cls = module.PeftModelForCausalLM
    current = cls.__dict__["prepare_inputs_for_generation"]
    if hasattr(current, _ORIGINAL):
        return True
    needed, reason = _bug_present(module, current)
    _state["reason"] = reason
    logger.debug("peft generate fix: %s", reason)
    if needed:
        _state["cache_key"] = _cache_key()
        cls.prepare_inputs_for_generation = _fixed(current)
    return needed


def remove() -> None:
    """Restore peft's own ``prepare_inputs_for_generation`` (no-op when not patched)."""
    module = sys.modules.get(_PEFT_MODULE)
    if module is None:
        return
    cls = module.PeftModelForCausalLM
    current = cls.__dict__["prepare_inputs_for_generation"]
    if hasattr(current, _ORIGINAL):
        cls.prepare_inputs_for_generation = getattr(current, _ORIGINAL)
        _state["reason"] = "removed by hf_tsprompt.generation.remove()"


def status() -> tuple[bool, str]:
    """(fix active, why): the versions seen and what the probe found."""
    module = sys.modules.get(_PEFT_MODULE)
    cls = getattr(module, "PeftModelForCausalLM", None)
    active = cls is not None and hasattr(cls.__dict__["prepare_inputs_for_generation"], _ORIGINAL)
    return active, _state["reason"]


class _Loader(importlib.abc.Loader):
    """Runs the real loader of ``peft.peft_model``, then :func:`apply`; hands the module back
    its real loader, so nothing later sees this one."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        try:
            apply(module)
        except Exception as err:  # never break `import peft` over this fix
            _state["reason"] = f"not patched: {err!r}"
            logger.warning("hf_tsprompt could not patch peft's generate: %r", err)


class _PeftImportHook(importlib.abc.MetaPathFinder):
    """Waits for ``peft.peft_model`` to be imported, then removes itself."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _PEFT_MODULE:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Fix ``PeftModel.generate`` for prompt-learning adapters where needed: now if peft is
    already imported, otherwise when it is. Idempotent; honours ``HF_TSPROMPT_NO_GENERATE_FIX``."""
    if os.environ.get(DISABLE_ENV_VAR, "").strip().lower() not in ("", "0", "false", "no"):
        _state["reason"] = f"not patched: {DISABLE_ENV_VAR} is set"
        return
    module = sys.modules.get(_PEFT_MODULE)
    if module is not None and hasattr(module, "PeftModelForCausalLM"):
        apply(module)
    elif module is None and not any(isinstance(f, _PeftImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportHook())
