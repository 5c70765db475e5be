"""Your own data through ``hf-tsprompt``: the ``custom`` task and plugin tasks end to end.

Checks before the model loads (``models.load_base_model`` replaced by a function that fails
the test if called), ``--plugin`` finding a module in the working directory, the run folder
and card of a local-file run (no dataset named), and the whole Hub path: a model repo and a
dataset repo on the local Hub, named only by id in a recipe, trained with ``hf-tsprompt
train`` in a subprocess, pushed, and loaded back by id.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from hf_tsprompt.cli import EXIT_USER_ERROR, main
from hf_tsprompt.data import TASKS

from procs import run_process
from tiny import CAPITALS as ALL_CAPITALS
from tiny import save_tiny_model

CAPITALS = ALL_CAPITALS[:8]  # 6 training, 2 test rows below


def _conversation(country: str, capital: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": capital},
        ]
    }


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("own-data") / "tiny")


def _recipe(folder: Path, data: dict, model: str, **extra) -> Path:
    raw = {
        "model": {"name_or_path": model},
        "data": {"train_size": 4, "test_size": 2, **data},
        "peft": {"num_virtual_tokens": 4},
        "topology": {"every_n_steps": 1, "evaluate": "none"},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 0.05},
        "evaluation": {"batch_size": 2, "max_new_tokens": 4},
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "data,message",
    [
        ({"task": "pairs", "source": "rows.jsonl"}, "data.task='pairs' is not a registered task"),
        ({"task": "custom", "source": "ABSENT"}, "data.source: ABSENT does not exist"),
        ({"task": "custom", "source": "missing.jsonl"}, "data.source: missing.jsonl does not"),
        ({"task": "gsm8k", "source": "ABSENT"}, "data.source: ABSENT does not exist"),
        (
            {"task": "custom", "source": "rows.jsonl", "columns": {"prompt": "q"}},
            "data.columns: ",
        ),
        ({"task": "custom", "source": "rows.jsonl", "test_split": "validation"}, "data.test_sp"),
        ({"task": "custom", "source": "rows.jsonl", "train_size": 7}, "(data.test_size + data."),
        ({"task": "custom", "source": "empty.jsonl"}, "empty.jsonl' is empty; add rows"),
    ],
)
def test_data_problems_exit_2_before_the_model_loads_and_write_nothing(
    tmp_path, monkeypatch, capsys, no_model_load, data, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.jsonl").write_text(_jsonl([_conversation(*c) for c in CAPITALS]))
    (tmp_path / "empty.jsonl").write_text("")
    absent = str(tmp_path / "absent" / "rows.jsonl")
    data = {k: absent if v == "ABSENT" else v for k, v in data.items()}
    recipe = _recipe(tmp_path, data, "some/model", output_dir=str(tmp_path / "run"))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", str(recipe), "--quiet"]) == EXIT_USER_ERROR
    err = "".join(capsys.readouterr().err.split())  # the CLI wraps long paths at hyphens
    assert "".join(message.replace("ABSENT", absent).split()) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_an_unknown_hub_dataset_fails_before_the_model_loads(
    hub, tmp_path, monkeypatch, capsys, no_model_load
):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, {"task": "custom", "source": "alice/no-such-rows"}, "some/model")
    assert main(["train", str(recipe), "--quiet"]) == EXIT_USER_ERROR
    err = " ".join(capsys.readouterr().err.split())
    assert "data.source 'alice/no-such-rows': datasets.load_dataset could not read" in err
    assert not (tmp_path / "runs").exists()


def test_a_local_custom_run_names_no_dataset_on_its_card(tmp_path, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.jsonl").write_text(_jsonl([_conversation(*c) for c in CAPITALS]))
    recipe = _recipe(tmp_path, {"task": "custom", "source": "rows.jsonl"}, str(model_dir))
    assert main(["train", str(recipe), "--quiet", "--set", "name=mine"]) == 0
    run = tmp_path / "runs" / "mine"
    info = json.loads((run / "run.json").read_text())
    assert (info["task"], info["dataset_hub_id"]) == ("custom", None)
    assert (info["train_size"], info["test_size"]) == (4, 2)
    after = json.loads((run / "eval" / "after.json").read_text())
    assert after["task"] == "custom" and after["total"] == 2
    predictions = (run / "eval" / "after_predictions.jsonl").read_text().splitlines()
    first = json.loads(predictions[0])
    assert first["prompt"].startswith("<|im_start|>user\nWhat is the capital of ")
    meta = _front_matter((run / "README.md").read_text())
    assert "datasets" not in meta and "model-index" not in meta  # never an invented id


def test_plugin_module_in_the_working_directory_needs_no_pythonpath_nor_hub_id(
    tmp_path, monkeypatch, capsys, model_dir
):
    plugin = """
