"""hf_tsprompt.explain: nearest vocabulary tokens and the topology attribution of a prompt.

Truth comes from outside the module: a brute-force cosine matrix in numpy against the tiny
model's embeddings loaded with transformers, the edges of ``persistence_pairs`` and the
diagrams the training run recorded, single-linkage components from scipy, and point clouds
built so that the answer is known (prompt rows equal to vocabulary rows, a hexagon).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from hf_tsprompt.errors import ConfigError
from hf_tsprompt.explain import (
    EXPLAIN_JSON,
    EXPLAIN_MD,
    Vocabulary,
    explain_prompt,
    explain_rows,
    explain_run,
    format_explain,
    load_explain,
    save_explain,
)
from hf_tsprompt.records import load_prompt, make_record, read_records, write_snapshot
from hf_tsprompt.topology import distance_matrix, persistence, persistence_pairs

from tiny import make_tiny_run, tiny_llama, tiny_tokenizer

N_TOKENS = 16  # enough points for the tiny run's random prompt to have H1 loops


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run, model_dir, _ = make_tiny_run(
        tmp_path_factory.mktemp("explain"), peft={"num_virtual_tokens": N_TOKENS}
    )
    return run, model_dir


@pytest.fixture(scope="module")
def embeddings(tiny_run):
    """The base model's input embeddings, loaded independently of hf_tsprompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model_dir = tiny_run
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    E = model.get_input_embeddings().weight.detach().double().numpy()[: len(tok)]
    return E, tok


@pytest.fixture(scope="module")
def result(tiny_run):
    run, _ = tiny_run
    return explain_run(run, top_k=4)  # loads the base model named by the run's recipe


