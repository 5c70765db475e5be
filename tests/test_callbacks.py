"""PersistenceCallback with our trainer and a plain Trainer: schedule, files, logs, resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from hf_tsprompt.callbacks import PersistenceCallback
from hf_tsprompt.errors import ConfigError
from hf_tsprompt.prompts import get_prompt_model, prompt_matrix
from hf_tsprompt.records import evolution_series, load_prompt, read_records
from hf_tsprompt.topology import EVOLUTION_KEYS, persistence
from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

from tiny import tiny_llama, tiny_lm_dataset


def _model(tokenizer):
    torch.manual_seed(0)
    return get_prompt_model(tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=8)


def _args(out, cls=TopologicalPromptConfig, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=7,
        logging_steps=100,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    base.update(kw)
    return cls(**base)


def _train(tokenizer, args, callback, cls=TopologicalPromptTrainer, model=None, resume=None):
    model = model if model is not None else _model(tokenizer)
    trainer = cls(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer, 8),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        callbacks=[callback] if cls is not Trainer else None,
    )
    if cls is Trainer:
        callback.attach(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_snapshots_at_start_schedule_and_end(tokenizer, tmp_path):
    calls = []

    def accuracy(model):
        calls.append(model.training)
        return {"accuracy": 0.25, "correct": 1, "total": 4}

    cb = PersistenceCallback(every_n_steps=3, evaluate=accuracy)
    trainer = _train(tokenizer, _args(tmp_path), cb)
    records = read_records(tmp_path)
    assert [r["step"] for r in records] == [0, 3, 6, 7]
    assert [r["event"] for r in records] == ["train_begin", "step", "step", "step"]
    assert calls == [False] * 4  # evaluated in eval mode, training mode restored after
    assert trainer.model.training
    last = records[-1]
    assert last["accuracy"] == 0.25 and last["eval"] == {"correct": 1, "total": 4}
    # The saved prompt is the model's final prompt, and the record's summary is its topology.
    final = prompt_matrix(trainer.model).detach().numpy()
    assert np.array_equal(load_prompt(tmp_path, last), final)
    assert last["summary"] == persistence(final).summary()
    assert last["n_points"] == 8 and last["dim"] == 32
    assert np.isinf(last["diagrams_np"][0][-1, 1])
    # every line of the file is a standalone JSON document with null for the infinite bar
    lines = (tmp_path / "topology" / "records.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["diagrams"]["h0"][-1][1] is None


def test_epoch_schedule(tokenizer, tmp_path):
    cb = PersistenceCallback(every_n_steps=None, every_n_epochs=2)
    _train(tokenizer, _args(tmp_path, max_steps=-1, num_train_epochs=4), cb)
    # 8 rows / batch 4 = 2 steps per epoch: epochs 2 and 4 end at steps 4 and 8.
    assert [r["step"] for r in read_records(tmp_path)] == [0, 4, 8]


def test_topology_reaches_the_trainer_logs(tokenizer, tmp_path):
    trainer = _train(tokenizer, _args(tmp_path), PersistenceCallback(every_n_steps=3))
    topo = [h for h in trainer.state.log_history if "topo/h1_count" in h]
    assert [h["step"] for h in topo] == [3, 6, 7]
    assert topo[0]["topo/h0_count"] == 8.0
    assert "loss_ts" in topo[0]


def test_plain_trainer_sends_topology_to_tensorboard(tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = _args(tmp_path, cls=TrainingArguments, report_to="tensorboard")
    _train(tokenizer, args, PersistenceCallback(every_n_steps=3), cls=Trainer)
    events = list(tmp_path.rglob("events.out.tfevents*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/topo/h1_count" in tags and "train/topo/entropy" in tags
    assert [e.step for e in acc.Scalars("train/topo/h0_count")] == [3, 6, 7]
    # the evolution metrics too, from the second snapshot (step 3) on
    assert [e.step for e in acc.Scalars("train/topo/h1_bottleneck")] == [3, 6, 7]


def test_resume_continues_the_record_without_duplicates(tokenizer, tmp_path):
    # Uninterrupted reference run.
    ref_dir = tmp_path / "ref"
    _train(tokenizer, _args(ref_dir, max_steps=8), PersistenceCallback(every_n_steps=2))
    reference = read_records(ref_dir)

    # A run that saves a checkpoint at step 4 and goes on to 8, then is resumed from step 4.
    out = tmp_path / "run"
    args = _args(out, max_steps=8, save_strategy="steps", save_steps=4)
    _train(tokenizer, args, PersistenceCallback(every_n_steps=2))
    # Simulate the crash leftovers: a torn record line after the checkpoint.
    with open(out / "topology" / "records.jsonl", "a") as fh:
        fh.write('{"step": 9, "torn')
    _train(tokenizer, args, PersistenceCallback(every_n_steps=2), resume=str(out / "checkpoint-4"))
    records = read_records(out)
    steps = [r["step"] for r in records]
    assert steps == [r["step"] for r in reference] == [0, 2, 4, 6, 8]
    raw = (out / "topology" / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in raw] == steps  # no duplicates, torn line gone
    for a, b in zip(records, reference, strict=True):
        assert a["summary"] == pytest.approx(b["summary"], rel=1e-5)
    # The first snapshot after the resume (step 6) measures its evolution from the last record
    # kept (step 4), not from the interrupted run's dropped step 6 or 8.
    assert "evolution" not in records[0]
    assert [r["evolution"]["previous_step"] for r in records[1:]] == [0, 2, 4, 6]
    for a, b in zip(records[1:], reference[1:], strict=True):
        scale = float(np.max(a["diagrams_np"][0][:-1, 1]))
        for key in EVOLUTION_KEYS:
            assert a["evolution"][key] == pytest.approx(b["evolution"][key], abs=1e-5 * scale)


def _persim(a: np.ndarray, b: np.ndarray, fn) -> float:
    a, b = a[np.isfinite(a[:, 1])], b[np.isfinite(b[:, 1])]
    return float(fn(a if len(a) else np.zeros((1, 2)), b if len(b) else np.zeros((1, 2))))


def test_evolution_is_recorded_and_logged(tokenizer, tmp_path):
    from persim import bottleneck, wasserstein

    trainer = _train(tokenizer, _args(tmp_path), PersistenceCallback(every_n_steps=3))
    records = read_records(tmp_path)
    assert "evolution" not in records[0]  # nothing before the first snapshot
    logged = {h["step"]: h for h in trainer.state.log_history if "topo/h0_wasserstein" in h}
    assert sorted(logged) == [3, 6, 7]
    for prev, rec in itertools.pairwise(records):
        evo = rec["evolution"]
        assert evo["previous_step"] == prev["step"]
        for k in (0, 1):  # persim itself on the two snapshots' finite bars
            a, b = prev["diagrams_np"][k], rec["diagrams_np"][k]
            assert evo[f"h{k}_wasserstein"] == pytest.approx(_persim(a, b, wasserstein), rel=1e-12)
            assert evo[f"h{k}_bottleneck"] == pytest.approx(_persim(a, b, bottleneck), rel=1e-12)
        assert evo["h0_wasserstein"] > 0  # lr 5e-2 moves the prompt visibly
        for key in EVOLUTION_KEYS:
            assert logged[rec["step"]][f"topo/{key}"] == evo[key]
    # The readers' series is the stored one.
    assert [e["h1_bottleneck"] for e in evolution_series(records)] == [
        r["evolution"]["h1_bottleneck"] for r in records[1:]
    ]


def test_torn_last_line_is_skipped_by_readers(tokenizer, tmp_path):
    _train(tokenizer, _args(tmp_path, max_steps=2), PersistenceCallback(every_n_steps=1))
    with open(tmp_path / "topology" / "records.jsonl", "a") as fh:
        fh.write('{"step": 3, "summ')
    assert [r["step"] for r in read_records(tmp_path)] == [0, 1, 2]


def test_new_run_in_same_folder_starts_over(tokenizer, tmp_path):
    _train(tokenizer, _args(tmp_path, max_steps=4), PersistenceCallback(every_n_steps=1))
    _train(tokenizer, _args(tmp_path, max_steps=2), PersistenceCallback(every_n_steps=1))
    assert [r["step"] for r in read_records(tmp_path)] == [0, 1, 2]
    assert not (tmp_path / "topology" / "prompts" / "step_00000004.npy").exists()


def test_no_prompt_files_when_disabled(tokenizer, tmp_path):
    _train(tokenizer, _args(tmp_path, max_steps=2), PersistenceCallback(save_prompts=False))
    records = read_records(tmp_path)
    assert all(r["prompt_file"] is None for r in records)
    assert not (tmp_path / "topology" / "prompts").exists()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"every_n_steps": 0}, "every_n_steps must be a positive int"),
        ({"every_n_epochs": 1.5}, "every_n_epochs must be a positive int"),
        ({"evaluate": "gsm8k"}, "evaluate must be a callable"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PersistenceCallback(**kwargs)


def test_bad_evaluate_return_value(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="must return a float accuracy"):
        _train(tokenizer, _args(tmp_path, max_steps=1), PersistenceCallback(evaluate=lambda m: "x"))
