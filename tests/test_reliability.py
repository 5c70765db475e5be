"""Faults tried on purpose: a training job SIGKILLed and resumed, a second job on a folder in
use, bad input everywhere a user types, and the security guarantees (tokens, card, pickles).

Guaranteed (each test's docstring says which part it checks):

* **Crash and resume.** ``hf-tsprompt train RECIPE`` killed with SIGKILL at a seeded random
  step (``HF_TSPROMPT_CRASH_SEED``, default 0) and continued with ``--resume`` ends with a
  barcode record holding every scheduled step exactly once (no duplicate, no gap, no torn line,
  no orphan prompt file), a finished ``run.json``, an adapter that ``PeftModel.from_pretrained``
  loads, and the same final prompt as an uninterrupted run with the same seed: equal to
  ``RESUME_ATOL`` (1e-6, float32 round-off; in practice the prompts are bit-identical on one
  machine, because the Trainer checkpoint restores the optimiser, the scheduler, the RNG
  states and the data order exactly). The stale ``.lock`` the killed job leaves does not
  block the resume (the OS drops its lock with the process), and a checkpoint torn by the
  kill is skipped.
* **A folder in use.** While a job trains into a folder, a second job pointed at it is refused
  with exit status 2, the holder's pid and the fix, and changes nothing there, even with
  ``--overwrite`` or ``--resume`` (replacing a folder a live job is writing would corrupt both).
  A folder holding a *finished* run is refused unless ``--overwrite``: that case is
  ``test_cli.py::test_existing_run_is_refused_then_overwritten``.
* **Bad input.** Each case of ``BAD_INPUTS`` exits with status 2 and prints one paragraph
  (``error (<Kind>): ...``) naming the problem and the fix, with no traceback, and writes
  nothing (every path, byte and mtime under the working folder and the model and data folders
  is unchanged). Two cases also run as real ``python -m hf_tsprompt`` processes. Already
  covered elsewhere (not repeated): unknown ``ts`` key, a non-int ``max_steps``, a peft method
  that is not prompt learning (``peft.method=lora``), a missing data source or model folder,
  and a model that is not a causal LM (BERT), all in ``test_cli.py``.
* **Security.** The token in ``HF_TOKEN`` appears in no file of a run folder (checkpoints
  included) and in no output of the jobs; a token put in a recipe is refused without echoing
  it; hostile strings in model names, dataset ids, configs and licenses cannot break the
  card's YAML front matter, its Python snippet or its links; weights are read as safetensors
  only (a pickled base model, local or on the Hub, and a pickled adapter, in a run folder or
  on the Hub, are refused before anything reads them, proven with a pickle that would create
  a file when loaded), and no source file calls ``torch.load`` without ``weights_only=True``
  or any other pickle loader.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hf_tsprompt import pipeline
from hf_tsprompt.cli import EXIT_USER_ERROR, main
from hf_tsprompt.records import RECORDS_FILE, read_records
from hf_tsprompt.runs import last_checkpoint

from procs import run_process, start_process
from tiny import TINY_HUB_ID, save_tiny_model, write_tiny_gsm8k

ROOT = Path(__file__).resolve().parent.parent
CRASH_SEED = int(os.environ.get("HF_TSPROMPT_CRASH_SEED", "0"))
MAX_STEPS = 20
SAVE_STEPS = 3
RESUME_ATOL = 1e-6
"""Final prompt of a resumed run vs. an uninterrupted one (float32 round-off)."""
SECRET = "hf_reliabilitySecretToken_7f3a9c"
"""Put in HF_TOKEN while training: it must never reach a file or an output."""


# --- shared assets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(model_dir, data_dir)``: the tiny causal LM and a small GSM8K-format dataset."""
    root = tmp_path_factory.mktemp("reliability-assets")
    model_dir = save_tiny_model(root / "model")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["_name_or_path"] = TINY_HUB_ID
    (model_dir / "config.json").write_text(json.dumps(cfg))
    return model_dir, write_tiny_gsm8k(root / "data")


