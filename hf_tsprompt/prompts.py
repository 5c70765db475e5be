"""Which matrix is "the prompt": the (n x d) point cloud P of any peft prompt-learning model.

The paper (section III-A) treats a soft prompt as ``P in R^{n x d}``: n virtual tokens, one
point each. peft stores that differently per method; :func:`prompt_matrix` returns, with its
autograd graph, the vectors the base model actually receives:

- **Prompt tuning** (Lester et al. 2021): the embedding table,
  ``prompt_encoder[adapter].embedding.weight`` (n x d_model).
- **P-tuning** (Liu et al. 2021): the prompt encoder's *output* for all virtual tokens
  (MLP/LSTM applied to the raw embedding), n x d_model. The raw embedding is only the
  encoder's input; the model never sees it.
- **Prefix tuning** (Li & Liang 2021) and **P-tuning v2** (Liu et al. 2022, peft's
  ``PrefixTuningConfig(prefix_projection=False)``): the prefix encoder's output, one row per
  virtual token holding that token's key and value vectors for every layer, so each virtual
  token is one point in ``R^{2 * num_layers * d_model}``. We keep one point per virtual token
  (rather than one per layer and key/value) so that n, the counts of Table I and the
  figures mean the same thing for every method; distances then sum the per-layer squared
  distances, i.e. a virtual token's distance to another is taken across its whole prefix.

Wrappers (DDP, DeepSpeed, ``accelerate``) are unwrapped through their ``.module``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from .errors import ConfigError

PromptMethod = Literal["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"]
PROMPT_METHODS: tuple[str, ...] = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2")
PROMPT_INITS: tuple[str, ...] = ("normal", "random", "text", "sample_vocab")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / accelerate / torch.compile wrappers down to the peft model."""
    from peft import PeftModel

    seen = 0
    while not isinstance(model, PeftModel) and seen < 8:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
        seen += 1
    return model


def _peft_type_name(config: Any) -> str:
    peft_type = getattr(config, "peft_type", None)
    return getattr(peft_type, "value", str(peft_type))


def get_prompt_peft_model(model: nn.Module, adapter: str | None = None):
    """Return ``(peft_model, adapter_name, peft_config)``, or raise a clear ``ValueError``.

    Raises:
        ValueError: ``model`` is not a peft model, the adapter does not exist, or its method is
            not prompt learning (e.g. LoRA).
    """
    from peft import PeftModel

    inner = unwrap_model(model)
    if not isinstance(inner, PeftModel):
        raise ConfigError(
            "expected a peft PeftModel with a prompt-learning adapter, got "
            f"{type(inner).__name__}. "
            "Wrap the base model first, e.g. peft.get_peft_model(model, PromptTuningConfig(...)) "
            "or hf_tsprompt.prompts.get_prompt_model(model, method='prompt_tuning')."
        )
    name = adapter if adapter is not None else inner.active_adapter
    if name not in inner.peft_config:
        raise ConfigError(f"adapter {name!r} not found; the model has {sorted(inner.peft_config)}.")
    cfg = inner.peft_config[name]
    if not getattr(cfg, "is_prompt_learning", False):
        raise ConfigError(
            f"adapter {name!r} uses {_peft_type_name(cfg)}, which is not a prompt-learning "
            "method, so it has no soft prompt to regularise. Use PROMPT_TUNING, P_TUNING or "
            "PREFIX_TUNING (e.g. peft.PromptTuningConfig), or train LoRA with a plain Trainer."
        )
    kind = _peft_type_name(cfg)
    if kind not in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise ConfigError(
            f"adapter {name!r} uses {kind}; hf-tsprompt supports PROMPT_TUNING, P_TUNING and "
            "PREFIX_TUNING (P-tuning v2 is PREFIX_TUNING with prefix_projection=False)."
        )
    return inner, name, cfg


