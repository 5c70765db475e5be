"""Generation speed with a prompt-learning adapter: cached vs uncached, against the base model.

What it measures
----------------
Greedy ``generate`` of exactly ``--new-tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``,
so every call does the same work), batch 1, one chat-formatted GSM8K-style question, on the
base model (default: the embedded SmolLM2-135M-Instruct, float32, one torch thread):

- ``base_cached`` / ``base_uncached``: the base model's own ``generate`` with / without the KV
  cache;
- for each adapter method (prompt tuning, P-tuning, prefix tuning; ``--virtual-tokens``
  virtual tokens, untrained, built by ``hf_tsprompt.prompts.get_prompt_model``: the library's
  configs and N(0, 0.02^2) init): ``<method>_cached`` and
  ``<method>_uncached``, ``PeftModel.generate`` after ``hf_tsprompt.generation.fix_generate``
  (bound where the library's check finds peft's own ``generate`` wrong for that method).

Tokens/s = new tokens / wall seconds of one ``generate`` call. Each repeat runs every
configuration once, in an order rotated per repeat, after one untimed warm-up call of each
(the uncached configurations, each call of which costs as much as all cached ones together,
only in the first ``--uncached-repeats`` repeats);
The paired ratio is the geometric mean over repeats of (adapter cached tokens/s) / (base cached
tokens/s) within the same repeat (``bench/stats.py``; slow drifts of the machine's load cancel),
with its bootstrap 95% interval; the median and range are kept beside it.
Goal: prompt tuning's ratio >= 0.9.

Correctness is checked on the same model: for each method, the cached tokens must equal
greedy decoding with peft's own training forward (the full sequence, no cache;
``reference_equal``), and every timed call of a model, cached or not, must give the same tokens
(``cached_equals_uncached``). Where the fix is bound, it is taken off
(``hf_tsprompt.generation.unfix_generate``) and the cached call repeated once
(``unpatched_cached_equal``: False shows the upstream bug on this model).

How to run
----------
::

    OMP_NUM_THREADS=1 taskset -c 0 python bench/generation_speed.py          # SmolLM2 (minutes)
    python bench/generation_speed.py --quick --model DIR --out /tmp/x       # smoke test

Defaults: 96 new tokens, 20 virtual tokens, 5 repeats (2 of them with the uncached
configurations). ``--quick``: 8 new tokens, 1 repeat.
Results go to ``--out`` (default ``bench/results``; ``--quick``: a temporary folder) as
``generation_speed.json`` and ``generation_speed.md``.

JSON fields (``generation_speed.json``)
---------------------------------------
- ``benchmark``: ``"generation_speed"``; ``quick``; ``command``, ``machine``, ``versions``,
  ``git``, ``started`` (``bench/common.py``); ``load`` (:meth:`LoadMonitor.summary`, the timed
  part); ``fix``: per method, ``{"active", "reason"}`` (``fix_generate``'s answer and the
  check's :meth:`~hf_tsprompt.generation.MethodCheck.describe`).
- ``settings``: ``model``, ``new_tokens``, ``virtual_tokens``, ``repeats``,
  ``uncached_repeats``, ``prompt_tokens``, ``methods``, ``dtype``.
- ``configs``: per configuration, ``tokens_per_s`` (:func:`common.stats` over repeats) and
  ``seconds`` (list, per repeat).
- ``ratios``: per method, ``cached_to_base_cached`` and ``uncached_to_base_cached`` (stats of
  the per-repeat ratios) and ``cached_to_uncached``; ``base_uncached_to_base_cached``.
- ``correctness``: per method, ``reference_equal`` (cached tokens == greedy training-forward
  tokens), ``cached_equals_uncached`` (every timed call, cached or not, gave those tokens),
  ``unpatched_cached_equal`` (None when the fix is not active), ``distinct_tokens`` (of the
  reference: a degenerate reference would prove nothing); ``base``: ``cached_equals_uncached``.
- ``trials``: ``{repeat, position, config, seconds, tokens_per_s}`` for every timed call.
- ``target_ratio`` (0.9), ``target_met`` (prompt tuning's paired ratio, ``geo_mean``, >= target).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats as bench_stats
from common import (
    LoadMonitor,
    environment_markdown,
    markdown_table,
    output_dir,
    run_metadata,
    single_thread,
    stats,
    write_result,
)

METHODS: tuple[str, ...] = ("prompt_tuning", "p_tuning", "prefix_tuning")
TARGET_RATIO = 0.9
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?"
)


def _adapter(base: Any, method: str, virtual_tokens: int) -> Any:
    """The library's own adapter for ``method`` (its config and N(0, 0.02^2) init), untrained."""
    from hf_tsprompt.prompts import get_prompt_model

    return get_prompt_model(base, method, num_virtual_tokens=virtual_tokens).eval()


