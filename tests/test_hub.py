"""Model card, push and load against the local Hub server (tests/hub_server.py), driven by the
real, unmodified huggingface_hub client."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_tsprompt.errors import HubError, MissingFileError, RunFolderError
from hf_tsprompt.hub import build_model_card, load_adapter, push_to_hub, save_model_card

from procs import run_process
from tiny import TINY_HUB_ID, make_tiny_run

REPO = "alice/tiny-tsloss"
HUB_TOKEN = "hf_test_token"  # alice's write token on the local hub (tests/conftest.py)
OTHER_TOKEN = "hf_other_token"  # bob's token: no write access to alice/*


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("hubrun"))


@pytest.fixture
def run(built_run, tmp_path):
    """A private copy of the run folder (tests may check that nothing local changes)."""
    run_dir, model_dir, _ = built_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, model_dir


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _use_it_blocks(card: str) -> list[str]:
    """The Python code blocks of the card's "Use it" section, in order."""
    section = card.split("## Use it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _push_base_model(hub, model_dir: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=HUB_TOKEN)
    api.create_repo(TINY_HUB_ID, exist_ok=True)
    api.upload_folder(repo_id=TINY_HUB_ID, folder_path=str(model_dir))


# --- card -------------------------------------------------------------------------------------


def test_card_metadata_parses_with_huggingface_hub(run, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run_dir, _ = run
    path = save_model_card(run_dir, repo_id=REPO)
    meta = metadata_load(path)
    assert meta["base_model"] == TINY_HUB_ID
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"prompt-tuning", "tsloss", "topological-data-analysis"} <= set(meta["tags"])
    assert f"base_model:adapter:{TINY_HUB_ID}" in meta["tags"]
    assert meta["datasets"] == ["openai/gsm8k"]
    card = ModelCard.load(path)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-run"
    info = json.loads((run_dir / "run.json").read_text())
    assert results[0].metric_type == "accuracy"
    assert results[0].metric_value == pytest.approx(100 * info["accuracy_after"])
    assert results[0].dataset_type == "openai/gsm8k" and results[0].dataset_split == "test"
    assert card.data.eval_results[0].metric_value == results[0].metric_value


def test_card_body_has_setup_topology_figures_and_citation(run):
    run_dir, _ = run
    text = str(build_model_card(run_dir, repo_id=REPO))
    info = json.loads((run_dir / "run.json").read_text())
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in text
    for key in (
        "ts_weight (lambda_ts)",
        "ts_tau (tau)",
        "ts_alpha (alpha)",
        "ts_beta_h0",
        "ts_variant",
    ):
        assert key in text
    assert "learning_rate | 0.05" in text and "virtual tokens (n) | 6" in text
    end = info["topology_end"]
    assert (
        f"| H1 count (loops) | {info['topology_start']['h1_count']:.4g} | {end['h1_count']:.4g} |"
        in text
    )
    assert "persistence entropy" in text and "mean H0 lifespan" in text
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text)
    assert links and all((run_dir / link).is_file() for link in links)
    assert "Optimizing Soft Prompt Tuning via Structural Evolution" in text
    assert "transformers" in text and "peft" in text
    assert f"{100 * info['accuracy_after']:.1f}%" in text


def test_card_shows_the_structural_evolution(run):
    from persim import bottleneck, wasserstein

    from hf_tsprompt.records import read_records

    run_dir, _ = run
    text = str(build_model_card(run_dir, repo_id=REPO))
    records = read_records(run_dir)
    assert [r["step"] for r in records] == [0, 2, 4]
    assert "over 2 snapshot intervals" in text
    for k in (0, 1):
        for name, fn in (("Wasserstein (W1)", wasserstein), ("bottleneck", bottleneck)):
            values = []
            for prev, rec in itertools.pairwise(records):
                a, b = (r["diagrams_np"][k] for r in (prev, rec))
                a, b = a[np.isfinite(a[:, 1])], b[np.isfinite(b[:, 1])]
                values.append(fn(a if len(a) else [[0, 0]], b if len(b) else [[0, 0]]))
            row = f"| H{k} {name} | {np.mean(values):.4g} | {np.max(values):.4g} |"
            assert row in text
    assert (run_dir / "figures" / "evolution.png").is_file()
    assert "](figures/evolution.png)" in text


def test_hostile_strings_cannot_break_the_front_matter(run):
    from huggingface_hub.repocard import metadata_load

    run_dir, _ = run
    info = json.loads((run_dir / "run.json").read_text())
    evil = 'x"\n---\nlicense: stolen\n---\n`rm -rf`: {a: [b'
    info.update(name=evil, task=evil, example_prompt="```\nimport os\n```" + evil)
    (run_dir / "run.json").write_text(json.dumps(info))
    path = save_model_card(run_dir, repo_id=REPO)
    meta = metadata_load(path)
    assert meta["model-index"][0]["name"] == evil
    assert "license" not in meta or meta["license"] != "stolen"
    body = path.read_text().split("---", 2)[2]
    blocks = _use_it_blocks(body)
    assert len(blocks) == 2  # PeftModel, then AutoPeftModelForCausalLM
    for code in blocks:
        compile(code, "snippet", "exec")  # the snippets are still valid Python
    assert meta["tags"][-1] == f"base_model:adapter:{info['base_model']}"