def prompt_matrix(model: nn.Module, adapter: str | None = None) -> torch.Tensor:
    """The differentiable soft prompt P (n x d) of a peft prompt-learning model.

    See the module docstring for what P is per method. The result shares the autograd graph
    with the trainable parameters, so a loss on it trains the prompt.

    Raises:
        ValueError: not a peft prompt-learning model (LoRA, a plain model), or unknown adapter.
    """
    inner, name, cfg = get_prompt_peft_model(model, adapter)
    encoder = inner.prompt_encoder[name]
    kind = _peft_type_name(cfg)
    weight = encoder.embedding.weight
    if kind == "PROMPT_TUNING":
        return weight
    n = weight.shape[0]
    tokens = torch.arange(n, device=weight.device)
    if kind == "P_TUNING":
        if getattr(cfg, "inference_mode", False):
            # peft saves P-tuning's encoder *output* as the embedding for inference.
            return weight
        return encoder(tokens.unsqueeze(0))[0]
    # PREFIX_TUNING: in inference mode peft stores the projected prefix in the embedding.
    n = cfg.num_virtual_tokens
    if getattr(cfg, "inference_mode", False):
        return weight[:n]
    return encoder(tokens[:n].unsqueeze(0))[0]


def prompt_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    """The trainable parameters that produce P (embedding, plus encoder MLP/LSTM if any)."""
    inner, name, _ = get_prompt_peft_model(model, adapter)
    return list(inner.prompt_encoder[name].parameters())


@torch.no_grad()
def init_prompt_(model: nn.Module, std: float = 0.02, adapter: str | None = None) -> None:
    """Re-initialise the prompt embedding in place from N(0, std^2) (the paper: std = 0.02).

    peft's own default for prompt tuning (``PromptTuningInit.RANDOM``) is ``nn.Embedding``'s
    N(0, 1); section V-B of the paper uses N(0, 0.02^2 I). For P-tuning and prefix tuning the
    raw embedding (the encoder's input) is re-drawn; the encoder's layers keep their init.
    """
    if not (isinstance(std, (int, float)) and std > 0):
        raise ConfigError(f"prompt init std must be a positive number, got {std!r}.")
    inner, name, _ = get_prompt_peft_model(model, adapter)
    inner.prompt_encoder[name].embedding.weight.normal_(0.0, float(std))


def build_peft_config(
    method: str,
    *,
    num_virtual_tokens: int = 20,
    init: str = "normal",
    init_text: str | None = None,
    tokenizer_name_or_path: str | None = None,
    encoder_hidden_size: int | None = None,
    **extra: Any,
):
    """A peft config for one of :data:`PROMPT_METHODS`, task type CAUSAL_LM.

    Args:
        method: ``prompt_tuning`` | ``p_tuning`` | ``prefix_tuning`` (with the MLP
            reparameterisation of Li & Liang) | ``p_tuning_v2`` (prefix tuning without it).
        num_virtual_tokens: n, the number of virtual tokens (points of the cloud).
        init: ``normal`` (N(0, 0.02^2), the paper; applied by :func:`get_prompt_model`),
            ``random`` (peft's N(0, 1)), ``text`` (from ``init_text``), ``sample_vocab``
            (random vocabulary embeddings). ``text``/``sample_vocab`` apply to prompt tuning.
        extra: passed to the peft config unchanged.
    """
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
    )

    if method not in PROMPT_METHODS:
        raise ConfigError(
            f"peft method {method!r} is not a prompt-learning method hf-tsprompt supports; "
            f"choose one of {', '.join(PROMPT_METHODS)}."
        )
    if init not in PROMPT_INITS:
        raise ConfigError(f"prompt init {init!r} unknown; choose one of {', '.join(PROMPT_INITS)}.")
    if (
        not isinstance(num_virtual_tokens, int)
        or isinstance(num_virtual_tokens, bool)
        or (num_virtual_tokens < 3)
    ):
        raise ConfigError(
            f"num_virtual_tokens must be an int >= 3 (a point cloud needs 3 points for "
            f"topology), got {num_virtual_tokens!r}."
        )
    if init in ("text", "sample_vocab") and method != "prompt_tuning":
        raise ConfigError(f"prompt init {init!r} only applies to method 'prompt_tuning'.")
    common = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": num_virtual_tokens, **extra}
    if method == "prompt_tuning":
        if init == "text":
            if not init_text or not tokenizer_name_or_path:
                raise ConfigError("prompt init 'text' needs init_text and tokenizer_name_or_path.")
            return PromptTuningConfig(
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=init_text,
                tokenizer_name_or_path=tokenizer_name_or_path,
                **common,
            )
        peft_init = (
            PromptTuningInit.SAMPLE_VOCAB if init == "sample_vocab" else PromptTuningInit.RANDOM
        )
        return PromptTuningConfig(prompt_tuning_init=peft_init, **common)
    if method == "p_tuning":
        if encoder_hidden_size is not None:
            common["encoder_hidden_size"] = encoder_hidden_size
        return PromptEncoderConfig(**common)
    if encoder_hidden_size is not None:
        common["encoder_hidden_size"] = encoder_hidden_size
    return PrefixTuningConfig(prefix_projection=(method == "prefix_tuning"), **common)