def _generate(model: Any, ids: Any, new_tokens: int, use_cache: bool) -> tuple[float, list[int]]:
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )
        seconds = time.perf_counter() - start
    new = out[0, ids.shape[1] :].tolist()
    assert len(new) == new_tokens, f"generated {len(new)} tokens, expected {new_tokens}"
    return seconds, new


def _reference(model: Any, ids: Any, new_tokens: int, suppress: list[int]) -> list[int]:
    """Greedy decoding with peft's training forward over the whole sequence (no cache), with
    the stop tokens suppressed as ``min_new_tokens`` does in ``generate``."""
    import torch

    seq = ids
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = model(input_ids=seq).logits[0, -1].float()
            logits[suppress] = float("-inf")
            seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
    return seq[0, ids.shape[1] :].tolist()


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = []
    for value in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hf_tsprompt import generation
    from hf_tsprompt.models import load_base_model

    single_thread()
    meta = run_metadata()
    loaded = load_base_model(args.model)
    base, tok = loaded.model.eval(), loaded.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    stop = _stop_ids(base, tok)

    models: dict[str, Any] = {"base": base}
    correctness: dict[str, Any] = {}
    cached_tokens: dict[str, list[int]] = {}
    fix: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        model = _adapter(base, method, args.virtual_tokens)
        active = generation.fix_generate(model)
        fix[method] = {"active": active, "reason": generation.check(method)[method].describe()}
        print(f"[generation] fix: {fix[method]['reason']}", flush=True)
        reference = _reference(model, ids, args.new_tokens, stop)
        _, cached = _generate(model, ids, args.new_tokens, True)
        cached_tokens[method] = cached
        unpatched = None
        if active:
            generation.unfix_generate(model)
            try:
                unpatched = _generate(model, ids, args.new_tokens, True)[1] == reference
            finally:
                generation.fix_generate(model)
        correctness[method] = {
            "reference_equal": cached == reference,
            "unpatched_cached_equal": unpatched,
            "distinct_tokens": len(set(reference)),
        }
        print(f"[generation] {method}: {correctness[method]}", flush=True)
        # Prompt-learning adapters leave the base model's modules as they are, so the same
        # base serves every adapter and the base model's own calls.
        assert model.get_base_model() is base
        models[method] = model

    configs = [(name, cache) for name in models for cache in (True, False)]
    label = {(n, c): f"{n}_{'cached' if c else 'uncached'}" for n, c in configs}
    for name, cache in configs:  # warm-up, untimed
        _generate(models[name], ids, min(8, args.new_tokens), cache)
    trials: list[dict[str, Any]] = []
    same: dict[str, bool] = {}  # every timed call of a model gave the same tokens
    with LoadMonitor() as load:
        for rep in range(args.repeats):
            now = [c for c in configs if c[1] or rep < args.uncached_repeats]
            shift = rep % len(now)
            for pos, (name, cache) in enumerate(now[shift:] + now[:shift]):
                seconds, tokens = _generate(models[name], ids, args.new_tokens, cache)
                first = cached_tokens.setdefault(name, tokens)
                same[name] = same.get(name, True) and tokens == first
                trials.append(
                    {
                        "repeat": rep,
                        "position": pos,
                        "config": label[(name, cache)],
                        "seconds": seconds,
                        "tokens_per_s": args.new_tokens / seconds,
                    }
                )
                print(
                    f"[generation] repeat {rep} {label[(name, cache)]:24s} "
                    f"{args.new_tokens / seconds:7.2f} tokens/s",
                    flush=True,
                )
    for method in args.methods:
        correctness[method]["cached_equals_uncached"] = same[method]
    correctness["base"] = {"cached_equals_uncached": same["base"]}
    return _summarise(args, meta, load.summary(), trials, correctness, fix, ids)