def _raw_recipe(model_dir: Path, data_dir: Path, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "reliability",
        "model": {"name_or_path": str(model_dir)},
        "data": {"task": "gsm8k", "source": str(data_dir), "train_size": 4, "test_size": 2},
        "peft": {"num_virtual_tokens": 5},
        "topology": {"every_n_steps": 2, "evaluate": "none"},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 0.05},
        "evaluation": {"batch_size": 2, "max_new_tokens": 4, "before": False, "after": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def _tree(*folders: Path) -> dict[str, tuple[int, str] | None]:
    """Every path under ``folders`` (and the folders themselves) -> (mtime_ns, sha256)."""
    out: dict[str, tuple[int, str] | None] = {}
    for folder in folders:
        out[str(folder)] = None if not folder.exists() else (0, "dir")
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path)] = (path.stat().st_mtime_ns, digest)
            else:
                out[str(path)] = (0, "dir")
    return out


def _error_paragraph(stderr: str) -> str:
    """The CLI's error paragraph (progress bars and warnings may come before it)."""
    assert "Traceback" not in stderr, stderr
    assert "error (" in stderr, stderr
    paragraph = stderr[stderr.rindex("error (") :].strip()
    assert "\n\n" not in paragraph, paragraph  # one paragraph
    assert stderr.rstrip().endswith(paragraph)  # and nothing after it
    return " ".join(paragraph.split())


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """stdout and stderr of in-process CLI calls (module fixtures cannot use capsys)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


# --- crash and resume ---------------------------------------------------------------------


@dataclass
class Crash:
    """What the module's crash scenario produced (see :func:`crash`)."""

    recipe: Path
    run_dir: Path
    ref_dir: Path
    kill_at: int
    victim_pid: int
    victim_returncode: int
    victim_output: bytes
    records_at_kill: list[int]
    killed_at: float
    state_at_kill: dict[str, Any]
    resumed_from: Path
    resume_code: int
    resume_output: str
    refusals: dict[str, tuple[int, str]] = field(default_factory=dict)
    untouched: bool = False


def _steps_in(file: Path) -> list[int]:
    """Steps of the complete lines of a records file (no dedup, torn lines skipped)."""
    if not file.is_file():
        return []
    steps = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(int(json.loads(line)["step"]))
    return steps


def _watch_files(run_dir: Path) -> dict[str, Any]:
    """What a refused job must not touch: run.json and recipe.yaml bytes and mtimes."""
    return {
        name: (run_dir / name).read_bytes() + str((run_dir / name).stat().st_mtime_ns).encode()
        for name in ("run.json", "recipe.yaml")
    }