def _brute_cosines(P: np.ndarray, E: np.ndarray) -> np.ndarray:
    """All cosines; a zero row (the tiny model's padding embedding) has cosine 0."""
    P = np.asarray(P, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = (P @ E.T) / np.outer(np.linalg.norm(P, axis=1), np.linalg.norm(E, axis=1))
    return np.nan_to_num(sims, nan=0.0)


def test_explains_first_and_last_snapshot(tiny_run, result):
    run, _ = tiny_run
    records = read_records(run)
    assert (result.start.step, result.end.step) == (records[0]["step"], records[-1]["step"])
    assert result.space == "vocabulary" and result.note is None
    assert result.method == "prompt_tuning" and result.n_tokens == N_TOKENS
    assert len(result.start.neighbours) == N_TOKENS
    assert result.start.accuracy == records[0].get("accuracy")


def test_neighbours_match_brute_force_cosine(tiny_run, embeddings, result):
    run, _ = tiny_run
    E, tok = embeddings
    assert result.vocab_size == len(E)
    records = {r["step"]: r for r in read_records(run)}
    for snap in (result.start, result.end):
        sims = _brute_cosines(load_prompt(run, records[snap.step]), E)
        for neigh in snap.neighbours:
            row = sims[neigh.index]
            expected = np.sort(row)[::-1][: result.top_k]
            np.testing.assert_allclose(neigh.cosines, expected, atol=1e-5)
            np.testing.assert_allclose(row[neigh.ids], neigh.cosines, atol=1e-5)
            assert len(set(neigh.ids)) == len(neigh.ids)
            assert neigh.tokens == tok.convert_ids_to_tokens(neigh.ids)
            for token_id, text in zip(neigh.ids, neigh.texts, strict=True):
                decoded = tok.decode([token_id])
                if "\ufffd" not in decoded:
                    assert text == decoded
                else:  # a lone byte of a multi-byte character: shown as its bytes
                    assert text.startswith("<0x") and "\ufffd" not in text


def test_h0_attribution_matches_persistence_pairs_and_single_linkage(tiny_run, result):
    run, _ = tiny_run
    records = {r["step"]: r for r in read_records(run)}
    for snap in (result.start, result.end):
        rec = records[snap.step]
        D = distance_matrix(load_prompt(run, rec))
        pairs = persistence_pairs(D)
        assert {tuple(sorted(b.edge)) for b in snap.h0} == {
            tuple(sorted(map(int, e))) for e in pairs.h0_death_edges
        }
        recorded = np.sort(rec["diagrams_np"][0][np.isfinite(rec["diagrams_np"][0][:, 1]), 1])
        np.testing.assert_allclose(sorted(b.death for b in snap.h0), recorded, rtol=1e-5)
        assert [b.death for b in snap.h0] == sorted((b.death for b in snap.h0), reverse=True)
        for bar in snap.h0:
            # Just below the death scale, single linkage (scipy) has the two merging
            # components; the dying one holds exactly one end of the edge and is the smaller.
            adj = np.less(D, bar.death) & ~np.eye(len(D), dtype=bool)
            _, label = connected_components(adj, directed=False)
            a, b = bar.edge
            comp_a = set(np.flatnonzero(label == label[a]).tolist())
            comp_b = set(np.flatnonzero(label == label[b]).tolist())
            assert set(bar.members) in (comp_a, comp_b)
            assert len(bar.members) == min(len(comp_a), len(comp_b))
        off = D + np.diag(np.full(len(D), np.inf))
        np.testing.assert_allclose(snap.merge_scale, off.min(axis=1))


def test_h1_attribution_matches_persistence_pairs(tiny_run, result):
    run, _ = tiny_run
    records = {r["step"]: r for r in read_records(run)}
    assert result.start.h1, "the tiny run's initial prompt should have H1 loops"
    for snap in (result.start, result.end):
        rec = records[snap.step]
        D = distance_matrix(load_prompt(run, rec))
        pairs = persistence_pairs(D)
        truth = {
            (float(b), float(d)): (tuple(map(int, be)), tuple(map(int, de)))
            for (b, d), be, de in zip(
                pairs.h1_diagram, pairs.h1_birth_edges, pairs.h1_death_edges, strict=True
            )
        }
        assert len(snap.h1) == len(rec["diagrams_np"][1]) == len(truth)
        np.testing.assert_allclose(
            sorted((lp.birth, lp.death) for lp in snap.h1),
            sorted(map(tuple, rec["diagrams_np"][1])),
            rtol=1e-6,
        )
        for loop in snap.h1:
            assert truth[(loop.birth, loop.death)] == (loop.birth_edge, loop.death_edge)
            a, b = loop.birth_edge
            cyc = loop.cycle
            # A cycle through the birth edge: a ... b, closed by (b, a); its other edges are
            # in the complex before the loop is born (shorter than the birth edge).
            assert (cyc[0], cyc[-1]) == (a, b)
            assert len(cyc) >= 3 and len(set(cyc)) == len(cyc)
            for u, v in itertools.pairwise(cyc):
                assert D[u, v] < D[a, b]
            np.testing.assert_allclose(D[a, b], loop.birth, rtol=1e-6)


def test_survival_of_start_loops(result):
    gone = result.gone_loops
    for loop in result.start.h1:
        best = max(
            (
                len(set(loop.cycle) & set(e.cycle)) / len(set(loop.cycle) | set(e.cycle))
                for e in result.end.h1
            ),
            default=0.0,
        )
        assert loop.survives is (best >= 0.5)
        assert (loop in gone) is (best < 0.5)


def test_prompt_equal_to_vocabulary_rows_names_those_tokens(tiny_run, embeddings, tmp_path):
    run, _ = tiny_run
    E, _ = embeddings
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    records = read_records(copy)
    rng = np.random.default_rng(1)
    start_ids = rng.choice(np.arange(3, len(E)), size=N_TOKENS, replace=False)
    end_ids = rng.choice(np.arange(3, len(E)), size=N_TOKENS, replace=False)
    # Scaled rows: cosine ignores the scale, so the top-1 match is exact either way.
    for rec, ids, scale in ((records[0], start_ids, 0.05), (records[-1], end_ids, 3.0)):
        np.save(copy / "topology" / rec["prompt_file"], (E[ids] * scale).astype(np.float32))
    res = explain_run(copy, top_k=3)
    for snap, ids in ((res.start, start_ids), (res.end, end_ids)):
        assert [n.ids[0] for n in snap.neighbours] == ids.tolist()
        np.testing.assert_allclose([n.cosines[0] for n in snap.neighbours], 1.0, atol=1e-6)
    rows = explain_rows(res, top=1)
    assert [r[0] for r in rows] == list(range(N_TOKENS))
    assert all(r[1].endswith(" 1.00") and r[2].endswith(" 1.00") for r in rows)


def _hexagon(extra: int = 3, dim: int = 8) -> np.ndarray:
    """An irregular hexagon (tokens 0-5, in circular order, all sides of different length) in
    one plane, and ``extra`` points off it, each twice as far as the previous one."""
    angles = np.deg2rad([0, 50, 115, 172, 240, 298])
    X = np.zeros((6 + extra, dim))
    X[:6, 0], X[:6, 1] = np.cos(angles), np.sin(angles)
    for k in range(extra):
        X[6 + k, 2 + k] = 5.0 * 2**k  # on its own axis: merges with the hexagon at ~5 * 2**k
    return X


def test_constructed_loop_and_isolated_tokens():
    snap = explain_prompt(_hexagon())
    assert len(snap.h1) == 1
    cycle = snap.h1[0].cycle
    assert sorted(cycle) == list(range(6))
    # consecutive cycle tokens are neighbours on the hexagon
    for u, v in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        assert (u - v) % 6 in (1, 5)
    # The farther a point, the later it merges: the longest H0 bars are those tokens alone.
    assert [b.members for b in snap.h0[:3]] == [[8], [7], [6]]
    assert snap.neighbours is None  # no vocabulary given


class _Tok:
    """A tokenizer stand-in whose tokens carry Markdown and HTML metacharacters."""

    texts: ClassVar[list[str]] = ["a|b", "<i>x</i>", "`code`", "*star*", "plain", "new\nline"]

    def __len__(self) -> int:
        return len(self.texts)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.texts[i] for i in ids)

    def convert_ids_to_tokens(self, i):
        return self.texts[i]


