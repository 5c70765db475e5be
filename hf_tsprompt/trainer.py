"""``TopologicalPromptTrainer``: a transformers ``Trainer`` that adds TSLoss to cross-entropy.

The objective of section V-B: ``L_total = L_ce + lambda_ts * L_ts`` with
``L_ts = beta_H0 L_H0 + beta_H1 L_H1`` (Eq. 6, :func:`hf_tsprompt.losses.ts_loss`) on the soft
prompt P (:func:`hf_tsprompt.prompts.prompt_matrix`). The baselines of Table III that are a loss
on P (``l2``, ``pdloss``) and plain CE (``none``) are the same trainer with another
``ts_regularizer``.

Layout follows TRL: the config (:mod:`hf_tsprompt.config`, a ``TrainingArguments`` subclass
with documented ``ts_*`` fields, re-exported here) sits beside the trainer; extra metrics are
collected in ``self._metrics`` inside ``compute_loss`` and averaged into the logs by an
overridden ``log()``, so TensorBoard / W&B receive them (a callback's ``on_log`` runs after
the reporting integrations have written).

**Gradient accumulation and world size.** ``Trainer`` divides the returned loss by the
number of accumulation steps only when the CE is *not* already normalised by
``num_items_in_batch`` (``loss_is_scaled_for_ga`` / ``model_accepts_loss_kwargs``), and with
``average_tokens_across_devices`` it multiplies the CE by the number of processes before DDP
averages the gradients. The regulariser is the same on every micro-batch and every rank (the
prompt only changes at the optimiser step), so it is added *after* ``super().compute_loss`` and
divided by the accumulation steps exactly when the Trainer will not do it. Its gradient per
optimiser step is then ``lambda_ts * grad L_ts`` for any accumulation and any world size.

**The CE is the Trainer's, unchanged** (``ts_weight=0`` trains bit for bit like ``Trainer``).
Note a quirk it inherits: ``Trainer`` counts ``num_items_in_batch`` over ``labels[:, 1:]``,
assuming position 0 is never a prediction target; peft's prompt tuning and P-tuning prepend
the virtual tokens, which makes position 0 a target. The logged CE is therefore the token sum
divided by one token fewer per sequence than the model's own mean (a constant factor, like a
slightly larger learning rate); we keep it so that comparisons against plain ``Trainer`` runs
stay exact.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import Trainer, TrainingArguments

from .config import TopologicalPromptConfig, TSArguments
from .errors import ConfigError, RunFolderError
from .prompts import PromptCapture, get_prompt_peft_model, method_of, prompt_matrix
from .regularizers import get_regularizer
from .runs import adapter_dir, adapter_save_kwargs, find_adapter, save_adapter

__all__ = [
    "MetricSource",
    "TSArguments",
    "TopologicalLossMixin",
    "TopologicalPromptConfig",
    "TopologicalPromptTrainer",
    "upgrade_args",
]


@runtime_checkable
class MetricSource(Protocol):
    """The trainer-to-callback metric hand-over: a callback that has metrics for the log.

    At every log, :class:`TopologicalLossMixin` adds ``pop_pending_logs()`` of each callback
    that implements this to the logged dict, beside its own ``loss_ce`` / ``loss_ts`` /
    ``ts_*``, so the metrics reach ``log_history`` and every integration at the same step.
    ``hf_tsprompt.callbacks.PersistenceCallback`` implements it (its ``topo/*`` metrics).
    """

    def pop_pending_logs(self) -> dict[str, float]:
        """The metrics not yet logged; each is returned once."""
        ...


class TopologicalLossMixin:
    """``compute_loss`` / ``log`` additions shared by the Trainer and the TRL variant, and
    their model card (``create_model_card``) and push (``push_to_hub``)."""

    args: Any
    accelerator: Any
    model: Any

    def _init_topological(self) -> None:
        # The regulariser and its checked parameters, resolved once (the registry is read
        # now, at construction, not at import): the ts_* settings are read when the trainer
        # is built, as TrainingArguments' are; each step only computes.
        self._ts_values = self.args.validate_ts()
        self._ts_regularizer = get_regularizer(self.args.ts_regularizer)
        # Fail at construction (not mid-training) on a model without a soft prompt.
        get_prompt_peft_model(self.model, self.args.ts_adapter)
        if getattr(self.args, "gradient_checkpointing", False):
            _, _, cfg = get_prompt_peft_model(self.model, self.args.ts_adapter)
            method = method_of(cfg)
            if not method.supports_gradient_checkpointing:
                raise ConfigError(
                    f"gradient_checkpointing=True does not work with {method.name}: the "
                    "prefix enters every layer as a key/value cache, which checkpointed layers "
                    "do not accept. Set gradient_checkpointing=False (prefixes are small; "
                    "memory is rarely the issue), or use prompt tuning."
                )
            # Frozen input embeddings give checkpointed blocks no input that requires grad.
            self.model.enable_input_require_grads()
        if not hasattr(self, "_metrics"):
            self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._prompt_capture = PromptCapture(self.model, self.args.ts_adapter)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save a checkpoint without asking the Hub anything.

        peft's ``save_embedding_layers="auto"`` (what the Trainer's checkpoint save uses) looks
        the base model's config up on the Hub at every save; without a network that answers,
        each checkpoint then stalls for the Hub timeout. A prompt never changes the vocabulary,
        so the embedding layers are never saved with it.
        """
        model = self.model
        save = getattr(model, "save_pretrained", None)
        if not callable(save) or "save_pretrained" in vars(model):
            super()._save(output_dir, state_dict)  # type: ignore[misc]
            return

        def save_without_embeddings(*args: Any, **kwargs: Any) -> Any:
            return save(*args, **adapter_save_kwargs(kwargs))

        model.save_pretrained = save_without_embeddings
        try:
            super()._save(output_dir, state_dict)  # type: ignore[misc]
        finally:
            del model.save_pretrained  # back to the class's own method

    def regularizer(self, model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """The unweighted regulariser L_reg on the prompt of ``model`` and its parts for logging
        (``args.ts_regularizer`` from :mod:`hf_tsprompt.regularizers`, with its parameters as
        resolved at construction)."""
        args = self.args
        # The prompt from this step's forward pass (full even under FSDP / ZeRO-3); outside a
        # forward pass (a direct call) it is read from the parameters.
        P = self._prompt_capture.take()
        if P is None:
            P = prompt_matrix(self.accelerator.unwrap_model(model), args.ts_adapter)
        device_type = P.device.type if P.device.type in ("cpu", "cuda", "xpu", "mps") else "cpu"
        # The regulariser is computed in float32 whatever the model's mixed-precision setting.
        with torch.autocast(device_type=device_type, enabled=False):
            return self._ts_regularizer.compute(P, self._ts_values)

    def _loss_is_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """Mirror of ``Trainer.training_step``'s decision whether to divide the loss by GA."""
        flag = getattr(self, "loss_is_scaled_for_ga", None)
        if flag is not None:
            return bool(flag)
        return bool(
            (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
            or getattr(self, "compute_loss_func", None) is not None
        )

    def _add_regularizer(
        self, model: torch.nn.Module, ce: torch.Tensor, num_items_in_batch: Any
    ) -> torch.Tensor:
        mode = "train" if model.training else "eval"
        scaled = self._loss_is_scaled_for_ga(num_items_in_batch)
        ga = (
            getattr(self, "current_gradient_accumulation_steps", None)
            or self.args.gradient_accumulation_steps
        )
        # The CE this micro-batch contributes to the logged (per optimiser step) loss.
        ce_log = ce.detach().float() * (ga if scaled and mode == "train" else 1)
        self._metrics[mode]["loss_ce"].append(self._mean_across_processes(ce_log))
        if mode != "train" or not self._ts_regularizer.active:
            return ce
        reg, parts = self.regularizer(model)
        self._metrics[mode]["loss_ts"].append(float(reg.detach()))
        for key, value in parts.items():
            self._metrics[mode][key].append(value)
        weight = self.args.ts_weight / (ga if scaled else 1)
        if weight == 0:
            return ce
        return ce + weight * reg.to(ce.dtype)

    def _mean_across_processes(self, value: torch.Tensor) -> float:
        if getattr(self.accelerator, "num_processes", 1) > 1:
            value = self.accelerator.gather(value.reshape(1).to(self.accelerator.device)).mean()
        return float(value)

    def _merge_metrics(self, logs: dict[str, float]) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        for key, value in metrics.items():
            logs.setdefault(key, value)
        self._metrics[mode].clear()
        for cb in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, MetricSource):
                logs.update(cb.pop_pending_logs())

    # --- the model card and the push (TRL's way: create_model_card, then upload) ---------------

    def _card_ts(self) -> dict[str, Any]:
        """This trainer's regulariser settings for the card (its ``ts_*`` fields)."""
        return {
            name.removeprefix("ts_"): getattr(self.args, name)
            for name in vars(self.args)
            if name.startswith("ts_")
        }

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Write the hf-tsprompt model card into ``<output_dir>/README.md``.

        Overrides ``Trainer.create_model_card`` as TRL's trainers do: the card is
        rendered from the packaged template by :func:`hf_tsprompt.cards.save_model_card` from
        what ``output_dir`` holds (the adapter, saved into ``<output_dir>/adapter`` first when
        it is not there yet, the trainer state, the barcode records, the figures) and this
        trainer's ``ts_*`` fields. ``finetuned_from``: the base model's Hub id when the model
        does not record one; the snippet loads the adapter from ``repo_id=`` (a keyword this
        override adds), else ``args.hub_model_id``, else its folder. The other arguments of
        ``Trainer.create_model_card`` are accepted and not used: the card's metadata comes
        from the run (the README tags come from its regulariser and prompt method). Only the
        main process writes.
        """
        # Imported here (as in push_to_hub), so training never loads the card's modules.
        from .cards import save_model_card

        if not self.is_world_process_zero():  # type: ignore[attr-defined]
            return
        out = Path(self.args.output_dir)
        try:
            find_adapter(out)
        except RunFolderError:
            save_adapter(self.accelerator.unwrap_model(self.model), adapter_dir(out))
        repo_id = kwargs.get("repo_id") or self.args.hub_model_id
        save_model_card(out, repo_id, base_model=finetuned_from, ts=self._card_ts())

    def push_to_hub(
        self,
        commit_message: str | None = None,
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        *,
        repo_id: str | None = None,
        private: bool | None = None,
        base_model: str | None = None,
        private_base: bool = False,
        **kwargs: Any,
    ) -> str | None:
        """Save the adapter into ``<output_dir>/adapter``, write the card, push the run folder.

        As ``Trainer.push_to_hub``, this calls :meth:`create_model_card` and then uploads; but
        not the whole ``output_dir`` (its ``training_args.bin`` and ``adapter_config.json``
        name this machine's folders): :func:`hf_tsprompt.hub.push_to_hub` uploads the adapter
        at the repo root, the card, the figures and the barcode records in one commit, with no
        path of this machine in them. ``repo_id`` defaults to ``args.hub_model_id``.
        ``base_model``: the base model's Hub id when the model does not record one (built
        from a config, or loaded from a local folder); ``private_base`` publishes without one.
        Returns the commit URL (None on non-main processes).

        Raises:
            ConfigError: no ``repo_id`` and no ``args.hub_model_id``.
            HubError: see :func:`hf_tsprompt.hub.push_to_hub`.
        """
        # lazy: as in create_model_card, training never loads the card's or the Hub's modules
        from .cards import base_model_id
        from .hub import push_to_hub as push_run

        if not self.is_world_process_zero():  # type: ignore[attr-defined]
            return None
        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ConfigError("push_to_hub needs repo_id=... or args.hub_model_id.")
        out = Path(self.args.output_dir)
        save_adapter(self.accelerator.unwrap_model(self.model), adapter_dir(out))
        self.save_state()  # type: ignore[attr-defined]
        base_id = base_model_id(out, base_model)
        self.create_model_card(finetuned_from=base_id, repo_id=repo_id)
        return push_run(
            out,
            repo_id,
            private=bool(private if private is not None else self.args.hub_private_repo),
            token=token or self.args.hub_token,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
            base_model=base_id,
            private_base=private_base,
            ts=self._card_ts(),
        )


class TopologicalPromptTrainer(TopologicalLossMixin, Trainer):
    """A drop-in ``Trainer`` for peft prompt-learning models that adds TSLoss to the CE.

    Same constructor as ``transformers.Trainer``; pass a :class:`TopologicalPromptConfig` as
    ``args`` (a plain ``TrainingArguments`` is upgraded with default ``ts_*`` values). Logs
    ``loss_ce``, ``loss_ts``, ``ts_h0``, ``ts_h1``, ``ts_delta`` and ``ts_zeta`` beside ``loss``.

    Raises:
        ValueError: at construction, if the model is not a peft prompt-learning model (e.g. LoRA)
            or a ``ts_*`` value is invalid.
    """

    def __init__(self, model: Any = None, args: TrainingArguments | None = None, **kwargs: Any):
        args = upgrade_args(args, TopologicalPromptConfig)
        super().__init__(model=model, args=args, **kwargs)
        self._init_topological()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        loss = self._add_regularizer(model, loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._merge_metrics(logs)
        super().log(logs, start_time)


def upgrade_args(args: Any, cls: type) -> Any:
    """Accept a plain ``TrainingArguments`` (default ``ts_*`` values) or None (like Trainer)."""
    if args is None:
        return cls(output_dir="tmp_trainer")
    if isinstance(args, TSArguments):
        return args  # its ts_* values are checked when the trainer resolves them
    if isinstance(args, TrainingArguments):
        # Re-run the dataclass constructor on the user's own field values (not to_dict(), which
        # serialises enums and drops non-init state).
        from dataclasses import fields

        values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
        return cls(**values)
    raise ConfigError(
        f"args must be a TrainingArguments / TopologicalPromptConfig, got {type(args).__name__}."
    )
