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
    err = " ".join(capsys.readouterr().err.split())
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
        ("training.warmup_steps=.nan", "training.warmup_steps=nan is not accepted; it must be"),
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
    err = " ".join(capsys.readouterr().err.split())
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
    assert "causal" in " ".join(capsys.readouterr().err.split()).lower()
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_resolved_recipe(assets, tmp_path, capsys):
    _, model_dir, data_dir = assets
    recipe = _recipe(tmp_path, model_dir, data_dir)
    assert main(["train", str(recipe), "--dry-run", "--set", "ts.weight=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ts"]["weight"] == 0.5 and printed["data"]["source"] == str(data_dir)


def test_evaluate_and_push_on_missing_run_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == EXIT_USER_ERROR
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
    assert main(["push", str(tmp_path / "nope"), "--repo-id", "a/b"]) == EXIT_USER_ERROR
    assert "nothing was pushed" in " ".join(capsys.readouterr().err.split())


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

    from hf_tsprompt.distributed import release_process_groups

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["evaluate", str(tmp_path / "nope")]) == EXIT_USER_ERROR
        assert dist.is_initialized()
    finally:
        # Not a bare destroy_process_group(): one that leaves the gloo workers running is
        # visible to test_distributed.py's thread counts later in this process.
        assert release_process_groups() is True
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


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


# --- plugins: what a user registers reaches the command line --------------------------------

_PLUGIN = """
from hf_tsprompt import Param, register_regularizer

CALLS = []


@register_regularizer(
    "{name}", params=[Param("gamma", 1.0, "Target row norm.", symbol="gamma", bound="> 0")]
)
def spread(P, *, gamma):
    norms = P.float().norm(dim=1)
    loss = ((norms - gamma) ** 2).mean()
    CALLS.append((gamma, float(loss.detach())))
    return loss
"""


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A plugin module on sys.path that registers regulariser ``<module name>_reg``; both are
    removed afterwards (the registry and sys.modules are process-wide)."""
    from hf_tsprompt.regularizers import list_regularizers, unregister_regularizer

    name = f"tsplug_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{name}.py").write_text(_PLUGIN.format(name=f"{name}_reg"))
    monkeypatch.syspath_prepend(str(folder))
    yield name, folder
    if f"{name}_reg" in list_regularizers():
        unregister_regularizer(f"{name}_reg")
    sys.modules.pop(name, None)


def test_a_plugin_regulariser_is_selected_and_trained_from_the_cli(
    assets, plugin_module, tmp_path, capsys, monkeypatch
):
    _, model_dir, data_dir = assets
    name, _ = plugin_module
    monkeypatch.chdir(tmp_path)
    ts = {"regularizer": f"{name}_reg", "weight": 0.5, "params": {"gamma": 0.3}}
    training = {"max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1}
    recipe = _recipe(tmp_path, model_dir, data_dir, ts=ts, name="plug", training=training)
    # Without the plugin the name is unknown, and the error says how to bring it in.
    assert main(["train", str(recipe), "--dry-run"]) == EXIT_USER_ERROR
    err = " ".join(capsys.readouterr().err.split())
    assert f"'{name}_reg' is not a registered" in err and "hf-tsprompt --plugin MODULE" in err
    assert name not in sys.modules and not (tmp_path / "runs").exists()

    assert main(["--plugin", name, "train", str(recipe), "--quiet"]) == 0
    calls = sys.modules[name].CALLS
    assert len(calls) == 4 and all(gamma == 0.3 for gamma, _ in calls)
    run = tmp_path / "runs" / "plug"
    state = json.loads((run / "trainer_state.json").read_text())
    logged = [h["loss_ts"] for h in state["log_history"] if "loss_ts" in h]
    assert logged == pytest.approx([loss for _, loss in calls])
    saved = yaml.safe_load((run / "recipe.yaml").read_text())["ts"]
    assert {k: saved[k] for k in ts} == ts
    assert f"| regulariser | {name}_reg |" in (run / "README.md").read_text()


def _dist_info(folder: Path, dist: str, entry: str) -> None:
    """An installed distribution as importlib.metadata finds it: a dist-info on sys.path."""
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hf_tsprompt.plugins]\n{entry}\n")


def test_installed_plugins_are_found_by_entry_point(plugin_module):
    from hf_tsprompt.cli import load_plugins
    from hf_tsprompt.regularizers import list_regularizers

    name, folder = plugin_module
    (folder / f"{name}_setup.py").write_text("CALLED = []\ndef setup():\n    CALLED.append(1)\n")
    _dist_info(folder, "tsplug-dist", f"regs = {name}\nsetup = {name}_setup:setup")
    try:
        loaded = load_plugins()
        assert "tsplug-dist:regs" in loaded and "tsplug-dist:setup" in loaded
        assert f"{name}_reg" in list_regularizers()
        assert sys.modules[f"{name}_setup"].CALLED == [1]  # a function entry point is called
    finally:
        sys.modules.pop(f"{name}_setup", None)


def test_a_broken_or_missing_plugin_is_named(plugin_module, tmp_path, capsys):
    from hf_tsprompt.cli import load_plugins
    from hf_tsprompt.errors import ConfigError

    _, folder = plugin_module
    assert main(["--plugin", "no_such_tsplug_module", "report", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--plugin no_such_tsplug_module: cannot import it" in err
    (folder / "tsplug_broken.py").write_text("raise RuntimeError('half-written plugin')\n")
    try:
        with pytest.raises(ConfigError, match="half-written plugin"):
            load_plugins(["tsplug_broken"])
        _dist_info(folder, "tsplug-bad", "bad = tsplug_broken")
        with pytest.raises(ConfigError, match="'tsplug-bad'.*hf_tsprompt.plugins.*half-written"):
            load_plugins()
    finally:
        sys.modules.pop("tsplug_broken", None)