def test_card_metadata_carries_what_peft_writes_for_the_adapter(hub, run, tmp_path):
    """peft's own create_or_update_model_card, on the same adapter over the same base loaded
    by its Hub id, is the reference: our card carries each of its metadata keys and tags."""
    from huggingface_hub.repocard import metadata_load
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, model_dir = run
    _push_base_model(hub, model_dir)
    base = AutoModelForCausalLM.from_pretrained(TINY_HUB_ID, token=HUB_TOKEN)
    PeftModel.from_pretrained(base, run_dir / "adapter").create_or_update_model_card(tmp_path)
    peft_meta = metadata_load(tmp_path / "README.md")
    assert peft_meta["library_name"] == "peft"  # the reference is what we think it is
    assert f"base_model:adapter:{TINY_HUB_ID}" in peft_meta["tags"]
    ours = metadata_load(save_model_card(run_dir, repo_id=REPO))
    for key in ("base_model", "library_name", "pipeline_tag"):
        assert ours[key] == peft_meta[key], key
    assert set(peft_meta["tags"]) <= set(ours["tags"])


@pytest.mark.slow
def test_local_card_names_the_adapter_relative_to_itself(hub, run, tmp_path):
    """A card rendered without a repo id holds no absolute path of the machine it was made on,
    and its snippets run from the card's folder after the run folder has been moved."""
    run_dir, model_dir = run
    text = save_model_card(run_dir).read_text(encoding="utf-8")
    assert str(run_dir.resolve()) not in text and str(tmp_path.resolve()) not in text
    first, second = _use_it_blocks(text)
    assert 'PeftModel.from_pretrained(base, "adapter")' in first
    assert 'AutoPeftModelForCausalLM.from_pretrained("adapter")' in second
    moved = tmp_path / "elsewhere" / "shared-run"
    moved.parent.mkdir()
    shutil.move(run_dir, moved)
    assert save_model_card(moved).read_text(encoding="utf-8") == text  # location-free
    _push_base_model(hub, model_dir)
    check = 'assert type(model).__name__ == "PeftModelForCausalLM", type(model)\n'
    result = run_process(
        [sys.executable, "-c", first + check + second + check],
        cwd=moved,
        env={**os.environ, "HF_TOKEN": HUB_TOKEN},
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- push -------------------------------------------------------------------------------------


def test_push_round_trip_in_one_commit(hub, run):
    run_dir, _ = run
    before = _tree_hashes(run_dir)
    url = push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    files = hub.repo_files(REPO)
    commits = hub.commits(REPO)
    assert url.endswith(commits[0].id)
    assert len(commits) == 2  # the repo's initial commit + ours
    expected = {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "run.json",
        "recipe.yaml",
        "topology/records.jsonl",
        "eval/before.json",
        "eval/after.json",
    }
    assert expected <= set(files)
    assert {f for f in files if f.startswith("figures/")} == {
        f"figures/{p.name}" for p in (run_dir / "figures").glob("*.png")
    }
    assert (
        files["adapter_model.safetensors"]
        == (run_dir / "adapter/adapter_model.safetensors").read_bytes()
    )
    assert files["README.md"].decode() == str(build_model_card(run_dir, REPO))
    assert "tsloss" in files["README.md"].decode()  # our card, not transformers' generic one
    assert _tree_hashes(run_dir) == before  # pushing changes no local file


def test_second_push_uploads_nothing(hub, run):
    run_dir, _ = run
    first = push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    uploads = len(hub.lfs_uploads())
    commits = len(hub.commits(REPO))
    second = push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    assert second == first
    assert len(hub.commits(REPO)) == commits
    assert len(hub.lfs_uploads()) == uploads


def test_push_to_a_branch(hub, run):
    run_dir, _ = run
    push_to_hub(run_dir, REPO, token=HUB_TOKEN, revision="experiment")
    assert "adapter_config.json" in hub.repo_files(REPO, revision="experiment")
    assert "adapter_config.json" not in hub.repo_files(REPO)


def test_bad_token_is_a_clear_error_and_changes_nothing(hub, run):
    run_dir, _ = run
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    state = hub.repo_files(REPO)
    with pytest.raises(HubError, match="rejected the credentials") as err:
        push_to_hub(run_dir, REPO, token="hf_not_a_real_token")
    assert "hf_not_a_real_token" not in str(err.value)
    with pytest.raises(HubError, match="rejected the credentials"):
        push_to_hub(run_dir, REPO, token=OTHER_TOKEN)  # bob cannot write to alice/*
    assert hub.repo_files(REPO) == state


def test_push_input_errors(hub, run, tmp_path):
    run_dir, _ = run
    with pytest.raises(MissingFileError, match="does not exist"):
        push_to_hub(tmp_path / "nope", REPO, token=HUB_TOKEN)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunFolderError, match="no trained adapter"):
        push_to_hub(empty, REPO, token=HUB_TOKEN)
    (run_dir / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(RunFolderError, match="lacks adapter_model.safetensors"):
        push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    with pytest.raises(HubError, match="user/name"):
        push_to_hub(run_dir, "no-namespace", token=HUB_TOKEN)
    assert REPO not in hub.repo_ids()


# --- load -------------------------------------------------------------------------------------

_FRESH_LOAD = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
base_dir, repo, out = sys.argv[1:4]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), repo)
model.eval()
tok = AutoTokenizer.from_pretrained(base_dir)
ids = tok("Tom has 3 apples and buys 2 more.", return_tensors="pt")
gen = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
emb = model.prompt_encoder["default"].embedding.weight.detach()
torch.save({"prompt": emb, "generation": gen}, out)
"""


@pytest.mark.slow
def test_fresh_process_loads_identical_prompt_and_generations(hub, run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, model_dir = run
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    out = tmp_path / "fresh.pt"
    run_process(
        [sys.executable, "-c", _FRESH_LOAD, str(model_dir), REPO, str(out)],
        check=True,
        capture_output=False,
        env={**os.environ, "HF_TOKEN": HUB_TOKEN},
        timeout=180,
    )
    fresh = torch.load(out, weights_only=True)
    local = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), run_dir / "adapter"
    )
    local.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("Tom has 3 apples and buys 2 more.", return_tensors="pt")
    gen = local.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(fresh["prompt"], local.prompt_encoder["default"].embedding.weight.detach())
    assert torch.equal(fresh["generation"], gen)


@pytest.mark.slow
def test_card_snippet_runs_as_written(hub, run, tmp_path):
    run_dir, model_dir = run
    _push_base_model(hub, model_dir)
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    readme = hub.repo_files(REPO)["README.md"].decode()
    first, second = _use_it_blocks(readme)
    # The second (AutoPeftModelForCausalLM) must load the same base + prompt as the first.
    code = (
        first
        + "reference = model\n"
        + second
        + "import torch\n"
        + f"assert model.peft_config['default'].base_model_name_or_path == {TINY_HUB_ID!r}\n"
        + "weight = lambda m: m.prompt_encoder['default'].embedding.weight\n"
        + "assert torch.equal(weight(model), weight(reference))\n"
        # The snippet's cached greedy output is greedy decoding with peft's training forward.
        + "seq = inputs['input_ids']\n"
        + "with torch.no_grad():\n"
        + "    while seq.shape[1] < output.shape[1]:\n"
        + "        nxt = reference(input_ids=seq).logits[:, -1:].argmax(-1)\n"
        + "        seq = torch.cat([seq, nxt], dim=1)\n"
        + "assert torch.equal(output, seq), (output, seq)\n"
        + "new = output.shape[1] - inputs['input_ids'].shape[1]\n"
        + "again = model.generate(**inputs, max_new_tokens=new, do_sample=False)\n"
        + "assert torch.equal(again, output)\n"
    )
    result = run_process(
        [sys.executable, "-c", code], env={**os.environ, "HF_TOKEN": HUB_TOKEN}, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_load_adapter_uses_the_cards_base_model(hub, run):
    run_dir, model_dir = run
    _push_base_model(hub, model_dir)
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    model, tokenizer = load_adapter(REPO, token=HUB_TOKEN)
    local, _ = load_adapter(REPO, base_model=str(model_dir), token=HUB_TOKEN)
    from safetensors.torch import load_file

    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    weight = next(iter(saved.values()))
    assert torch.equal(model.prompt_encoder["default"].embedding.weight.detach(), weight)
    assert torch.equal(local.prompt_encoder["default"].embedding.weight.detach(), weight)
    assert tokenizer.chat_template


def test_trainer_push_to_hub_uploads_our_card(hub, tokenizer, tmp_path):
    from transformers import DataCollatorForSeq2Seq

    from hf_tsprompt.callbacks import PersistenceCallback
    from hf_tsprompt.prompts import get_prompt_model
    from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

    from tiny import tiny_llama, tiny_lm_dataset

    model = get_prompt_model(tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=5)
    args = TopologicalPromptConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        hub_model_id=REPO,
    )
    trainer = TopologicalPromptTrainer(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        callbacks=[PersistenceCallback(every_n_steps=1)],
    )
    trainer.train()
    url = trainer.push_to_hub(token=HUB_TOKEN)
    files = hub.repo_files(REPO)
    assert url and {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert "topology/records.jsonl" in files
    assert "tsloss" in files["README.md"].decode()