from hf_tsprompt.data import Task, normalize_text, register_task


@register_task
class Pairs(Task):
    name = "pairs"
    fields_help = 'rows need "input" and "target" (text)'

    def parse_row(self, raw, where):
        return {"input": self.text(raw, "input", where), "target": self.text(raw, "target", where)}

    def user_text(self, row):
        return row["input"]

    def target_text(self, row):
        return row["target"]

    def reference(self, row):
        return normalize_text(row["target"])

    def extract(self, text):
        return normalize_text(text) or None
"""
    (tmp_path / "my_pairs.py").write_text(plugin)
    rows = [{"input": f"capital of {c}", "target": k} for c, k in CAPITALS]
    (tmp_path / "pairs.jsonl").write_text(_jsonl(rows))
    monkeypatch.chdir(tmp_path)
    # As from the console script: the working directory is not on sys.path.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_pairs", raising=False)
    recipe = _recipe(tmp_path, {"task": "pairs", "source": "pairs.jsonl"}, str(model_dir))
    try:
        code = main(["--plugin", "my_pairs", "train", str(recipe), "--quiet", "--set", "name=p"])
        assert code == 0, capsys.readouterr().err
    finally:
        TASKS.pop("pairs", None)
        sys.modules.pop("my_pairs", None)
    info = json.loads((tmp_path / "runs" / "p" / "run.json").read_text())
    assert (info["task"], info["dataset_hub_id"]) == ("pairs", None)
    assert "datasets" not in _front_matter((tmp_path / "runs" / "p" / "README.md").read_text())


@pytest.mark.slow
def test_hub_ids_end_to_end_train_push_and_load_back(hub, tmp_path, model_dir):
    """A model repo and a conversational dataset repo on the local Hub, named only by id."""
    from huggingface_hub import HfApi

    token = "hf_test_token"
    api = HfApi(token=token)
    api.create_repo("alice/tiny-chat-llama")
    api.upload_folder(folder_path=str(model_dir), repo_id="alice/tiny-chat-llama")
    api.create_repo("alice/capitals-chat", repo_type="dataset")
    for split, rows in (("train", CAPITALS[:6]), ("test", CAPITALS[6:])):
        api.upload_file(
            path_or_fileobj=_jsonl([_conversation(*c) for c in rows]).encode(),
            path_in_repo=f"data/{split}.jsonl",
            repo_id="alice/capitals-chat",
            repo_type="dataset",
        )
    work = tmp_path / "work"
    work.mkdir()
    recipe = _recipe(
        work,
        {"task": "custom", "source": "alice/capitals-chat", "scorer": "contains"},
        "alice/tiny-chat-llama",
        name="capitals",
    )
    named = yaml.safe_load(recipe.read_text())
    assert not Path(work, named["model"]["name_or_path"]).exists()  # ids, not paths
    assert not Path(work, named["data"]["source"]).exists()
    # A fresh cache: every file comes through huggingface_hub from the local server.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "hf_tsprompt"]
    done = run_process([*cli, "train", str(recipe), "--quiet"], cwd=work, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = work / "runs" / "capitals"
    info = json.loads((run / "run.json").read_text())
    assert info["base_model"] == "alice/tiny-chat-llama"
    assert (info["dataset_hub_id"], info["test_size"]) == ("alice/capitals-chat", 2)
    assert hub.requests("GET", r"^/alice/tiny-chat-llama/resolve/.*/model\.safetensors$")
    assert hub.requests("GET", r"^/datasets/alice/capitals-chat/resolve/.*/data/test\.jsonl$")
    # The test split is the dataset's own test file (its last two capitals).
    predictions = (run / "eval" / "after_predictions.jsonl").read_text().splitlines()
    references = {json.loads(line)["reference"] for line in predictions}
    assert references == {"oslo", "santiago"}

    push = [*cli, "push", str(run), "--repo-id", "alice/capitals-tsloss", "--token", token]
    done = run_process(push, cwd=work, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = hub.repo_files("alice/capitals-tsloss")
    meta = _front_matter(files["README.md"].decode())
    assert meta["base_model"] == "alice/tiny-chat-llama"
    assert meta["datasets"] == ["alice/capitals-chat"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["type"] == result["dataset"]["name"] == "alice/capitals-chat"
    adapter_config = json.loads(files["adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == "alice/tiny-chat-llama"

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained("alice/tiny-chat-llama")
    model = PeftModel.from_pretrained(base, "alice/capitals-tsloss")
    trained = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    (key,) = trained
    loaded = model.prompt_encoder["default"].embedding.weight
    assert torch.equal(loaded, trained[key])
