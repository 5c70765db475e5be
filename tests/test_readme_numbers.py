"""Every figure on the README's first screen (before ``## Quickstart``) comes from a committed
result file under ``bench/results/``.

Each claim below renders its sentence from the JSON a benchmark script wrote (never from
prose: ``bench/results/README.md`` is hand-written and does not count as a source) and must
appear verbatim on the first screen; then every number left on the screen, once those
sentences are taken out, must be in :data:`NOT_MEASUREMENTS`: names and settings, each with
the reason it is not a measurement. A new figure on the first screen therefore needs a source
here, and a page regenerated with other numbers fails until the README says them.

Checked once (2026-12-08) by editing the README and reverting: P1's "p = 0.023" changed to
0.024 -> fails (the rendered sentence is missing); a figure with no source ("42 steps") added
to a sourced sentence -> fails.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import stats  # bench/stats.py
import time_to_fit  # bench/time_to_fit.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: A number as it appears in prose: 0.023, 1e-2, 13%, 135.
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?%?")

#: Numbers on the first screen that are not measurements: (text on the screen, why).
NOT_MEASUREMENTS: list[tuple[str, str]] = [
    ("Huang et al., 2026, arXiv:2602.16500", "the paper's year and arXiv id"),
    ("SmolLM2-135M", "the model's name"),
    ("Gemma-3-270M", "the model's name"),
    ("tau 0.1, alpha 10, lambda_ts 1", "the paper's loss settings (checked below)"),
    ("40% fewer", "the target set in advance (PROTOCOL section 5; checked below)"),
]


def first_screen() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Quickstart", 1)[0]
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # the loss formula
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets are paths, not figures
    return " ".join(text.split())


@cache
def result(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _primary(name: str) -> dict[str, Any]:
    return next(c for c in result("time_to_fit.json")["primary"] if c["name"] == name)


def _pct_range(values: list[float]) -> str:
    lo, hi = 100 * min(values), 100 * max(values)
    return f"{lo:.1g}-{hi:.1g}%"


def claims() -> list[str]:
    """The first screen's sentences with figures, rendered from the result files."""
    ttf = result("time_to_fit.json")
    conv = result("convergence.json")
    gemma = result("paper_gemma.json")
    p1, p2, p3 = (_primary(n) for n in ("bbh-tsloss", "gsm8k-tsloss", "bbh-tsloss-scalefree"))
    grad = [g["grad_ratio"] for g in conv["groups"] if g["method"] == "ce+ts"]
    best = ttf["best_baseline"]["bbh"]["arm"]
    _, init, lr = time_to_fit.parse_arm(best)
    tuning = {r["arm"]: r for r in ttf["tuning"]["bbh"]}
    normal = [r["median"] for a, r in tuning.items() if a.startswith("ce@normal,")]
    ce, ts = gemma["arms"]["ce@normal"], gemma["arms"]["ce+ts@normal"]
    d = gemma["design"]
    ci = f"{100 * stats.CI_LEVEL:.0f}% CI"  # the level the pages' intervals were computed at
    return [
        f"its gradient is {_pct_range(grad)} of the cross-entropy's",
        f"{ttf['protocol']['k']} training examples, {p1['n_pairs']} seeds",
        f"(`{init.upper()}` init at lr {lr:.0e}".replace("e-0", "e-"),
        f"**{100 * (p1['ratio'] - 1):.0f}% more** optimiser steps",
        f"(ratio {p1['ratio']:.2f}, {ci} {p1['ci_low']:.2f}-{p1['ci_high']:.2f}, Holm-adjusted "
        f"p = {p1['p_holm']:.2g}; {p1['slower']} seeds slower, {p1['ties']} ties)",
        f"made no difference ({p3['ratio']:.2f}, {p3['ci_low']:.2f}-{p3['ci_high']:.2f})",
        f"(the same design, {p2['n_pairs']} seeds)",
        f"{p2['ratio']:.2f} times the steps ({ci} {p2['ci_low']:.2f}-{p2['ci_high']:.2f}; "
        f"Holm-adjusted p = {p2['p_holm']:.2g}, no difference detected)",
        f"(AdamW lr {d['lr']:.0e}, {d['schedule']} decay, {d['budget']} updates)".replace(
            "e-05", "e-5"
        ),
        f"fitted on {ce['fitted']} of {ce['runs']} seeds and so did the paper's loss"
        if (ce["fitted"], ce["runs"]) == (ts["fitted"], ts["runs"])
        else "CE and CE + TSLoss fitted on different numbers of seeds",
        f"is {100 * ts['grad_ratio']:.2g}% of the cross-entropy's",
        f"fitted in a median of {tuning[best]['median']:.0f} steps against "
        f"{min(normal):.0f}-{max(normal):.0f} for the paper's N(0, 0.02^2) init (exploratory, "
        f"{len(tuning[best]['seeds'])} seeds)",
    ]


def test_every_first_screen_figure_is_rendered_from_a_result_file():
    screen = first_screen()
    rest = screen
    for claim in claims():
        assert claim in screen, f"README first screen does not say: {claim!r}"
        rest = rest.replace(claim, " ")
    for text, why in NOT_MEASUREMENTS:
        assert text in rest, f"allowlisted {text!r} ({why}) is no longer on the first screen"
        rest = rest.replace(text, " ")
    assert NUMBER.findall(rest) == [], f"figures with no source: {NUMBER.findall(rest)}"


def test_the_allowlisted_settings_are_the_ones_used():
    ts = result("convergence.json")["methods"]["ce+ts"]
    assert (ts["tau"], ts["alpha"], ts["weight"]) == (0.1, 10.0, 1.0)
    assert time_to_fit.MOONSHOT_RATIO == 0.60  # ">= 40% fewer steps"
