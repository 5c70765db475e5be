"""The ``hf-tsprompt`` CLI end to end on the tiny model and a small local dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from hf_tsprompt.cli import EXIT_USER_ERROR, main
from hf_tsprompt.records import read_records

from procs import run_process
from tiny import TINY_HUB_ID, save_tiny_hub_model, write_tiny_gsm8k


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny_hub_model(root / "model")
    data_dir = write_tiny_gsm8k(root / "data")
    return root, model_dir, data_dir


def _recipe(folder: Path, model_dir: Path, data_dir: Path, **extra) -> Path:
    raw = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"task": "gsm8k", "source": str(data_dir), "train_size": 4, "test_size": 4},
        "peft": {"num_virtual_tokens": 5},
        "topology": {"every_n_steps": 2, "evaluate": "train"},
        "training": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 0.05},
        "evaluation": {"batch_size": 4, "max_new_tokens": 6},
    }
    raw.update(extra)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_evaluate_plot_analyze_card(assets, tmp_path, capsys, monkeypatch):
    _, model_dir, data_dir = assets
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, model_dir, data_dir)
    assert main(["train", str(recipe), "--quiet", "--set", "name=cli-run"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "cli-run"
    assert f"Run finished: {run.resolve()}" in out and "accuracy (test):" in out
    for rel in (
        "run.json",
        "recipe.yaml",
        "adapter/adapter_config.json",
        "trainer_state.json",
        "eval/before.json",
        "eval/after.json",
        "README.md",
        "figures/barcodes.png",
    ):
        assert (run / rel).is_file(), rel
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == 4
    assert info["base_model"] == TINY_HUB_ID
    assert [r["step"] for r in read_records(run)] == [0, 2, 4]
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == TINY_HUB_ID
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["name"] == "cli-run"

    assert main(["evaluate", str(run), "--quiet", "--name", "again"]) == 0
    again = json.loads((run / "eval" / "again.json").read_text())
    after = json.loads((run / "eval" / "after.json").read_text())
    assert again["accuracy"] == after["accuracy"] and again["total"] == 4

    assert main(["evaluate", str(run), "--quiet", "--dpc"]) == 0
    assert "DPC triggered on" in capsys.readouterr().out
    dpc_preds = (run / "eval" / "after_dpc_predictions.jsonl").read_text().splitlines()
    assert len(dpc_preds) == 4 and all("dpc" in json.loads(line) for line in dpc_preds)
    # The tiny model has no head worth calibrating: ACT says so instead of pretending.
    assert main(["evaluate", str(run), "--quiet", "--calibration", "act"]) == EXIT_USER_ERROR
    assert "ACT found no head" in " ".join(capsys.readouterr().err.split())
    assert main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "topology_curves.png").is_file()
    assert main(["analyze", str(run)]) == 0
    assert (run / "analysis.json").is_file() or any(run.glob("analysis*.json"))
    assert (run / "explain.json").is_file()  # written at the end of training
    assert main(["explain", str(run), "--top-k", "3"]) == 0
    assert "virtual token" in capsys.readouterr().out.lower()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["card", str(run), "--repo-id", "me/x"]) == 0
    assert 'PeftModel.from_pretrained(base, "me/x")' in (run / "README.md").read_text()


def test_existing_run_is_refused_then_overwritten(assets, tmp_path, capsys, monkeypatch):
    _, model_dir, data_dir = assets
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, model_dir, data_dir, training={"max_steps": 2})
    assert main(["train", str(recipe), "--quiet"]) == 0
    marker = tmp_path / "runs" / "recipe" / "notes.txt"
    marker.write_text("mine")
    capsys.readouterr()
    assert main(["train", str(recipe), "--quiet"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "Traceback" not in err
    assert main(["train", str(recipe), "--quiet", "--overwrite"]) == 0
    assert marker.read_text() == "mine"  # overwrite only replaces what a run writes


@pytest.mark.parametrize(
    "setting,message",
    [
        ("ts.wieght=1", "unknown key ts.wieght"),
        ("training.max_steps=ten", "training.max_steps must be int"),
        # issue 18: torch rejected these only after the model loaded and evaluated
        ("training.learning_rate=-1", "training.learning_rate=-1.0 is not accepted"),
        ("training.per_device_train_batch_size=0", "per_device_train_batch_size=0 is not"),
        ("training.gradient_accumulation_steps=0", "must be >= 1"),
        ("training.warmup_steps=.nan", "must be a finite number >= 0"),
        ("training.eval_strategy=steps", "training.eval_strategy must be 'no'"),
        ("training.fp16=true", "training.fp16 needs a CUDA GPU"),
        ("peft.method=lora", "peft.method='lora' is not allowed"),
        ("data.source=./missing/train.jsonl", "does not exist"),
        ("model.name_or_path=./no-such-model", "does not exist"),
    ],
)
def test_bad_recipes_exit_2_without_traceback_and_write_nothing(
    assets, tmp_path, capsys, monkeypatch, setting, message
):
    _, model_dir, data_dir = assets
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, model_dir, data_dir)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", str(recipe), "--quiet", "--set", setting]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_not_a_causal_lm_is_refused_before_anything_is_written(assets, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    _, _, data_dir = assets
    bert = tmp_path / "bert"
    BertModel(
        BertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=50,
        )
    ).save_pretrained(bert)
    recipe = _recipe(tmp_path, bert, data_dir, output_dir=str(tmp_path / "out"))
    assert main(["train", str(recipe), "--quiet"]) == EXIT_USER_ERROR
    assert "causal" in capsys.readouterr().err.lower()
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_resolved_recipe(assets, tmp_path, capsys):
    _, model_dir, data_dir = assets
    recipe = _recipe(tmp_path, model_dir, data_dir)
    assert main(["train", str(recipe), "--dry-run", "--set", "ts.weight=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ts"]["weight"] == 0.5 and printed["data"]["source"] == str(data_dir)


def test_evaluate_and_push_on_missing_run_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == EXIT_USER_ERROR
    assert "does not exist" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "nope"), "--repo-id", "a/b"]) == EXIT_USER_ERROR
    assert "nothing was pushed" in capsys.readouterr().err


@pytest.mark.slow
def test_help_texts_explain_themselves():
    commands = ["train", "evaluate", "plot", "analyze", "push", "card", "explain", "report"]
    for args in ([], *([c] for c in commands)):
        result = run_process([sys.executable, "-m", "hf_tsprompt", *args, "--help"], timeout=60)
        assert result.returncode == 0, result.stderr
        assert "usage: hf-tsprompt" in result.stdout
    top = run_process([sys.executable, "-m", "hf_tsprompt", "--help"], timeout=60).stdout
    for command in commands:
        assert command in top


def test_a_callers_own_process_group_survives_main(tmp_path, capsys):
    """main() destroys only a process group its command created (see test_distributed.py);
    one that the caller set up before is still alive afterwards."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["evaluate", str(tmp_path / "nope")]) == EXIT_USER_ERROR
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    assert "does not exist" in capsys.readouterr().err


