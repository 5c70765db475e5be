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

Each method is one :class:`PromptMethod` entry of one table (its peft config, how P is read,
whether P lives in the vocabulary's embedding space, its model-card label, ...), keyed by the
recipe's ``peft.method`` name; every other module reads method facts from that table
(:func:`get_prompt_method`, :func:`method_of`) instead of comparing peft type strings.

Wrappers (DDP, DeepSpeed, ``accelerate``) are unwrapped through their ``.module``.

torch and peft are imported inside the functions that use them: the table is read by the
recipe checker and the model-card writer, which must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = [
    "DEFAULT_PROMPT_METHOD",
    "PROMPT_INITS",
    "PromptCapture",
    "PromptMethod",
    "build_peft_config",
    "full_prompt_matrix",
    "get_prompt_method",
    "get_prompt_model",
    "get_prompt_peft_model",
    "init_prompt_",
    "is_sharded",
    "method_of",
    "peft_type_name",
    "prompt_matrix",
    "prompt_method_names",
    "prompt_methods",
    "prompt_parameters",
    "register_prompt_method",
    "unwrap_model",
]

PROMPT_INITS: tuple[str, ...] = ("normal", "random", "text", "sample_vocab")
#: The method of a recipe that names none (and of an adapter whose method is unknown).
DEFAULT_PROMPT_METHOD = "prompt_tuning"


@dataclass(frozen=True)
class PromptMethod:
    """One prompt-learning method: everything the rest of the package needs to know about it.

    Attributes:
        name: the recipe's ``peft.method`` and the registry key (``prompt_tuning``).
        peft_type: peft's ``PeftType`` name of the adapter it builds (``PROMPT_TUNING``).
        build_config: ``(common, init=, init_text=, tokenizer_name_or_path=,
            encoder_hidden_size=) -> peft config``; ``common`` holds task type,
            ``num_virtual_tokens`` and the caller's extra peft fields, already checked.
        read_matrix: ``(prompt_encoder, peft_config) -> P`` (n x d) with its autograd graph:
            the vectors the base model receives (module docstring).
        in_vocabulary_space: P's rows live in the token embedding space (d = the embedding
            width, prepended to the input embeddings), so nearest vocabulary tokens (explain),
            and projections onto the vocabulary mean something.
        kv_cache: peft hands P to every attention layer as a key/value cache
            (``past_key_values``) instead of prepending it to the input embeddings; decoding
            (evaluation, generation) takes the cache path.
        card_label: the method on the model card, with its paper.
        card_tag: the Hub tag of the method.
        prefix_projection: for ``PREFIX_TUNING``, the value of peft's ``prefix_projection``
            that tells this method apart (prefix tuning: True, P-tuning v2: False); None when
            the peft type alone identifies the method.
        supports_gradient_checkpointing: whether checkpointed decoder layers can train it.
        matrix_is_embedding: P *is* the trainable embedding table (not an encoder's output),
            so editing its rows edits the prompt (DPC's ``corruption="zero"``, pruning).
        inits: the prompt inits (:data:`PROMPT_INITS`) it accepts.
    """

    name: str
    peft_type: str
    build_config: Callable[..., Any]
    read_matrix: Callable[[Any, Any], Any]
    in_vocabulary_space: bool
    kv_cache: bool
    card_label: str
    card_tag: str
    prefix_projection: bool | None = None
    supports_gradient_checkpointing: bool = True
    matrix_is_embedding: bool = False
    inits: tuple[str, ...] = ("normal", "random")

    def matches(self, config: Any) -> bool:
        """Whether a peft config (or an adapter_config.json dict) is an adapter of this method."""
        if peft_type_name(config) != self.peft_type:
            return False
        if self.prefix_projection is None:
            return True
        return bool(_config_value(config, "prefix_projection")) is self.prefix_projection


_REGISTRY: dict[str, PromptMethod] = {}


def _config_value(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def peft_type_name(config: Any) -> str:
    """The peft type name (``"PROMPT_TUNING"``) of a peft config, an adapter_config.json dict
    or a ``PeftType`` / string itself."""
    if isinstance(config, str):  # PeftType is a str enum
        peft_type: Any = config
    else:
        peft_type = _config_value(config, "peft_type")
    return str(getattr(peft_type, "value", peft_type))


def register_prompt_method(method: PromptMethod) -> PromptMethod:
    """Add ``method`` to the table; returns it.

    Raises:
        ConfigError: a method of that name is registered already, or one that claims the same
            peft adapters (same ``peft_type`` and ``prefix_projection``), so that
            :func:`method_of` would be ambiguous.
    """
    if not isinstance(method, PromptMethod):
        raise ConfigError(f"register_prompt_method expects a PromptMethod, got {method!r}.")
    if method.name in _REGISTRY:
        raise ConfigError(
            f"prompt method {method.name!r} is already registered; choose another name."
        )
    for other in _REGISTRY.values():
        overlap = (
            other.prefix_projection is None
            or method.prefix_projection is None
            or other.prefix_projection is method.prefix_projection
        )
        if other.peft_type == method.peft_type and overlap:
            raise ConfigError(
                f"prompt method {method.name!r} would claim the same peft adapters as "
                f"{other.name!r} ({other.peft_type}, prefix_projection="
                f"{other.prefix_projection}); give it a distinct peft_type/prefix_projection."
            )
    _REGISTRY[method.name] = method
    return method


def prompt_methods() -> tuple[PromptMethod, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY.values())


def prompt_method_names() -> tuple[str, ...]:
    """The valid ``peft.method`` names, in registration order."""
    return tuple(_REGISTRY)


def get_prompt_method(name: str) -> PromptMethod:
    """The method registered as ``name`` (a recipe's ``peft.method``).

    Raises:
        ConfigError: no such method; the message lists the valid names.
    """
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise ConfigError(
            f"peft method {name!r} is not a prompt-learning method hf-tsprompt supports; "
            f"choose one of {', '.join(_REGISTRY)}."
        )
    return method


def _supported_adapters() -> str:
    return ", ".join(
        f"{m.name} ({m.peft_type}"
        + ("" if m.prefix_projection is None else f", prefix_projection={m.prefix_projection}")
        + ")"
        for m in _REGISTRY.values()
    )


def method_of(config: Any, *, missing_ok: bool = False) -> PromptMethod | None:
    """The method of a peft config or an adapter_config.json dict.

    ``PREFIX_TUNING`` is prefix tuning with ``prefix_projection=True`` and P-tuning v2 without.

    Raises:
        ConfigError: no registered method builds such adapters (unless ``missing_ok``, which
            returns None instead).
    """
    for method in _REGISTRY.values():
        if method.matches(config):
            return method
    if missing_ok:
        return None
    raise ConfigError(
        f"a {peft_type_name(config)} adapter is not of a prompt method hf-tsprompt supports; "
        f"supported: {_supported_adapters()}."
    )


# --- the built-in methods ------------------------------------------------------------------


def _prompt_tuning_config(
    common: dict[str, Any],
    *,
    init: str,
    init_text: str | None,
    tokenizer_name_or_path: str | None,
    **_: Any,
) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit

    if init == "text":
        if not init_text or not tokenizer_name_or_path:
            raise ConfigError("prompt init 'text' needs init_text and tokenizer_name_or_path.")
        return PromptTuningConfig(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=tokenizer_name_or_path,
            **common,
        )
    peft_init = PromptTuningInit.SAMPLE_VOCAB if init == "sample_vocab" else PromptTuningInit.RANDOM
    return PromptTuningConfig(prompt_tuning_init=peft_init, **common)


def _p_tuning_config(common: dict[str, Any], *, encoder_hidden_size: int | None, **_: Any) -> Any:
    from peft import PromptEncoderConfig

    if encoder_hidden_size is not None:
        common = {**common, "encoder_hidden_size": encoder_hidden_size}
    return PromptEncoderConfig(**common)


def _prefix_config(projection: bool) -> Callable[..., Any]:
    def build(common: dict[str, Any], *, encoder_hidden_size: int | None, **_: Any) -> Any:
        from peft import PrefixTuningConfig

        if encoder_hidden_size is not None:
            common = {**common, "encoder_hidden_size": encoder_hidden_size}
        return PrefixTuningConfig(prefix_projection=projection, **common)

    return build


def _read_embedding(encoder: nn.Module, config: Any) -> torch.Tensor:
    return encoder.embedding.weight


def _read_encoder_output(encoder: nn.Module, config: Any) -> torch.Tensor:
    import torch

    weight = encoder.embedding.weight
    if getattr(config, "inference_mode", False):
        # peft saves P-tuning's encoder *output* as the embedding for inference.
        return weight
    tokens = torch.arange(weight.shape[0], device=weight.device)
    return encoder(tokens.unsqueeze(0))[0]


def _read_prefix(encoder: nn.Module, config: Any) -> torch.Tensor:
    import torch

    weight = encoder.embedding.weight
    n = config.num_virtual_tokens
    if getattr(config, "inference_mode", False):
        # in inference mode peft stores the projected prefix in the embedding.
        return weight[:n]
    tokens = torch.arange(weight.shape[0], device=weight.device)
    return encoder(tokens[:n].unsqueeze(0))[0]


# Prefix methods: the prefix enters every layer as a key/value cache, which checkpointed
# layers do not accept; its rows are 2 * layers * d wide, not in the vocabulary's space.
register_prompt_method(
    PromptMethod(
        name="prompt_tuning",
        peft_type="PROMPT_TUNING",
        build_config=_prompt_tuning_config,
        read_matrix=_read_embedding,
        in_vocabulary_space=True,
        kv_cache=False,
        card_label="prompt tuning (Lester et al., 2021)",
        card_tag="prompt-tuning",
        matrix_is_embedding=True,
        inits=PROMPT_INITS,
    )
)
register_prompt_method(
    PromptMethod(
        name="p_tuning",
        peft_type="P_TUNING",
        build_config=_p_tuning_config,
        read_matrix=_read_encoder_output,
        in_vocabulary_space=True,
        kv_cache=False,
        card_label="P-tuning (Liu et al., 2021)",
        card_tag="p-tuning",
    )
)
register_prompt_method(
    PromptMethod(
        name="prefix_tuning",
        peft_type="PREFIX_TUNING",
        prefix_projection=True,
        build_config=_prefix_config(True),
        read_matrix=_read_prefix,
        in_vocabulary_space=False,
        kv_cache=True,
        card_label="prefix tuning (Li & Liang, 2021)",
        card_tag="prefix-tuning",
        supports_gradient_checkpointing=False,
    )
)
register_prompt_method(
    PromptMethod(
        name="p_tuning_v2",
        peft_type="PREFIX_TUNING",
        prefix_projection=False,
        build_config=_prefix_config(False),
        read_matrix=_read_prefix,
        in_vocabulary_space=False,
        kv_cache=True,
        card_label="P-tuning v2 (Liu et al., 2022)",
        card_tag="p-tuning-v2",
        supports_gradient_checkpointing=False,
    )
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / accelerate / torch.compile wrappers down to the peft model."""
    from peft import PeftModel
    from torch import nn

    seen = 0
    while not isinstance(model, PeftModel) and seen < 8:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
        seen += 1
    return model


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
            f"adapter {name!r} uses {peft_type_name(cfg)}, which is not a prompt-learning "
            "method, so it has no soft prompt to regularise. Use PROMPT_TUNING, P_TUNING or "
            "PREFIX_TUNING (e.g. peft.PromptTuningConfig), or train LoRA with a plain Trainer."
        )
    if method_of(cfg, missing_ok=True) is None:
        raise ConfigError(
            f"adapter {name!r} uses {peft_type_name(cfg)}; hf-tsprompt supports "
            f"{_supported_adapters()}."
        )
    return inner, name, cfg


def prompt_matrix(model: nn.Module, adapter: str | None = None) -> torch.Tensor:
    """The differentiable soft prompt P (n x d) of a peft prompt-learning model.

    See the module docstring for what P is per method (its :attr:`PromptMethod.read_matrix`).
    The result shares the autograd graph with the trainable parameters, so a loss on it trains
    the prompt.

    Raises:
        ValueError: not a peft prompt-learning model (LoRA, a plain model), or unknown adapter.
    """
    inner, name, cfg = get_prompt_peft_model(model, adapter)
    return method_of(cfg).read_matrix(inner.prompt_encoder[name], cfg)


def prompt_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    """The trainable parameters that produce P (embedding, plus encoder MLP/LSTM if any)."""
    inner, name, _ = get_prompt_peft_model(model, adapter)
    return list(inner.prompt_encoder[name].parameters())


def init_prompt_(model: nn.Module, std: float = 0.02, adapter: str | None = None) -> None:
    """Re-initialise the prompt embedding in place from N(0, std^2) (the paper: std = 0.02).

    peft's own default for prompt tuning (``PromptTuningInit.RANDOM``) is ``nn.Embedding``'s
    N(0, 1); section V-B of the paper uses N(0, 0.02^2 I). For P-tuning and prefix tuning the
    raw embedding (the encoder's input) is re-drawn; the encoder's layers keep their init.
    """
    if not (isinstance(std, (int, float)) and std > 0):
        raise ConfigError(f"prompt init std must be a positive number, got {std!r}.")
    import torch

    inner, name, _ = get_prompt_peft_model(model, adapter)
    with torch.no_grad():
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
    """A peft config for a registered method (:func:`prompt_method_names`), task CAUSAL_LM.

    Args:
        method: ``prompt_tuning`` | ``p_tuning`` | ``prefix_tuning`` (with the MLP
            reparameterisation of Li & Liang) | ``p_tuning_v2`` (prefix tuning without it), or
            any method added with :func:`register_prompt_method`.
        num_virtual_tokens: n, the number of virtual tokens (points of the cloud).
        init: ``normal`` (N(0, 0.02^2), the paper; applied by :func:`get_prompt_model`),
            ``random`` (peft's N(0, 1)), ``text`` (from ``init_text``), ``sample_vocab``
            (random vocabulary embeddings). ``text``/``sample_vocab`` apply to prompt tuning.
        extra: passed to the peft config unchanged.
    """
    from peft import TaskType

    entry = get_prompt_method(method)
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
    if init not in entry.inits:
        takers = " or ".join(repr(m.name) for m in _REGISTRY.values() if init in m.inits)
        raise ConfigError(f"prompt init {init!r} only applies to method {takers}.")
    common = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": num_virtual_tokens, **extra}
    return entry.build_config(
        common,
        init=init,
        init_text=init_text,
        tokenizer_name_or_path=tokenizer_name_or_path,
        encoder_hidden_size=encoder_hidden_size,
    )


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
        import torch

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
    import torch

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