@pytest.fixture(scope="module")
def crash(assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Crash:
    """An uninterrupted reference run, then the same recipe in a real ``python -m hf_tsprompt
    train`` process that is SIGKILLed at a seeded random step (while it runs, three more jobs
    are pointed at its folder and must be refused), then ``train --resume``."""
    model_dir, data_dir = assets
    root = tmp_path_factory.mktemp("crash")
    rng = random.Random(CRASH_SEED)
    kill_at = rng.randint(SAVE_STEPS + 1, MAX_STEPS - 4)
    # The kill lands a seeded fraction of one step after the record of step ``kill_at``:
    # anywhere inside a step, checkpoint writes too, yet never past the last step, however
    # fast this machine trains (a fixed delay of up to 0.2 s let a quiet CI machine finish).
    step_fraction = rng.uniform(0.0, 1.0)
    raw = _raw_recipe(
        model_dir,
        data_dir,
        output_dir=str(root / "run"),
        topology={"every_n_steps": 1},
        training={
            "max_steps": MAX_STEPS,
            "save_strategy": "steps",
            "save_steps": SAVE_STEPS,
            "logging_steps": 1,
        },
    )
    recipe = root / "crash.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    ref_dir, run_dir = root / "ref", root / "run"
    threads = str(torch.get_num_threads())  # the same arithmetic in every process

    with pytest.MonkeyPatch.context() as mp, _captured():
        mp.setenv("HF_TOKEN", SECRET)
        mp.setattr(pipeline, "_figures", lambda run_dir, log: [])  # not needed for reference
        code = main(["train", str(recipe), "--quiet", "--set", f"output_dir={ref_dir}"])
    assert code == 0, "the uninterrupted reference run failed"

    env = {**os.environ, "HF_TOKEN": SECRET, "OMP_NUM_THREADS": threads}
    log_path = root / "victim.log"
    refusals: dict[str, tuple[int, str]] = {}
    untouched = False
    with open(log_path, "wb") as log:
        victim = start_process(
            [sys.executable, "-m", "hf_tsprompt", "train", str(recipe), "--quiet"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            records = run_dir / "topology" / RECORDS_FILE
            deadline = time.monotonic() + 300
            seen: dict[int, float] = {}  # step -> when its record was first seen, after pause
            while True:
                assert victim.poll() is None, (
                    f"the job ended (status {victim.returncode}) before the kill at step "
                    f"{kill_at}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
                assert time.monotonic() < deadline, "the job never reached the kill step"
                steps = _steps_in(records)
                if steps and not refusals:
                    # The job holds the folder (the record starts under its lock): a second
                    # job must be refused and touch nothing, whatever it asks for. The job is
                    # paused meanwhile (still alive, still holding the lock): the three refused
                    # jobs take longer than the tiny run's remaining steps, and it must not
                    # finish before the kill.
                    victim.send_signal(signal.SIGSTOP)
                    try:
                        watched = _watch_files(run_dir)
                        for name, flags in (
                            ("plain", []),
                            ("overwrite", ["--overwrite"]),
                            ("resume", ["--resume"]),
                        ):
                            with _captured() as out:
                                code = main(["train", str(recipe), "--quiet", *flags])
                            refusals[name] = (code, out.getvalue())
                        untouched = _watch_files(run_dir) == watched
                    finally:
                        victim.send_signal(signal.SIGCONT)
                    continue  # decide on the kill from a fresh look at the record
                if steps:
                    seen.setdefault(max(steps), time.monotonic())
                if steps and max(steps) >= kill_at:
                    first, last = min(seen), max(seen)
                    step_time = (seen[last] - seen[first]) / (last - first) if last > first else 0
                    time.sleep(step_fraction * step_time)
                    victim.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
            victim.wait(timeout=60)
            killed_at = time.time()
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
    records_at_kill = _steps_in(run_dir / "topology" / RECORDS_FILE)
    state_at_kill = {
        "run": json.loads((run_dir / "run.json").read_text()),
        "adapter": (run_dir / "adapter").exists(),
        "lock": (run_dir / ".lock").read_text() if (run_dir / ".lock").exists() else None,
    }
    resumed_from = last_checkpoint(run_dir)
    assert resumed_from is not None, "no complete checkpoint before the kill"

    with pytest.MonkeyPatch.context() as mp, _captured() as out:
        mp.setenv("HF_TOKEN", SECRET)
        resume_code = main(["train", str(recipe), "--quiet", "--resume"])
    return Crash(
        recipe=recipe,
        run_dir=run_dir,
        ref_dir=ref_dir,
        kill_at=kill_at,
        victim_pid=victim.pid,
        victim_returncode=victim.returncode,
        victim_output=log_path.read_bytes(),
        records_at_kill=records_at_kill,
        killed_at=killed_at,
        state_at_kill=state_at_kill,
        resumed_from=resumed_from,
        resume_code=resume_code,
        resume_output=out.getvalue(),
        refusals=refusals,
        untouched=untouched,
    )


@pytest.mark.slow
def test_the_job_was_really_killed_mid_training(crash: Crash) -> None:
    """SIGKILL, not a clean exit: the run was unfinished and left its lock file behind."""
    assert crash.victim_returncode == -signal.SIGKILL
    assert crash.state_at_kill["run"]["status"] == "running"
    assert not crash.state_at_kill["adapter"]
    assert crash.state_at_kill["lock"] == str(crash.victim_pid)  # stale, yet not blocking
    assert max(crash.records_at_kill) >= crash.kill_at
    assert max(crash.records_at_kill) < MAX_STEPS
    step = int(crash.resumed_from.name.split("-")[1])
    assert step % SAVE_STEPS == 0 and step <= max(crash.records_at_kill)


@pytest.mark.slow
def test_second_job_on_a_folder_in_use_is_refused(crash: Crash) -> None:
    """Exit 2, the holder's pid and the fix; the live job's files untouched."""
    assert set(crash.refusals) == {"plain", "overwrite", "resume"}
    for name, (code, output) in crash.refusals.items():
        assert code == EXIT_USER_ERROR, (name, output)
        message = _error_paragraph(output)
        assert f"is in use by another job (pid {crash.victim_pid})" in message, name
        assert "choose another output_dir" in message
    assert crash.untouched
    # The live job went on undisturbed: its record is contiguous up to the kill.
    steps = crash.records_at_kill
    assert sorted(set(steps)) == list(range(max(steps) + 1))


@pytest.mark.slow
def test_resume_ends_with_a_continuous_barcode_record(crash: Crash) -> None:
    """Every step exactly once, no torn line, no orphan prompt file, and the same barcodes as
    the uninterrupted run."""
    assert crash.resume_code == 0, crash.resume_output[-3000:]
    info = json.loads((crash.run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == MAX_STEPS
    expected = list(range(MAX_STEPS + 1))
    assert _steps_in(crash.run_dir / "topology" / RECORDS_FILE) == expected  # raw lines
    records, reference = read_records(crash.run_dir), read_records(crash.ref_dir)
    assert [r["step"] for r in records] == [r["step"] for r in reference] == expected
    lines = (crash.run_dir / "topology" / RECORDS_FILE).read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole
    prompts = {
        p.relative_to(crash.run_dir / "topology").as_posix()
        for p in (crash.run_dir / "topology" / "prompts").glob("*.npy")
    }
    assert prompts == {r["prompt_file"] for r in records}
    for ours, theirs in zip(records, reference, strict=True):
        assert ours["summary"] == pytest.approx(theirs["summary"], rel=1e-5, abs=1e-7)
    # It continued from the checkpoint: the killed job's snapshots up to the checkpoint were
    # kept, every later one was taken again after the kill.
    resumed_step = int(crash.resumed_from.name.split("-")[1])
    for record in records:
        assert (record["time"] < crash.killed_at) == (record["step"] <= resumed_step), record[
            "step"
        ]
    assert not list((crash.run_dir / "topology").rglob("*.tmp"))  # no leftover of the kill


@pytest.mark.slow
def test_resumed_adapter_loads_and_equals_the_uninterrupted_run(crash: Crash) -> None:
    """``PeftModel.from_pretrained`` loads it; its prompt equals the reference's."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model_dir = Path(yaml.safe_load(crash.recipe.read_text())["model"]["name_or_path"])
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), crash.run_dir / "adapter"
    )
    prompt = model.prompt_encoder["default"].embedding.weight.detach()
    ours = load_file(crash.run_dir / "adapter" / "adapter_model.safetensors")
    theirs = load_file(crash.ref_dir / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], rtol=0.0, atol=RESUME_ATOL), key
    assert torch.equal(prompt, next(iter(ours.values())))
    # The trained prompt moved: equality is not two untouched initialisations.
    first = read_records(crash.run_dir)[0]
    from hf_tsprompt.records import load_prompt

    initial = torch.from_numpy(load_prompt(crash.run_dir, first))
    assert not torch.allclose(initial, prompt, atol=1e-3)


@pytest.mark.slow
def test_no_token_in_run_folders_or_job_output(crash: Crash) -> None:
    """HF_TOKEN was set for every job: no byte of any file (checkpoints' pickles included)
    and no line of output holds it."""
    needle = SECRET.encode()
    for folder in (crash.run_dir, crash.ref_dir):
        for path in folder.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    assert needle not in crash.victim_output
    assert SECRET not in crash.resume_output
    for _, output in crash.refusals.values():
        assert SECRET not in output


def test_torn_checkpoints_are_skipped(tmp_path: Path) -> None:
    """A kill while the Trainer writes a checkpoint leaves it without (or with a torn)
    ``trainer_state.json``: ``--resume`` takes the last complete one."""
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_step": 6}'), (9, '{"glob')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-12").mkdir()  # killed before its trainer state was written
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-6"


def test_checkpoint_saves_never_ask_the_hub(
    hub: Any, tokenizer: Any, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    """A training job on a cluster without a working network must not stall at every
    checkpoint: saving one asks the Hub nothing (peft's ``save_embedding_layers="auto"``
    would look the base model up at every save, waiting for the Hub's timeout)."""
    from transformers import DataCollatorForSeq2Seq

    from hf_tsprompt.prompts import get_prompt_model
    from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

    from tiny import tiny_llama, tiny_lm_dataset

    model = get_prompt_model(tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=5)
    model.peft_config["default"].base_model_name_or_path = TINY_HUB_ID  # a Hub id, as in runs
    args = TopologicalPromptConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
    )
    trainer = TopologicalPromptTrainer(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    trainer.train()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert (tmp_path / "checkpoint-1" / "adapter_model.safetensors").is_file()
    assert hub.request_log == []
    assert not [w for w in recwarn if "Could not find a config file" in str(w.message)]
    assert "save_pretrained" not in vars(model)  # the class's own method again


# --- bad input ----------------------------------------------------------------------------


@dataclass
class BadInput:
    """One mistake a user can type: ``setup(folder, model_dir, data_dir) -> argv``."""

    setup: Callable[[Path, Path, Path], list[str]]
    problem: str
    fix: str


def _write_recipe(folder: Path, model_dir: Path, data_dir: Path, **sections: Any) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(_raw_recipe(model_dir, data_dir, **sections)))
    return path


def _recipe_text(text: str | bytes) -> Callable[[Path, Path, Path], list[str]]:
    def setup(folder: Path, model_dir: Path, data_dir: Path) -> list[str]:
        path = folder / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", str(path)]

    return setup


def _recipe_with(*argv: str, **sections: Any) -> Callable[[Path, Path, Path], list[str]]:
    def setup(folder: Path, model_dir: Path, data_dir: Path) -> list[str]:
        return ["train", str(_write_recipe(folder, model_dir, data_dir, **sections)), *argv]

    return setup


def _dataset(rows: list[Any] | str, **data: Any) -> Callable[[Path, Path, Path], list[str]]:
    """A recipe whose training split is ``rows`` (JSON lines, or raw text)."""

    def setup(folder: Path, model_dir: Path, data_dir: Path) -> list[str]:
        bad = folder / "bad-data"
        bad.mkdir()
        (bad / "test.jsonl").write_bytes((data_dir / "test.jsonl").read_bytes())
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (bad / "train.jsonl").write_text(text)
        recipe = _write_recipe(
            folder, model_dir, data_dir, data={"source": str(bad), "train_size": 2, **data}
        )
        return ["train", str(recipe)]

    return setup


def _model_folder(kind: str) -> Callable[[Path, Path, Path], list[str]]:
    def setup(folder: Path, model_dir: Path, data_dir: Path) -> list[str]:
        model = folder / "model"
        model.mkdir()
        for item in model_dir.iterdir():
            if item.name != "model.safetensors" and (kind == "pickle" or item.suffix != ".json"):
                (model / item.name).write_bytes(item.read_bytes())
        if kind == "pickle":
            _write_booby_trapped_pickle(model / "pytorch_model.bin", folder / "PWNED")
        else:
            (model / "model.safetensors").write_bytes(
                (model_dir / "model.safetensors").read_bytes()
            )
        recipe = _write_recipe(folder, model_dir, data_dir, model={"name_or_path": str(model)})
        return ["train", str(recipe)]

    return setup


def _evaluate_non_run(folder: Path, model_dir: Path, data_dir: Path) -> list[str]:
    (folder / "not-a-run").mkdir()
    return ["evaluate", str(folder / "not-a-run")]


GOOD_ROW = {
    "question": "Tom has 2 apples and buys 3 more. How many?",
    "answer": "2 + 3 = 5\n#### 5",
}
BAD_INPUTS: dict[str, BadInput] = {
    "malformed-yaml": BadInput(
        _recipe_text("model: {name_or_path: x\ndata: [gsm8k\n"),
        "not valid YAML at line",
        "Fix the syntax there",
    ),
    "tab-indented-yaml": BadInput(
        _recipe_text("model:\n\tname_or_path: x\n"),
        "not valid YAML at line 2",
        "indent with spaces, not tabs",
    ),
    "recipe-is-a-list": BadInput(
        _recipe_text("- model\n- data\n"),
        "must be a YAML mapping of sections, got list",
        "see recipes/smollm2-gsm8k.yaml",
    ),
    "recipe-not-utf8": BadInput(
        _recipe_text(b"name: caf\xe9\n"), "is not UTF-8 text", "save it as UTF-8"
    ),
    "missing-recipe": BadInput(
        lambda folder, m, d: ["train", str(folder / "nope.yaml")],
        "not found",
        "recipes/smollm2-gsm8k.yaml",
    ),
    "unknown-top-level-key": BadInput(
        _recipe_with(modle={"name_or_path": "x"}),
        "unknown top-level key 'modle'",
        "Did you mean 'model'?",
    ),
    "unknown-training-key": BadInput(
        _recipe_with(training={"learnig_rate": 0.1}),
        "unknown key training.learnig_rate",
        "Did you mean 'learning_rate'?",
    ),
    "string-for-int": BadInput(
        _recipe_with(peft={"num_virtual_tokens": "many"}),
        "peft.num_virtual_tokens must be int, got 'many'",
        "must be int",
    ),
    "bool-for-int": BadInput(
        _recipe_with(seed=True), "seed must be int, got True (bool)", "must be int"
    ),
    "word-for-float": BadInput(
        _recipe_with(training={"learning_rate": "fast"}),
        "training.learning_rate must be float, got 'fast'",
        "must be float",
    ),
    "section-not-a-mapping": BadInput(
        _recipe_with(ts=0.5), "recipe section 'ts' must be a mapping", "must be a mapping"
    ),
    "token-in-recipe": BadInput(
        _recipe_with(training={"hub_token": SECRET}),
        "never put a token in a recipe",
        "HF_TOKEN environment variable",
    ),
    "malformed-set": BadInput(
        _recipe_with("--set", "ts.weight"), "--set 'ts.weight'", "expected section.key=value"
    ),
    "unknown-variant": BadInput(
        _recipe_with("--variant", "baseline"), "has no variant 'baseline'", "Its variants"
    ),
    "overwrite-and-resume": BadInput(
        _recipe_with("--overwrite", "--resume"),
        "--overwrite and --resume exclude each other",
        "pick one",
    ),
    "resume-without-checkpoint": BadInput(
        _recipe_with("--resume", output_dir="fresh-run"),
        "has no checkpoint-N folder",
        "save_strategy: steps",
    ),
    "dataset-empty-field": BadInput(
        _dataset([{**GOOD_ROW, "question": "  "}] * 3),
        "field 'question' is empty",
        "fix or remove this row",
    ),
    "dataset-non-text": BadInput(
        _dataset([{**GOOD_ROW, "question": 42}] * 3),
        "field 'question' must be text, got int",
        "fix or remove this row",
    ),
    "dataset-row-not-an-object": BadInput(
        _dataset([[1, 2]] * 3), "expected a JSON object / table row, got list", "JSON object"
    ),
    "dataset-torn-json": BadInput(
        _dataset(json.dumps(GOOD_ROW) + '\n{"question": "Tom\n'), "is not valid JSON", "train.jsonl"
    ),
    "dataset-empty-file": BadInput(
        _dataset(""), "no rows for split 'train'", "point data.source at"
    ),
    "dataset-too-small": BadInput(
        _dataset([GOOD_ROW] * 3, train_size=10),
        "has 3 usable rows but 10 are needed",
        "use a smaller k",
    ),
    "model-without-config": BadInput(
        _model_folder("no-config"), "has no config.json", "save_pretrained"
    ),
    "model-pickle-weights": BadInput(
        _model_folder("pickle"), "has no safetensors weights", "ships safetensors"
    ),
    "evaluate-not-a-run": BadInput(
        _evaluate_non_run, "is not a run folder (no run.json)", "hf-tsprompt train"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_paragraph_and_writes_nothing(
    case: str,
    assets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_dir, data_dir = assets
    bad = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = bad.setup(work, model_dir, data_dir)
    before = _tree(tmp_path, model_dir, data_dir)
    assert main(argv) == EXIT_USER_ERROR
    out, err = capsys.readouterr()
    message = _error_paragraph(err)
    assert bad.problem in message, message
    assert bad.fix in message, message
    assert SECRET not in out + err
    assert _tree(tmp_path, model_dir, data_dir) == before  # nothing written anywhere
    assert not (work / "PWNED").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["malformed-yaml", "dataset-non-text"])
def test_bad_input_in_a_real_process(case: str, assets: tuple[Path, Path], tmp_path: Path):
    """The exit status and the output of ``python -m hf_tsprompt`` itself."""
    model_dir, data_dir = assets
    bad = BAD_INPUTS[case]
    argv = bad.setup(tmp_path, model_dir, data_dir)
    before = _tree(tmp_path, model_dir, data_dir)
    result = run_process([sys.executable, "-m", "hf_tsprompt", *argv], cwd=tmp_path, timeout=120)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    message = _error_paragraph(result.stderr)
    assert bad.problem in message and bad.fix in message
    assert _tree(tmp_path, model_dir, data_dir) == before


# --- security -----------------------------------------------------------------------------


class _BoobyTrap:
    """Unpickling this creates ``path``: proof that a pickle was (not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _write_booby_trapped_pickle(target: Path, marker: Path) -> None:
    torch.save({"weight": _BoobyTrap(marker)}, target)


def test_a_pickled_run_adapter_is_refused_unread(
    assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hf-tsprompt evaluate`` on a run folder whose adapter is a pickle: exit 2, the pickle
    never read (its payload would create a file)."""
    model_dir, data_dir = assets
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    raw = _raw_recipe(model_dir, data_dir, output_dir=str(run))
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw))
    (run / "run.json").write_text(json.dumps({"name": "x", "status": "finished"}))
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 5,
        "base_model_name_or_path": TINY_HUB_ID,
    }
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    _write_booby_trapped_pickle(run / "adapter" / "adapter_model.bin", tmp_path / "PWNED")
    before = _tree(tmp_path)
    assert main(["evaluate", str(run), "--quiet"]) == EXIT_USER_ERROR
    message = _error_paragraph(capsys.readouterr().err)
    assert "no adapter_model.safetensors" in message and "safetensors only" in message
    assert not (tmp_path / "PWNED").exists()
    assert _tree(tmp_path) == before


def test_a_pickled_hub_adapter_is_refused_unread(
    hub: Any, assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """``load_adapter`` from a repo that only has ``adapter_model.bin``."""
    from hf_tsprompt.errors import HubError
    from hf_tsprompt.hub import load_adapter

    model_dir, _ = assets
    trap = tmp_path / "adapter_model.bin"
    _write_booby_trapped_pickle(trap, tmp_path / "PWNED")
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 5,
        "base_model_name_or_path": TINY_HUB_ID,
    }
    hub.push(
        "alice/pickled",
        {"adapter_config.json": json.dumps(config), "adapter_model.bin": trap.read_bytes()},
    )
    with pytest.raises(HubError, match="safetensors only"):
        load_adapter("alice/pickled", base_model=str(model_dir), token="hf_test_token")
    assert not (tmp_path / "PWNED").exists()


def test_a_pickled_hub_model_is_refused_undownloaded(
    hub: Any, assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """A base model on the Hub with only ``pytorch_model.bin``: a clear error at once, the
    pickle never downloaded, and no safetensors-conversion pull request asked of the Hub."""
    from hf_tsprompt.errors import MissingFileError
    from hf_tsprompt.models import load_base_model

    model_dir, _ = assets
    trap = tmp_path / "pytorch_model.bin"
    _write_booby_trapped_pickle(trap, tmp_path / "PWNED")
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.suffix != ".safetensors"}
    hub.push("alice/pickled-model", {**files, "pytorch_model.bin": trap.read_bytes()})
    with pytest.raises(MissingFileError, match="has no safetensors weights"):
        load_base_model("alice/pickled-model")
    assert not hub.requests(path=r"pytorch_model\.bin|discussions|pull")
    assert not (tmp_path / "PWNED").exists()


def _calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def _keyword(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def _unsafe_loader(name: str, call: ast.Call) -> bool:
    """Whether a call (by its dotted name) can unpickle, i.e. run code from a file."""
    last = name.rsplit(".", 1)[-1]
    if name == "torch.load" or name.endswith(".torch.load"):
        return _keyword(call, "weights_only") is not True
    if name in ("np.load", "numpy.load"):
        return _keyword(call, "allow_pickle") is not False
    if name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle"):
        return last in ("load", "loads", "Unpickler")
    if name == "yaml.load":
        return "Safe" not in ast.unparse(call)
    return last in ("read_pickle", "unsafe_load", "full_load")


def test_no_unsafe_deserialisation_in_any_source_file() -> None:
    """Every ``torch.load`` passes ``weights_only=True``, every ``np.load``
    ``allow_pickle=False``; no pickle/joblib/dill loader, no ``yaml.load`` without SafeLoader,
    in the library, the tests and the benchmarks."""
    problems = []
    folders = [ROOT / d for d in ("hf_tsprompt", "tests", "bench") if (ROOT / d).is_dir()]
    files = [p for folder in folders for p in folder.rglob("*.py")]
    assert files
    for path in files:
        for name, call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            if _unsafe_loader(name, call):
                problems.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
    assert not problems, "unsafe deserialisation:\n" + "\n".join(problems)


HOSTILE = [
    'x"\n---\nlicense: stolen\ninject: true\n---\n',
    "!!python/object/apply:os.system ['touch /tmp/pwned']",
    "*alias &anchor {a: [b, 'c",
    "- item\n  key: value",
    '"); import os; os.system("id"); ("',
    "back\\slash `tick` {{ 7 * 7 }} {% raw %}",
    "line\u2028sep\u2029para\r\nCRLF\x85nel",
    "null",
    "%YAML 1.1",
    "x) [click](javascript:alert(1)) <script>alert(1)</script>",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_strings_cannot_break_the_card(hostile: str, tmp_path: Path) -> None:
    """Model name, dataset id, config, license and versions from run.json: the front matter
    holds exactly the metadata keys, each with its exact hostile value; the Python snippet is
    valid and loads exactly the base model's Hub id. A hostile recorded base model is not a
    Hub id (issue 25): the card names no base model and has no snippet, and nothing breaks."""
    from huggingface_hub.repocard import metadata_load

    from hf_tsprompt.hub import save_model_card

    base_id = "alice/tiny-llama"

    def card(value: str, folder: Path, base_model: str | None = base_id) -> str:
        run = folder / value.replace("/", "_")[:40].strip() / "run"
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_config.json").write_text(
            json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5})
        )
        info = {
            "name": f"run {value}",
            "base_model": value,
            "dataset_hub_id": value,
            "task": "gsm8k",
            "task_config": value,
            "license": value,
            "accuracy_after": 0.5,
            "test_size": 4,
            "method": "prompt_tuning",
            "num_virtual_tokens": 5,
            "versions": {"hf-tsprompt": value},
            "example_prompt": value,
        }
        (run / "run.json").write_text(json.dumps(info))
        return save_model_card(run, base_model=base_model).read_text(encoding="utf-8")

    unnamed = card(hostile, tmp_path / "unnamed", base_model=None)
    run = tmp_path / "unnamed" / hostile.replace("/", "_")[:40].strip() / "run"
    meta = metadata_load(run / "README.md")
    assert "base_model" not in meta and meta["license"] == hostile
    assert not any(tag.startswith("base_model:") for tag in meta["tags"])
    assert "```python" not in unnamed and "private base model" in unnamed

    benign = card("alice/tiny-llama", tmp_path / "benign")
    text = card(hostile, tmp_path)
    run = tmp_path / hostile.replace("/", "_")[:40].strip() / "run"
    meta = metadata_load(run / "README.md")
    assert set(meta) == {
        "base_model",
        "library_name",
        "pipeline_tag",
        "tags",
        "datasets",
        "license",
        "model-index",
    }
    assert meta["base_model"] == base_id and meta["license"] == hostile
    assert meta["datasets"] == [hostile]
    result = meta["model-index"][0]
    assert result["name"] == f"run {hostile}"
    assert result["results"][0]["dataset"]["type"] == hostile
    assert result["results"][0]["dataset"]["config"] == hostile
    assert not Path("/tmp/pwned").exists() or "pwned" not in hostile
    # One front matter block, closed before the body.
    assert text.startswith("---\n") and text.split("\n---\n", 1)[0].count("\n---") == 0
    snippet = text.split("```python", 1)[1].split("```", 1)[0]
    tree = ast.parse(snippet)  # valid Python
    loaded = sorted(
        (call.lineno, arg.value)
        for name, call in _calls(tree)
        if name.endswith("from_pretrained")
        for arg in call.args
        if isinstance(arg, ast.Constant)
    )
    # The base model and the adapter, exactly: the strings are data, nothing else runs.
    adapter = "adapter"  # a local card names the adapter relative to itself
    assert [value for _, value in loaded] == [base_id, base_id, adapter]
    benign_snippet = benign.split("```python", 1)[1].split("```", 1)[0]
    assert len(snippet.splitlines()) == len(benign_snippet.splitlines())  # no line injected

    # The body has exactly the benign card's headings and code fences: nothing injected.
    def skeleton(t: str) -> list[str]:
        body = t.split("\n---\n", 1)[1].splitlines()
        return [ln.split(" ", 1)[0] for ln in body if ln.startswith(("#", "```"))]

    assert skeleton(text) == skeleton(benign)