def _run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_a_run_that_fails_mid_training_says_so_and_the_next_train_explains(
    assets, tmp_path, capsys, monkeypatch
):
    """A value that only shows at run time (a learning rate so large the prompt diverges)
    leaves run.json ``failed`` with the error; the next ``train`` says so and what applies."""
    _, model_dir, data_dir = assets
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, model_dir, data_dir, evaluation={"before": False})
    with pytest.raises(ValueError, match="NaN or Inf"):
        main(["train", str(recipe), "--quiet", "--set", "training.learning_rate=1e30"])
    info = _run_json(tmp_path / "runs" / "recipe")
    assert info["status"] == "failed" and "NaN or Inf" in info["error"]
    assert info["error"].startswith("ValueError: ") and 0 < info["global_step"] < 4
    capsys.readouterr()
    assert main(["train", str(recipe), "--quiet"]) == EXIT_USER_ERROR
    err = " ".join(capsys.readouterr().err.split())
    assert "previous run" in err and "failed at step" in err and "NaN or Inf" in err
    assert "--overwrite" in err and "--resume does not apply" in err and "Traceback" not in err
    assert main(["train", str(recipe), "--quiet", "--overwrite"]) == 0
    info = _run_json(tmp_path / "runs" / "recipe")
    assert info["status"] == "finished" and "error" not in info


def test_ctrl_c_is_recorded_and_resume_is_offered(assets, tmp_path, capsys, monkeypatch):
    """SIGINT during training (a real signal, as Ctrl-C sends) leaves run.json
    ``interrupted``; the next ``train`` offers --resume from the saved checkpoint, which
    finishes the run."""
    import os
    import signal

    from transformers import TrainerCallback

    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.recipes import load_recipe

    _, model_dir, data_dir = assets
    monkeypatch.chdir(tmp_path)
    path = _recipe(
        tmp_path,
        model_dir,
        data_dir,
        training={
            "max_steps": 4,
            "per_device_train_batch_size": 2,
            "learning_rate": 0.05,
            "save_strategy": "steps",
            "save_steps": 2,
        },
        evaluation={"before": False, "after": False},
    )

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    # Python raises KeyboardInterrupt on SIGINT only if SIGINT was not ignored when it started;
    # a shell starts background jobs (`pytest &`, nohup) with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_from_recipe(
                load_recipe(path), progress=False, log=lambda _m: None, extra_callbacks=[CtrlC()]
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    run = tmp_path / "runs" / "recipe"
    info = _run_json(run)
    assert info["status"] == "interrupted" and info["global_step"] == 3
    assert main(["train", str(path), "--quiet"]) == EXIT_USER_ERROR
    err = " ".join(capsys.readouterr().err.split())
    assert "was interrupted (Ctrl-C) at step 3" in err
    assert "--resume to continue from checkpoint-2" in err and "--overwrite" in err
    assert main(["train", str(path), "--quiet", "--resume"]) == 0
    info = _run_json(run)
    assert info["status"] == "finished" and info["global_step"] == 4
