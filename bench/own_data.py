"""Your own data, any format: GSM8K rows as a user would hold them, trained through a recipe.

The ``custom`` task (``data: {task: custom, source: ...}``) on the embedded SmolLM2-135M-
Instruct with a small real dataset in each of TRL's two formats: the first ``--train-size``
rows of GSM8K's train split and the first ``--test-size`` rows of its test split, written as

- ``prompt_completion``: ``{"prompt": "Question: ...\\nAnswer:", "completion": " <answer>"}``
  (used as text, no chat template, as TRL's SFTTrainer treats this format);
- ``messages``: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
  (rendered with SmolLM2's chat template by ``trl.data_utils.apply_chat_template``),

where ``<answer>`` is GSM8K's worked answer ending ``#### <number>`` with the calculator
annotations (``<<48/2=24>>``) removed. Each folder (``train.jsonl`` + ``test.jsonl``) trains
one run through :func:`hf_tsprompt.pipeline.train_from_recipe` with ``scorer: number`` (the
number after the last ``####``, else the last number), and test accuracy is measured by
greedy generation before and after training.

Writes ``<out>/<format>/before.json`` and ``after.json`` (the run's ``eval/*.json``),
``<out>/<format>/run.json`` (the run's ``run.json`` plus ``bench``: the commit the code ran
at, the command, the wall time) and ``<out>/own_data.json`` / ``own_data.md`` (the table).

Run (one thread, about ten minutes per format on a shared CPU)::

    OMP_NUM_THREADS=1 python bench/own_data.py --formats prompt_completion
    OMP_NUM_THREADS=1 python bench/own_data.py --formats messages
    python bench/own_data.py --report-only
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from hf_tsprompt.fsutil import atomic_write_json

FORMATS = ("prompt_completion", "messages")
GSM8K = common.REPO_ROOT.parent / "shared" / "data" / "gsm8k"
OUT = common.RESULTS_DIR / "own_data"


def _answer(text: str) -> str:
    return re.sub(r"<<[^<>]*>>", "", text).strip()


def as_format(row: dict[str, str], fmt: str) -> dict[str, Any]:
    """One GSM8K row in one of TRL's formats (see the module docstring)."""
    question, answer = row["question"].strip(), _answer(row["answer"])
    if fmt == "prompt_completion":
        return {"prompt": f"Question: {question}\nAnswer:", "completion": f" {answer}"}
    if fmt == "messages":
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_dataset(folder: Path, fmt: str, gsm8k: Path, n_train: int, n_test: int) -> Path:
    """``folder/train.jsonl`` and ``folder/test.jsonl``: the first rows of each GSM8K split."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        lines = (gsm8k / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        rows = [as_format(json.loads(line), fmt) for line in lines]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (folder / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return folder


def recipe_for(fmt: str, source: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    return {
        "name": f"own-data-{fmt}",
        "output_dir": str(run_dir),
        "model": {"name_or_path": args.model},
        "data": {
            "task": "custom",
            "source": str(source),
            "scorer": "number",
            "train_size": args.train_size,
            "test_size": args.test_size,
            "max_length": 512,
        },
        "peft": {"method": "prompt_tuning", "num_virtual_tokens": 20},
        "ts": {"regularizer": "tsloss"},
        "topology": {"every_n_steps": 10, "evaluate": "none"},
        "training": {
            "learning_rate": 3.0e-2,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": 5,
            "warmup_steps": 0.1,
            "logging_steps": 5,
        },
        "evaluation": {"batch_size": 16, "max_new_tokens": args.max_new_tokens},
    }


def run_format(fmt: str, args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    from hf_tsprompt.pipeline import train_from_recipe
    from hf_tsprompt.recipes import recipe_from_dict

    work = Path(tempfile.mkdtemp(prefix=f"own-data-{fmt}-"))
    try:
        source = write_dataset(work / "data", fmt, args.gsm8k, args.train_size, args.test_size)
        raw = recipe_for(fmt, source, work / "run", args)
        start = time.perf_counter()
        train_from_recipe(recipe_from_dict(raw, base_dir=work), progress=False)
        wall = time.perf_counter() - start
        out = args.out / fmt
        out.mkdir(parents=True, exist_ok=True)
        for name in ("before", "after"):
            shutil.copyfile(work / "run" / "eval" / f"{name}.json", out / f"{name}.json")
        info = json.loads((work / "run" / "run.json").read_text(encoding="utf-8"))
        info["dataset_source"] = f"<GSM8K rows as {fmt}, written by bench/own_data.py>"
        info["bench"] = {
            "git": meta["git"],
            "command": meta["command"],
            "started": meta["started"],
            "wall_seconds": round(wall, 1),
            "recipe": {k: v for k, v in raw.items() if k != "output_dir"},
        }
        info["bench"]["recipe"]["data"]["source"] = info["dataset_source"]
        atomic_write_json(out / "run.json", info)
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(out: Path) -> tuple[Path, Path]:
    """``own_data.json`` / ``own_data.md`` from the committed per-format files."""
    rows, data = [], {}
    for fmt in FORMATS:
        if not (out / fmt / "run.json").is_file():
            continue
        info = json.loads((out / fmt / "run.json").read_text(encoding="utf-8"))
        before = json.loads((out / fmt / "before.json").read_text(encoding="utf-8"))
        after = json.loads((out / fmt / "after.json").read_text(encoding="utf-8"))
        bench = info["bench"]
        data[fmt] = {
            "accuracy_before": before["accuracy"],
            "correct_before": before["correct"],
            "accuracy_after": after["accuracy"],
            "correct_after": after["correct"],
            "test_size": after["total"],
            "train_size": info["train_size"],
            "steps": info["global_step"],
            "wall_seconds": bench["wall_seconds"],
            "commit": bench["git"]["commit"],
            "dirty": bench["git"]["dirty"],
        }
        d = data[fmt]
        rows.append(
            [
                fmt,
                f"{100 * d['accuracy_before']:.1f}% ({d['correct_before']}/{d['test_size']})",
                f"{100 * d['accuracy_after']:.1f}% ({d['correct_after']}/{d['test_size']})",
                d["train_size"],
                d["steps"],
                f"{d['wall_seconds'] / 60:.1f} min",
                (d["commit"] or "?")[:7] + ("+dirty" if d["dirty"] else ""),
            ]
        )
    table = common.markdown_table(
        ["format", "test accuracy before", "after", "train rows", "steps", "wall", "commit"],
        rows,
    )
    markdown = (
        "# Your own data: GSM8K rows in TRL's formats, task `custom`\n\n"
        "SmolLM2-135M-Instruct (embedded), 20 virtual tokens, TSLoss, `scorer: number`, greedy "
        "generation; written by `bench/own_data.py` (see its docstring for the rows and the "
        "recipe; each format's `run.json` holds the recipe and the commit it ran at).\n\n"
        f"{table}\n"
    )
    return common.write_result(out, "own_data", {"formats": data}, markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--gsm8k", type=Path, default=GSM8K)
    parser.add_argument("--train-size", type=int, default=10)
    parser.add_argument("--test-size", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        common.single_thread()
        meta = common.run_metadata()
        for fmt in args.formats:
            info = run_format(fmt, args, meta)
            print(f"{fmt}: {info['accuracy_before']} -> {info['accuracy_after']}", flush=True)
    for path in report(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
