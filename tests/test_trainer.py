"""TopologicalPromptTrainer on a tiny seeded Llama (seconds each); the TRL variant: test_sft.py."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from hf_tsprompt.errors import ConfigError
from hf_tsprompt.losses import l2_loss, pairwise_distance_loss, ts_loss
from hf_tsprompt.prompts import get_prompt_model, prompt_matrix
from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

from tiny import tiny_llama, tiny_lm_dataset


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    base.update(kw)
    return TopologicalPromptConfig(**base)


def _prompt_model(tokenizer, method="prompt_tuning", n=8, std=0.02, seed=0):
    torch.manual_seed(seed)
    return get_prompt_model(
        tiny_llama(len(tokenizer), seed=seed), method, num_virtual_tokens=n, init_std=std
    )


def _trainer(tokenizer, model, args, cls=TopologicalPromptTrainer, n=8):
    return cls(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer, n),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )


def test_only_prompt_parameters_change(tokenizer, tmp_path):
    model = _prompt_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _trainer(tokenizer, model, _args(tmp_path)).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"prompt_encoder.default.embedding.weight"}


def test_logged_loss_is_ce_plus_weighted_ts(tokenizer, tmp_path):
    weight = 25.0
    model = _prompt_model(tokenizer, std=0.5)
    data = tiny_lm_dataset(tokenizer, 8)
    collator = DataCollatorForSeq2Seq(tokenizer)
    batch = collator([data[i] for i in range(8)])
    with torch.no_grad():
        ce_model = model(**batch).loss.item()
        ts = ts_loss(prompt_matrix(model), tau=0.1, alpha=10.0).total.item()
    # Trainer normalises the summed token loss by num_items_in_batch, counted over
    # labels[:, 1:] (it assumes position 0 is never a target). peft prepends virtual tokens,
    # which makes position 0 a target too, so the model's own mean uses one more token per row.
    n_model = (batch["labels"] != -100).sum().item()
    n_trainer = (batch["labels"][:, 1:] != -100).sum().item()
    ce = ce_model * n_model / n_trainer
    args = _args(tmp_path, per_device_train_batch_size=8, max_steps=1, ts_weight=weight)
    trainer = _trainer(tokenizer, model, args)
    trainer.train()
    log = trainer.state.log_history[0]
    assert weight * ts > 0.05 * ce  # the regulariser is a visible part of the loss
    assert log["loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert log["loss_ts"] == pytest.approx(ts, rel=1e-5)
    assert log["loss"] == pytest.approx(ce + weight * ts, rel=1e-5)
    for key in ("ts_h0", "ts_h1", "ts_delta", "ts_zeta"):
        assert key in log


@pytest.mark.parametrize("regularizer", ["tsloss", "l2", "pdloss"])
def test_gradient_accumulation_gives_the_same_update(tokenizer, tmp_path, regularizer):
    prompts = []
    for bs, ga in ((8, 1), (4, 2), (2, 4)):
        model = _prompt_model(tokenizer, std=0.5)
        args = _args(
            tmp_path / f"{bs}x{ga}",
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=2,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            ts_weight=10.0,
            ts_regularizer=regularizer,
        )
        _trainer(tokenizer, model, args).train()
        prompts.append(prompt_matrix(model).detach().clone())
    init = _prompt_model(tokenizer, std=0.5)
    assert not torch.allclose(prompts[0], prompt_matrix(init).detach(), atol=1e-3)
    for other in prompts[1:]:
        assert torch.allclose(prompts[0], other, atol=2e-5, rtol=1e-4)


def test_regulariser_gradient_scale_is_independent_of_accumulation(tokenizer, tmp_path):
    # SGD updates are linear in the gradient, so the difference between a run with weight 10
    # and one with weight 0 is the regulariser's own update: -lr * 10 * grad L_ts.
    updates = {}
    for ga in (1, 4):
        deltas = []
        for weight in (0.0, 10.0):
            model = _prompt_model(tokenizer, std=0.5)
            start = prompt_matrix(model).detach().clone()
            args = _args(
                tmp_path / f"ga{ga}w{weight}",
                per_device_train_batch_size=8 // ga,
                gradient_accumulation_steps=ga,
                max_steps=1,
                optim="sgd",
                learning_rate=0.1,
                lr_scheduler_type="constant",
                max_grad_norm=0.0,  # no clipping: the update is exactly -lr * gradient
                ts_weight=weight,
            )
            _trainer(tokenizer, model, args).train()
            deltas.append(prompt_matrix(model).detach() - start)
        updates[ga] = deltas[1] - deltas[0]
    model = _prompt_model(tokenizer, std=0.5)
    P = prompt_matrix(model)
    (grad,) = torch.autograd.grad(ts_loss(P, tau=0.1, alpha=10.0).total, P)
    expected = -0.1 * 10.0 * grad
    for ga in (1, 4):
        assert torch.allclose(updates[ga], expected, atol=1e-6, rtol=1e-3), ga


def test_zero_weight_trains_exactly_like_plain_trainer(tokenizer, tmp_path):
    ours = _prompt_model(tokenizer)
    _trainer(tokenizer, ours, _args(tmp_path / "a", ts_weight=0.0)).train()
    plain = _prompt_model(tokenizer)
    plain_args = TrainingArguments(
        output_dir=str(tmp_path / "b"),
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    _trainer(tokenizer, plain, plain_args, cls=Trainer).train()
    assert torch.equal(prompt_matrix(ours), prompt_matrix(plain))


@pytest.mark.parametrize("regularizer,fn", [("l2", l2_loss), ("pdloss", pairwise_distance_loss)])
def test_baseline_regularisers_are_logged(tokenizer, tmp_path, regularizer, fn):
    model = _prompt_model(tokenizer, std=0.3)
    expected = fn(prompt_matrix(model)).item()
    trainer = _trainer(tokenizer, model, _args(tmp_path, ts_regularizer=regularizer, max_steps=1))
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss_ts"] == pytest.approx(expected, rel=1e-5)
    assert "ts_h0" not in log


def test_none_regulariser_logs_ce_only(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, _prompt_model(tokenizer), _args(tmp_path, ts_regularizer="none"))
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(log["loss_ce"], rel=1e-6) and "loss_ts" not in log


@pytest.mark.parametrize("method", ["p_tuning", "prefix_tuning", "p_tuning_v2"])
def test_other_prompt_methods_train(tokenizer, tmp_path, method):
    model = _prompt_model(tokenizer, method=method)
    before = prompt_matrix(model).detach().clone()
    trainer = _trainer(tokenizer, model, _args(tmp_path, max_steps=2))
    trainer.train()
    assert not torch.allclose(prompt_matrix(model), before)
    assert trainer.state.log_history[0]["loss_ts"] > 0


def test_plain_training_arguments_are_upgraded(tokenizer, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1)
    trainer = _trainer(tokenizer, _prompt_model(tokenizer), args)
    assert isinstance(trainer.args, TopologicalPromptConfig)
    assert trainer.args.ts_regularizer == "tsloss" and trainer.args.max_steps == 1


def test_lora_model_fails_at_construction(tokenizer, tmp_path):
    lora = get_peft_model(tiny_llama(len(tokenizer)), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not a prompt-learning method"):
        _trainer(tokenizer, lora, _args(tmp_path))
    with pytest.raises(ValueError, match="expected a peft PeftModel"):
        _trainer(tokenizer, tiny_llama(len(tokenizer)), _args(tmp_path))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("ts_regularizer", "l1", "ts_regularizer='l1' is not a registered regulariser"),
        ("ts_variant", "approx", "ts_variant must be one of soft, exact, got 'approx'"),
        ("ts_weight", -1.0, "ts_weight must be >= 0, got -1.0"),
        ("ts_tau", 0.0, "ts_tau must be > 0, got 0.0"),
        ("ts_alpha", "ten", "ts_alpha must be a finite number, got 'ten'"),
    ],
)
def test_bad_config_values(tmp_path, field, value, match):
    with pytest.raises(ConfigError, match=match):
        TopologicalPromptConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})


def test_prefix_tuning_refuses_gradient_checkpointing(tokenizer, tmp_path):
    model = _prompt_model(tokenizer, method="prefix_tuning")
    with pytest.raises(ConfigError, match="gradient_checkpointing=False"):
        _trainer(tokenizer, model, _args(tmp_path, gradient_checkpointing=True))


def test_gradient_checkpointing_with_prompt_tuning(tokenizer, tmp_path):
    model = _prompt_model(tokenizer)
    before = prompt_matrix(model).detach().clone()
    _trainer(tokenizer, model, _args(tmp_path, gradient_checkpointing=True, max_steps=2)).train()
    assert not torch.allclose(prompt_matrix(model), before)


def test_bf16_on_cpu_keeps_the_regulariser_in_float32(tokenizer, tmp_path):
    model = _prompt_model(tokenizer)
    trainer = _trainer(tokenizer, model, _args(tmp_path, bf16=True, max_steps=2))
    trainer.train()
    log = trainer.state.log_history[0]
    with torch.no_grad():
        reg, _ = trainer.regularizer(model)
    assert reg.dtype == torch.float32
    assert torch.isfinite(torch.tensor(log["loss"])) and log["loss_ts"] > 0


def test_a_callback_with_pending_metrics_is_logged_through_the_declared_protocol(
    tokenizer, tmp_path
):
    from transformers import TrainerCallback

    from hf_tsprompt.callbacks import PersistenceCallback
    from hf_tsprompt.trainer import MetricSource

    class Counter(TrainerCallback):
        def __init__(self):
            self.calls = 0

        def pop_pending_logs(self):
            self.calls += 1
            return {"my/metric": float(self.calls)}

    class Unrelated(TrainerCallback):
        pop_pending_logs = None  # an attribute of that name is not the protocol

    assert isinstance(PersistenceCallback(), MetricSource)
    assert not isinstance(Unrelated(), MetricSource)
    counter = Counter()
    trainer = _trainer(tokenizer, _prompt_model(tokenizer), _args(tmp_path))
    trainer.add_callback(counter)
    trainer.add_callback(Unrelated())
    trainer.train()
    logged = [h["my/metric"] for h in trainer.state.log_history if "my/metric" in h]
    # One hand-over per log: the 3 logging steps and the end-of-training summary.
    assert logged == [1.0, 2.0, 3.0, 4.0] and counter.calls == 4


def test_the_regulariser_is_resolved_once_per_trainer(tokenizer, tmp_path, monkeypatch):
    """Issue 27: its parameters are checked at construction, not at every training step."""
    from hf_tsprompt.regularizers import Regularizer

    calls = []
    resolve = Regularizer.resolve

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return resolve(self, *args, **kwargs)

    monkeypatch.setattr(Regularizer, "resolve", counting)
    args = _args(tmp_path, max_steps=3)  # the config checks its ts_* values once, too
    calls.clear()
    trainer = _trainer(tokenizer, _prompt_model(tokenizer), args)
    assert calls == ["tsloss"]
    trainer.train()
    assert calls == ["tsloss"] and trainer.state.global_step == 3