def get_prompt_model(
    base_model: nn.Module,
    method: str = "prompt_tuning",
    *,
    num_virtual_tokens: int = 20,
    init: str = "normal",
    init_std: float = 0.02,
    **kwargs: Any,
):
    """Wrap ``base_model`` in a peft prompt-learning model, initialised as asked.

    ``init="normal"`` draws the prompt from N(0, init_std^2) (section V-B); the other inits are
    peft's. Returns the ``PeftModel``; only the prompt parameters are trainable.
    """
    from peft import get_peft_model

    cfg = build_peft_config(method, num_virtual_tokens=num_virtual_tokens, init=init, **kwargs)
    model = get_peft_model(base_model, cfg)
    if init == "normal":
        init_prompt_(model, std=init_std)
    return model


class PromptCapture:
    """Keep the prompt encoder's output from the model's own forward pass, with its graph.

    Inside ``forward`` the prompt is exactly what the base model receives, and under FSDP or
    DeepSpeed ZeRO-3 it is computed from the *gathered* (unsharded) parameters, so a loss on
    it sees the full prompt and its gradient is reduced like the CE's. Outside ``forward``
    (between steps) those parameters are shards; :func:`prompt_matrix` is the fallback for
    plain and DDP models. ``take()`` returns the last capture once (n x d) and forgets it, so
    no graph outlives its step.
    """

    def __init__(self, model: nn.Module, adapter: str | None = None) -> None:
        inner, name, _ = get_prompt_peft_model(model, adapter)
        self._value: torch.Tensor | None = None
        self._handle = inner.prompt_encoder[name].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            # (batch, n, d): every row of the batch is the same prompt.
            self._value = output[0] if output.dim() == 3 else output

    def take(self) -> torch.Tensor | None:
        value, self._value = self._value, None
        return value

    def remove(self) -> None:
        self._handle.remove()


def is_sharded(model: nn.Module, adapter: str | None = None) -> bool:
    """Whether FSDP2 or DeepSpeed ZeRO-3 partitioned the prompt parameters, so that reading
    them outside a forward pass is a collective (:func:`full_prompt_matrix`)."""
    inner, name, _ = get_prompt_peft_model(model, adapter)
    weight = inner.prompt_encoder[name].embedding.weight
    return callable(getattr(weight, "full_tensor", None)) or hasattr(weight, "ds_id")


def full_prompt_matrix(model: nn.Module, adapter: str | None = None) -> torch.Tensor:
    """:func:`prompt_matrix` with the full parameters, detached.

    Under FSDP2 the parameters are DTensor shards (all-gathered here); under DeepSpeed ZeRO-3
    they are partitioned (gathered with ``deepspeed.zero.GatheredParameters``). Either way this
    is a collective: call it on every rank.
    """
    inner, name, _ = get_prompt_peft_model(model, adapter)
    params = list(inner.prompt_encoder[name].parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None), torch.no_grad():
            return prompt_matrix(model, adapter).detach().clone()
    with torch.no_grad():
        P = prompt_matrix(model, adapter)
    full = getattr(P, "full_tensor", None)
    return (full() if callable(full) else P).detach()