def _fake_run(root: Path, prompts: list[np.ndarray], method: str) -> Path:
    """A run folder holding only what explain reads: run.json and topology records."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": "fake", "method": method}))
    for step, P in enumerate(prompts):
        rec = make_record(
            step=step,
            epoch=None,
            event="step",
            result=persistence(P),
            prompt_file=f"prompts/step_{step:08d}.npy",
            time=0.0,
        )
        write_snapshot(run / "topology", rec, P)
    return run


def test_loop_gone_at_the_end_and_markdown_escaping(tmp_path):
    start = _hexagon(extra=0, dim=6)
    end = start.copy()
    end[:, 1] *= 0.01  # flattened onto a line: the loop is gone
    run = _fake_run(tmp_path, [start, end], "prompt_tuning")
    rng = np.random.default_rng(0)
    vocab = Vocabulary(rng.normal(size=(len(_Tok()), 6)).astype(np.float32), _Tok())
    res = explain_run(run, top_k=len(_Tok()), vocab=vocab)  # every token in every row
    assert len(res.start.h1) == 1 and res.end.h1 == []
    assert res.gone_loops == res.start.h1 and res.start.h1[0].survives is False
    text = format_explain(res)
    assert "Loops of the start gone at the end: 1 of 1" in text
    rows = explain_rows(res, top=None)
    cells = " ".join(s + e for _, s, e in rows)
    for raw, escaped in (
        ("a|b", r"a\|b"),
        ("<i>", r"\<i\>"),
        ("`code`", r"\`code\`"),
        ("*star*", r"\*star\*"),
    ):
        assert raw not in cells and escaped in cells
    assert "\n" not in cells  # a newline inside a token cannot break the table row
    js, md = save_explain(res, run)
    assert (js.name, md.name) == (EXPLAIN_JSON, EXPLAIN_MD)
    assert load_explain(run).to_dict() == json.loads(js.read_text())
    text = md.read_text()
    assert "<i>" not in text and r"\<i\>" in text


def test_prefix_tuning_gives_an_explanation_not_tokens(tmp_path):
    from hf_tsprompt.prompts import get_prompt_model, prompt_matrix

    tok = tiny_tokenizer()
    model = get_prompt_model(tiny_llama(vocab_size=len(tok)), "prefix_tuning", num_virtual_tokens=8)
    P0 = prompt_matrix(model).detach().numpy()
    P1 = P0 + np.random.default_rng(0).normal(scale=0.1, size=P0.shape).astype(np.float32)
    # run.json names no base model and there is no recipe: loading one would fail, so this
    # also checks that no model is loaded for prefix tuning.
    run = _fake_run(tmp_path, [P0, P1], "prefix_tuning")
    res = explain_run(run)
    assert res.space == "key_value"
    assert res.start.neighbours is None and res.end.neighbours is None
    assert "key/value" in res.note and str(P0.shape[1]) in res.note
    assert explain_rows(res) == []
    assert "No nearest tokens" in format_explain(res)
    # the topology is still attributed, in key/value space
    D = distance_matrix(P1)
    assert {tuple(sorted(b.edge)) for b in res.end.h0} == {
        tuple(sorted(map(int, e))) for e in persistence_pairs(D).h0_death_edges
    }
    save_explain(res, run)
    assert load_explain(run).note == res.note


def test_p_tuning_output_is_projected_and_a_width_mismatch_is_explained(tmp_path):
    rng = np.random.default_rng(0)
    vocab = Vocabulary(rng.normal(size=(len(_Tok()), 6)).astype(np.float32), _Tok())
    ids = [4, 0, 2, 5]
    # P-tuning records its encoder's output, which lives in the embedding space.
    run = _fake_run(tmp_path / "p", [vocab.embeddings[ids] * 0.1] * 2, "p_tuning")
    res = explain_run(run, top_k=1, vocab=vocab)
    assert res.space == "vocabulary" and [n.ids[0] for n in res.end.neighbours] == ids
    assert explain_rows(run) == []  # nothing saved yet: explain_rows(run_dir) reads explain.json
    save_explain(res, run)
    assert explain_rows(run) == explain_rows(res) and len(explain_rows(res)) == len(ids)
    wide = _fake_run(tmp_path / "w", [rng.normal(size=(4, 9))] * 2, "prompt_tuning")
    res = explain_run(wide, vocab=vocab)
    assert res.space == "other" and res.start.neighbours is None
    assert "9 dimensions" in res.note and explain_rows(res) == []


def test_steps_argument(tiny_run, embeddings):
    run, _ = tiny_run
    E, tok = embeddings
    vocab = Vocabulary(E.astype(np.float32), tok)
    steps = [r["step"] for r in read_records(run)]
    res = explain_run(run, steps=[steps[1], steps[0]], vocab=vocab, top_k=1)
    assert [s.step for s in res.snapshots] == [steps[1], steps[0]]
    with pytest.raises(ConfigError, match="no saved prompt at step"):
        explain_run(run, steps=[10_000], vocab=vocab)


def test_a_key_value_method_registered_after_import_is_read_live(monkeypatch):
    """The prompt-method table is asked when a run is explained, not copied at import: a
    method registered later (a plugin) with a key/value prompt has no nearest tokens."""
    import dataclasses

    from hf_tsprompt import prompts
    from hf_tsprompt.explain import in_key_value_space

    monkeypatch.setattr(prompts, "_REGISTRY", dict(prompts._REGISTRY))
    assert in_key_value_space("prefix_tuning") and not in_key_value_space("prompt_tuning")
    assert not in_key_value_space("my_prefix")  # unknown: compared with the vocabulary
    prefix = prompts.get_prompt_method("prefix_tuning")
    prompts.register_prompt_method(
        dataclasses.replace(prefix, name="my_prefix", peft_type="MY_PREFIX")
    )
    assert in_key_value_space("my_prefix")