def _summarise(
    args: argparse.Namespace,
    meta: dict[str, Any],
    load: dict[str, Any],
    trials: list[dict[str, Any]],
    correctness: dict[str, Any],
    fix: dict[str, dict[str, Any]],
    ids: Any,
) -> dict[str, Any]:
    by = _by_config(trials)
    configs = {
        name: {
            "tokens_per_s": stats(list(reps.values())),
            "seconds": [args.new_tokens / v for v in reps.values()],
        }
        for name, reps in by.items()
    }

    ratios = paired_ratios(trials, args.methods)
    main = "prompt_tuning" if "prompt_tuning" in args.methods else args.methods[0]
    data: dict[str, Any] = {"benchmark": "generation_speed", "quick": args.quick, **meta}
    data["load"] = load
    data["fix"] = fix
    data["settings"] = {
        "model": args.model,
        "new_tokens": args.new_tokens,
        "virtual_tokens": args.virtual_tokens,
        "repeats": args.repeats,
        "uncached_repeats": args.uncached_repeats,
        "prompt_tokens": int(ids.shape[1]),
        "methods": list(args.methods),
        "dtype": "float32",
    }
    data["configs"], data["ratios"], data["correctness"] = configs, ratios, correctness
    data["trials"] = trials
    data["target_ratio"] = TARGET_RATIO
    data["target_method"] = main
    data["target_met"] = ratios[main]["cached_to_base_cached"]["geo_mean"] >= TARGET_RATIO
    return data


def _by_config(trials: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    by: dict[str, dict[int, float]] = {}
    for t in trials:
        by.setdefault(t["config"], {})[t["repeat"]] = t["tokens_per_s"]
    return by


def paired_ratios(trials: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per-repeat ratios of tokens/s within the same repeat, summarised by ``common.stats`` plus
    the paired ratio of every page (``bench/stats.py``): ``geo_mean`` and its bootstrap
    ``ci_low`` / ``ci_high``."""
    by = _by_config(trials)

    def paired(num: str, den: str) -> dict[str, Any]:
        values = [by[num][r] / by[den][r] for r in by[num] if r in by[den]]
        lo, hi = bench_stats.bootstrap_ci(values)
        return stats(values) | {
            "geo_mean": bench_stats.geo_mean(values),
            "ci_low": lo,
            "ci_high": hi,
        }

    ratios: dict[str, Any] = {
        "base_uncached_to_base_cached": paired("base_uncached", "base_cached")
    }
    for m in methods:
        ratios[m] = {
            "cached_to_base_cached": paired(f"{m}_cached", "base_cached"),
            "uncached_to_base_cached": paired(f"{m}_uncached", "base_cached"),
            "cached_to_uncached": paired(f"{m}_cached", f"{m}_uncached"),
        }
    return ratios


def _f(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def render_markdown(data: dict[str, Any]) -> str:
    s, cfg, rat = data["settings"], data["configs"], data["ratios"]
    base = cfg["base_cached"]["tokens_per_s"]["median"]
    main = data["target_method"]
    r = rat[main]["cached_to_base_cached"]
    lines = [
        "# Generation speed: prompt-learning adapters, cached vs uncached",
        "",
        f"Greedy `generate` of exactly {s['new_tokens']} new tokens, batch 1, a "
        f"{s['prompt_tokens']}-token chat prompt, {s['virtual_tokens']} virtual tokens "
        f"(untrained), model `{s['model']}` ({s['dtype']}, one torch thread); "
        f"{s['repeats']} repeats ({s['uncached_repeats']} with the uncached configurations), "
        "configurations in rotating order, one process. The check of `generate` (the library's "
        "`hf_tsprompt.generation.check`): "
        + "; ".join(data["fix"][m]["reason"] for m in s["methods"])
        + ".",
        "",
        "## Reading",
        "",
        f"With the fix, {main.replace('_', ' ')} generates with the cache at "
        f"{_f(cfg[f'{main}_cached']['tokens_per_s']['median'])} tokens/s against the base "
        f"model's {_f(base)}: paired ratio (geometric mean over repeats) **{r['geo_mean']:.3f}** "
        f"[95% CI {r['ci_low']:.3f}, {r['ci_high']:.3f}], median {r['median']:.3f}, range "
        f"{r['min']:.3f}-{r['max']:.3f}; goal >= {data['target_ratio']}: "
        f"{'met' if data['target_met'] else 'not met'}). Without the cache it manages "
        f"{_f(cfg[f'{main}_uncached']['tokens_per_s']['median'])} tokens/s, "
        f"{rat[main]['cached_to_uncached']['geo_mean']:.2f}x slower than cached"
        f" ({rat[main]['cached_to_uncached']['n']} uncached repeat(s); the uncached path "
        "recomputes the whole sequence for every token, so the gap grows with length). "
        + bench_stats.interval_note(),
        "",
        "## Tokens per second (median over repeats; min-max)",
        "",
    ]
    rows = []
    for name in ["base", *s["methods"]]:
        c, u = cfg[f"{name}_cached"]["tokens_per_s"], cfg[f"{name}_uncached"]["tokens_per_s"]
        if name == "base":
            ratio_c, ratio_u = "1", f"{rat['base_uncached_to_base_cached']['geo_mean']:.3f}"
        else:
            ratio_c = f"**{rat[name]['cached_to_base_cached']['geo_mean']:.3f}**"
            ratio_u = f"{rat[name]['uncached_to_base_cached']['geo_mean']:.3f}"
        rows.append(
            [
                name.replace("_", " "),
                f"{_f(c['median'])} ({_f(c['min'])}-{_f(c['max'])})",
                ratio_c,
                f"{_f(u['median'])} ({_f(u['min'])}-{_f(u['max'])})",
                ratio_u,
            ]
        )
    lines += [
        markdown_table(
            [
                "model",
                "cached",
                "cached / base cached (paired)",
                "uncached",
                "uncached / base cached (paired)",
            ],
            rows,
        ),
        "",
        "Ratios are medians of per-repeat ratios (each adapter call against the base call of "
        "the same repeat).",
        "",
        "## Correctness on this model",
        "",
        "Reference: greedy decoding with peft's own training forward over the whole sequence "
        "(no cache). `unpatched`: peft's own `generate` (fix removed), cached.",
        "",
    ]
    crow = []
    for m in s["methods"]:
        c = data["correctness"][m]
        crow.append(
            [
                m.replace("_", " "),
                c["reference_equal"],
                c["cached_equals_uncached"],
                "n/a" if c["unpatched_cached_equal"] is None else c["unpatched_cached_equal"],
                c["distinct_tokens"],
            ]
        )
    lines += [
        markdown_table(
            [
                "method",
                "cached == reference",
                "cached == uncached",
                "unpatched cached == reference",
                "distinct reference tokens",
            ],
            crow,
        ),
        "",
        "Base model: every timed call gave the same tokens cached and uncached: "
        f"{data['correctness']['base']['cached_equals_uncached']}.",
        "",
        environment_markdown(data, data["load"]),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    p.add_argument(
        "--out", default=None, help="output folder (default bench/results; --quick: a temp folder)"
    )
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="base model: embedded name, local folder or Hub id",
    )
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--uncached-repeats", type=int, default=2, help="repeats that run the uncached configs"
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument(
        "--from-json", metavar="PATH", help="re-render the page from a saved generation_speed.json"
    )
    args = p.parse_args(argv)
    args.out = output_dir(args.out, args.quick)
    if args.quick:
        args.new_tokens, args.repeats, args.uncached_repeats = 8, 1, 1
    if min(args.new_tokens, args.virtual_tokens, args.repeats, args.uncached_repeats) < 1:
        p.error("--new-tokens, --virtual-tokens, --repeats and --uncached-repeats must be >= 1")
    args.uncached_repeats = min(args.uncached_repeats, args.repeats)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        # Re-render from recorded trials: ratios are recomputed, nothing is re-measured.
        data = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        data["ratios"] = paired_ratios(data["trials"], data["settings"]["methods"])
        main_ratio = data["ratios"][data["target_method"]]["cached_to_base_cached"]
        data["target_met"] = main_ratio["geo_mean"] >= data["target_ratio"]
    else:
        data = run(args)
    json_path, md_path = write_result(args.out, "generation_speed", data, render_markdown(data))
    print(f"[generation] wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
