"""What a trained soft prompt "says" and which of its vectors carry its topology
(``hf-tsprompt explain RUN_DIR``).

Two readings of the prompt's point cloud P (n x d), at the first and the last saved snapshot:

**Nearest vocabulary tokens.** Each virtual token is projected onto the base model's input
embedding matrix E (V x d) and named by its top-k tokens by cosine similarity, the projection
of PGSPT (Liou, Wei & Lee, "Semantically interpretable soft prompt tuning via projection-guided
alignment", Knowledge-Based Systems 2025; the paper's ref. [8]). This needs P to live where E
lives, i.e. to be what the model reads as input embeddings:

- prompt tuning: the trained embedding table itself;
- P-tuning: the prompt encoder's *output* (what :func:`hf_tsprompt.prompts.prompt_matrix`
  records), which the model also reads as input embeddings;
- prefix tuning and P-tuning v2: each virtual token is one point in key/value space
  (``R^{2 * num_layers * d_model}``, every layer's key and value): it never passes through
  the input embedding, so it has no nearest tokens. The result then carries an explanation
  (:attr:`ExplainResult.note`) instead of invented tokens; the topology part still applies.

Cosine ignores scale, so it also names a prompt drawn from N(0, 0.02^2), whose norm is far
below the vocabulary's; the cosines are reported so a near-zero (meaningless) match shows.

**Topology attribution.** From the Euclidean distance matrix D of P (the one the records'
barcodes were computed from, :func:`hf_tsprompt.topology.distance_matrix`):

- H0: the finite H0 death times of a Rips filtration are the minimum spanning tree's edge
  lengths (:func:`hf_tsprompt.topology.persistence_pairs`). Processing those edges in order
  (single linkage), each merge ends the bar of one of the two merging components; all births
  are 0, so the elder rule does not decide which, and we let the *smaller* component die (ties:
  the one whose lowest token index is higher). Its tokens are the bar's members: the longest
  bars name the most isolated tokens or groups. Each token's ``merge_scale`` is the scale at
  which it stops being alone, its nearest-neighbour distance.
- H1: a bar is born when an edge (a, b) closes a loop. Its representative cycle is that edge
  plus the shortest path (Euclidean length) from b back to a through edges shorter than it,
  a cycle in the complex at the birth scale which represents the new class (modulo older
  ones). Loops of two snapshots have no canonical correspondence (different point clouds), so a
  start loop counts as surviving when some end loop shares at least half of their tokens
  (Jaccard >= 0.5); the others are the loops that disappeared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cards import explain_table_rows, markdown_escape, neighbours_text
from .errors import ConfigError, MissingFileError, RunFolderError
from .fsutil import atomic_write_json, atomic_write_text, read_json_dict
from .models import load_base_model
from .prompts import get_prompt_method, method_of, prompt_method_names
from .recipes import load_run_recipe
from .records import load_prompt, read_records
from .runs import (
    ADAPTER_CONFIG_FILE,
    EXPLAIN_JSON,
    EXPLAIN_MD,
    RECIPE_FILE,
    adapter_dir,
    read_run,
)
from .topology import H0Component, H1Loop, distance_matrix, h0_components, h1_loops

__all__ = [
    "EXPLAIN_JSON",
    "EXPLAIN_MD",
    "ExplainResult",
    "H0Component",
    "H1Loop",
    "SnapshotExplain",
    "TokenNeighbours",
    "Vocabulary",
    "explain_prompt",
    "explain_rows",
    "explain_run",
    "format_explain",
    "format_markdown",
    "h0_components",
    "h1_loops",
    "in_key_value_space",
    "load_explain",
    "load_vocabulary",
    "nearest_tokens",
    "neighbour_text",
    "save_explain",
]

PathLike = str | os.PathLike

#: A start loop survives when an end loop shares at least this Jaccard fraction of its tokens.
LOOP_MATCH = 0.5
PREFIX_NOTE = (
    "{method}: each virtual token is a point in key/value space (dimension {dim}: a key and a "
    "value vector for every layer), which the model never reads through its input embedding, "
    "so there is no vocabulary to project it onto; nearest tokens (the PGSPT projection) exist "
    "only for prompt tuning and P-tuning. The topology below is that of the key/value points."
)


# --- the vocabulary -------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """The base model's input embedding matrix (float32, one row per tokenizer id) and its
    tokenizer. Only these are kept: the rest of the model is not needed to explain a prompt."""

    embeddings: np.ndarray
    tokenizer: Any

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any) -> Vocabulary:
        """Copy the input embeddings out of a loaded (base or peft) model."""
        weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
        # Some models pad the embedding past the tokenizer (e.g. to a multiple of 64); the
        # padding rows are not tokens. np.array copies, so the model itself can be freed.
        rows = min(weight.shape[0], len(tokenizer))
        return cls(np.array(weight[:rows], dtype=np.float32), tokenizer)

    def text(self, token_id: int) -> str:
        """The token as text (``decode``), special tokens included.

        A token that is part of a multi-byte character decodes to U+FFFD alone; its bytes are
        shown instead (``<0xE4>``, SentencePiece's spelling), so byte tokens stay distinct.
        """
        text = str(self.tokenizer.decode([int(token_id)], skip_special_tokens=False))
        if "\ufffd" not in text:
            return text
        raw = self.raw(token_id)
        table = _byte_level_decoder()
        if all(ch in table for ch in raw):
            return _bytes_text(bytes(table[ch] for ch in raw))
        return raw  # e.g. SentencePiece's "<0xE4>"

    def raw(self, token_id: int) -> str:
        """The tokenizer's own spelling of the token (e.g. ``Ġthe`` in byte-level BPE)."""
        return str(self.tokenizer.convert_ids_to_tokens(int(token_id)))


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte (the inverse of its
    ``bytes_to_unicode``: printable bytes map to themselves, the rest to U+0100 onwards)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _bytes_text(data: bytes) -> str:
    """UTF-8 text with each byte that is not part of a valid character written ``<0xE4>``."""
    out: list[str] = []
    while data:
        try:
            out.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as err:
            out.append(data[: err.start].decode("utf-8"))
            out += [f"<0x{b:02X}>" for b in data[err.start : err.end]]
            data = data[err.end :]
    return "".join(out)


def _base_model_ref(run_dir: Path) -> tuple[str, Any]:
    """``(name_or_path, dtype)`` of the run's base model: the recipe, else run.json."""
    if (run_dir / RECIPE_FILE).is_file():
        recipe = load_run_recipe(run_dir)
        return str(recipe.model.name_or_path), recipe.model.dtype
    info = read_run(run_dir, strict=False)
    for key in ("model_source", "base_model"):
        if isinstance(info.get(key), str) and info[key]:
            return info[key], None
    adapter = read_json_dict(adapter_dir(run_dir) / ADAPTER_CONFIG_FILE)
    if isinstance(adapter.get("base_model_name_or_path"), str):
        return adapter["base_model_name_or_path"], None
    raise RunFolderError(
        f"{run_dir} names no base model (no recipe.yaml, run.json or adapter config); pass "
        "vocab=Vocabulary.from_model(model, tokenizer) to explain_run."
    )


def load_vocabulary(run_dir: PathLike) -> Vocabulary:
    """Load the run's base model, keep its input embeddings and tokenizer, drop the rest."""
    name, dtype = _base_model_ref(Path(run_dir))
    loaded = load_base_model(name, dtype=dtype)
    vocab = Vocabulary.from_model(loaded.model, loaded.tokenizer)
    del loaded  # the transformer layers are not needed; let them go now
    return vocab


# --- nearest tokens -------------------------------------------------------------------------


def nearest_tokens(
    prompt: np.ndarray, embeddings: np.ndarray, top_k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``embeddings`` by cosine similarity to each row of ``prompt``.

    Returns ``(ids, cosines)``, both (n x k), best first; equal cosines are ordered by id.
    A zero vector (prompt or vocabulary row) has cosine 0 with everything.
    """
    P = np.asarray(prompt, dtype=np.float64)
    E = np.asarray(embeddings, dtype=np.float32)
    if P.ndim != 2 or E.ndim != 2 or P.shape[1] != E.shape[1]:
        raise ConfigError(
            f"prompt {P.shape} and embedding matrix {E.shape} must both be 2-D with the same "
            "width to compare them."
        )
    k = min(int(top_k), E.shape[0])
    if k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k!r}.")
    tiny = np.finfo(np.float32).tiny
    Pn = (P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), tiny)).astype(np.float32)
    En = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), tiny)
    sims = Pn @ En.T  # float32: a 49k-token vocabulary in float64 would double the memory
    ids = np.empty((P.shape[0], k), dtype=np.int64)
    cos = np.empty((P.shape[0], k), dtype=np.float64)
    for i, row in enumerate(sims):
        # argpartition may split ties at the k-th value arbitrarily: widen to all tied values.
        cut = np.partition(row, -k)[-k]
        cand = np.flatnonzero(row >= cut)
        order = np.lexsort((cand, -row[cand]))[:k]
        ids[i] = cand[order]
        # Report float64 cosines of the chosen ids (the ranking used float32).
        cos[i] = (E[ids[i]].astype(np.float64) @ P[i]) / np.maximum(
            np.linalg.norm(E[ids[i]].astype(np.float64), axis=1) * np.linalg.norm(P[i]), tiny
        )
    return ids, cos


# --- topology attribution -------------------------------------------------------------------


@dataclass
class TokenNeighbours:
    """The nearest vocabulary tokens of one virtual token at one snapshot."""

    index: int
    ids: list[int]
    texts: list[str]
    tokens: list[str]
    cosines: list[float]


def _jaccard(x: Iterable[int], y: Iterable[int]) -> float:
    sx, sy = set(x), set(y)
    return len(sx & sy) / len(sx | sy) if sx | sy else 1.0


# --- the result -----------------------------------------------------------------------------


@dataclass
class SnapshotExplain:
    """One snapshot: nearest tokens (None in key/value space) and topology attribution."""

    step: int
    neighbours: list[TokenNeighbours] | None
    merge_scale: list[float]
    h0: list[H0Component]
    h1: list[H1Loop]
    accuracy: float | None = None


@dataclass
class ExplainResult:
    """What :func:`explain_run` found. ``snapshots[0]`` is the start, ``snapshots[-1]`` the end.

    ``space`` is ``"vocabulary"`` when nearest tokens were computed, else ``"key_value"``
    (prefix tuning, P-tuning v2) or ``"other"`` (a prompt whose width is not the embedding's);
    ``note`` then says why there are no tokens.
    """

    run_dir: str
    name: str
    method: str
    base_model: str | None
    space: str
    top_k: int
    n_tokens: int
    dim: int
    snapshots: list[SnapshotExplain]
    note: str | None = None
    vocab_size: int | None = None
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def start(self) -> SnapshotExplain:
        return self.snapshots[0]

    @property
    def end(self) -> SnapshotExplain:
        return self.snapshots[-1]

    @property
    def gone_loops(self) -> list[H1Loop]:
        """H1 loops of the start snapshot that no end loop matches."""
        return [loop for loop in self.start.h1 if loop.survives is False]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain dicts, lists, strings and numbers (tuples become lists)."""
        return json.loads(json.dumps(asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainResult:
        snaps = []
        for s in data["snapshots"]:
            neighbours = (
                None
                if s.get("neighbours") is None
                else [TokenNeighbours(**t) for t in s["neighbours"]]
            )
            h0 = [H0Component(b["death"], tuple(b["edge"]), list(b["members"])) for b in s["h0"]]
            h1 = [
                H1Loop(
                    loop["birth"],
                    loop["death"],
                    tuple(loop["birth_edge"]),
                    tuple(loop["death_edge"]),
                    list(loop["cycle"]),
                    loop.get("survives"),
                )
                for loop in s["h1"]
            ]
            snaps.append(
                SnapshotExplain(
                    s["step"], neighbours, list(s["merge_scale"]), h0, h1, s.get("accuracy")
                )
            )
        keys = {f for f in cls.__dataclass_fields__ if f != "snapshots"}
        return cls(snapshots=snaps, **{k: v for k, v in data.items() if k in keys})


JSON_FIELDS: dict[str, str] = {
    "space": "vocabulary: nearest tokens computed; key_value: prefix tuning / P-tuning v2, no "
    "tokens (see note); other: prompt width differs from the embedding width",
    "snapshots": "the explained snapshots, start first and end last",
    "neighbours": "per virtual token: top_k vocabulary ids, decoded texts, raw tokens and "
    "cosine similarities to the base model's input embeddings (PGSPT projection)",
    "merge_scale": "per virtual token: its nearest-neighbour distance, where it stops being "
    "an H0 component of its own",
    "h0": "finite H0 bars, longest first: death (= lifespan), the MST edge that ends it, "
    "and the tokens of the dying component (the smaller one of the merge)",
    "h1": "H1 bars, most persistent first: birth, death, the edges that create and fill the "
    "loop, the tokens of a representative cycle, and (start snapshot) whether an end loop "
    "shares >= half of its tokens",
}


def in_key_value_space(method: str) -> bool:
    """Whether a run of ``method`` (a ``peft.method`` name) has a key/value prompt, with no
    nearest tokens; read from the prompt-method table when asked, so a method registered after
    import counts (an unknown name: False, its vectors are compared with the vocabulary's)."""
    return method in prompt_method_names() and not get_prompt_method(method).in_vocabulary_space


def _run_method(run_dir: Path) -> str:
    """The peft method: run.json, else the adapter config, else the recipe."""
    method = read_run(run_dir, strict=False).get("method")
    if isinstance(method, str) and method:
        return method
    cfg = read_json_dict(adapter_dir(run_dir) / ADAPTER_CONFIG_FILE)
    entry = method_of(cfg, missing_ok=True)
    if entry is not None:
        return entry.name
    if (run_dir / RECIPE_FILE).is_file():
        return str(load_run_recipe(run_dir).peft.method)
    return "unknown"


def explain_prompt(
    prompt: np.ndarray,
    *,
    step: int = 0,
    vocab: Vocabulary | None = None,
    top_k: int = 5,
    accuracy: float | None = None,
) -> SnapshotExplain:
    """Explain one prompt matrix: nearest tokens (when ``vocab`` is given) and topology."""
    P = np.asarray(prompt, dtype=np.float64)
    D = distance_matrix(P)
    neighbours = None
    if vocab is not None:
        ids, cos = nearest_tokens(P, vocab.embeddings, top_k)
        neighbours = [
            TokenNeighbours(
                index=i,
                ids=[int(t) for t in row_ids],
                texts=[vocab.text(t) for t in row_ids],
                tokens=[vocab.raw(t) for t in row_ids],
                cosines=[float(c) for c in row_cos],
            )
            for i, (row_ids, row_cos) in enumerate(zip(ids, cos, strict=True))
        ]
    merge_scale, h0 = h0_components(D)
    return SnapshotExplain(int(step), neighbours, merge_scale, h0, h1_loops(D), accuracy)


def explain_run(
    run_dir: PathLike,
    *,
    top_k: int = 5,
    steps: Sequence[int] | None = None,
    vocab: Vocabulary | None = None,
) -> ExplainResult:
    """Explain a run's prompt at its first and last saved snapshot (or at ``steps``).

    Args:
        run_dir: a run folder (``topology/records.jsonl`` with saved prompt arrays).
        top_k: nearest vocabulary tokens per virtual token.
        steps: recorded steps to explain, in the order given (first = start, last = end);
            default: the first and the last snapshot with a saved prompt.
        vocab: the base model's embeddings and tokenizer, if already loaded; otherwise the
            base model named by the run's recipe is loaded (and only its embeddings kept).
            Not loaded at all for prefix tuning / P-tuning v2.

    Raises:
        MissingFileError: no records, or no saved prompt arrays (``save_prompts=False``).
        ConfigError: a step in ``steps`` was not recorded.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise MissingFileError(f"run folder {run} does not exist.")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"top_k must be a positive int, got {top_k!r}.")
    records = [r for r in read_records(run) if r.get("prompt_file")]
    if not records:
        raise MissingFileError(
            f"{run}/topology has no saved prompt arrays, so there is nothing to explain; train "
            "with PersistenceCallback(save_prompts=True) (the default)."
        )
    if steps is None:
        chosen = [records[0], records[-1]] if len(records) > 1 else [records[0]]
    else:
        by_step = {r["step"]: r for r in records}
        missing = [int(s) for s in steps if int(s) not in by_step]
        if missing or not list(steps):
            raise ConfigError(
                f"no saved prompt at step(s) {missing or steps}; steps with a saved prompt "
                f"are {sorted(by_step)}."
            )
        chosen = [by_step[int(s)] for s in steps]
    prompts = [load_prompt(run, r) for r in chosen]
    n, dim = prompts[0].shape
    info = read_run(run, strict=False)
    method = _run_method(run)

    note = None
    if in_key_value_space(method):
        space = "key_value"
        note = PREFIX_NOTE.format(method=method.replace("_", " "), dim=dim)
        vocab = None
    else:
        if vocab is None:
            vocab = load_vocabulary(run)
        space = "vocabulary"
        if vocab.embeddings.shape[1] != dim:
            space = "other"
            note = (
                f"the prompt vectors have {dim} dimensions but the base model's input "
                f"embeddings have {vocab.embeddings.shape[1]}, so they are not in the "
                "vocabulary's space and have no nearest tokens."
            )
            vocab = None
    snapshots = [
        explain_prompt(P, step=r["step"], vocab=vocab, top_k=top_k, accuracy=r.get("accuracy"))
        for r, P in zip(chosen, prompts, strict=True)
    ]
    ends = snapshots[-1].h1
    for loop in snapshots[0].h1:
        loop.survives = any(_jaccard(loop.cycle, e.cycle) >= LOOP_MATCH for e in ends)
    return ExplainResult(
        run_dir=str(run),
        name=str(info.get("name") or run.resolve().name),
        method=method,
        base_model=info.get("base_model"),
        space=space,
        top_k=top_k,
        n_tokens=int(n),
        dim=int(dim),
        snapshots=snapshots,
        note=note,
        vocab_size=None if vocab is None else int(vocab.embeddings.shape[0]),
        fields=JSON_FIELDS,
    )


# --- renderings -----------------------------------------------------------------------------

_md = markdown_escape


def neighbour_text(neigh: TokenNeighbours, top: int | None = None) -> str:
    """``"the" 0.41, "cat" 0.38`` (plain text; escape it for the target format): the card's
    wording (:func:`hf_tsprompt.cards.neighbours_text`)."""
    return neighbours_text(neigh.texts, neigh.cosines, top)


def _members(members: Sequence[int]) -> str:
    return f"token {members[0]}" if len(members) == 1 else f"tokens {list(members)}"


def explain_rows(
    result: ExplainResult | PathLike, top: int | None = 3
) -> list[tuple[int, str, str]]:
    """``(virtual token, start neighbours, end neighbours)`` for the model card's table,
    Markdown-escaped; ``top`` tokens per cell (None: all). ``result`` may be a run folder: its
    ``explain.json`` is read, and a folder without one gives no rows. Empty also when the
    prompt has no nearest tokens (prefix tuning). The card reads a run folder's rows with
    :func:`hf_tsprompt.cards.explain_table_rows`, which gives the same rows."""
    if not isinstance(result, ExplainResult):
        return explain_table_rows(result, top)
    start, end = result.start.neighbours, result.end.neighbours
    if start is None or end is None:
        return []
    return [
        (s.index, _md(neighbour_text(s, top)), _md(neighbour_text(e, top)))
        for s, e in zip(start, end, strict=True)
    ]


def _loop_text(loop: H1Loop) -> str:
    return (
        f"[{loop.birth:.4g}, {loop.death:.4g}) cycle {' - '.join(map(str, loop.cycle))} "
        f"(filled by edge {loop.death_edge[0]}-{loop.death_edge[1]})"
    )


def format_explain(result: ExplainResult, *, max_bars: int = 5) -> str:
    """The terminal rendering of :func:`explain_run`'s result."""
    start, end = result.start, result.end
    lines = [
        f"Run {result.name}: {result.method}, {result.n_tokens} virtual tokens, "
        f"dimension {result.dim}, base model {result.base_model or 'unknown'}",
        f"Snapshots: step {start.step} (start) and step {end.step} (end)",
        "",
    ]
    if result.note:
        lines += [f"No nearest tokens: {result.note}", ""]
    elif start.neighbours is not None and end.neighbours is not None:
        lines.append(
            f"Nearest vocabulary tokens by cosine similarity (PGSPT projection), top "
            f"{result.top_k} of {result.vocab_size}:"
        )
        for s, e in zip(start.neighbours, end.neighbours, strict=True):
            lines.append(f"  [{s.index:>3}] start: {neighbour_text(s)}")
            lines.append(f"        end:   {neighbour_text(e)}")
        lines.append("")
    for label, snap in (("start", start), ("end", end)):
        lines.append(
            f"H0 at the {label} (step {snap.step}): longest-lived components (most isolated):"
        )
        for bar in snap.h0[:max_bars]:
            lines.append(f"  dies at {bar.death:.4g}: {_members(bar.members)}")
        if not snap.h0:
            lines.append("  (a single point: no finite bar)")
        lines.append(f"H1 at the {label}: {len(snap.h1)} loop(s)")
        for loop in snap.h1[:max_bars]:
            flag = "" if loop.survives is None else (" kept" if loop.survives else " GONE")
            lines.append(f"  {_loop_text(loop)}{flag}")
        lines.append("")
    gone = result.gone_loops
    lines.append(
        f"Loops of the start gone at the end: {len(gone)} of {len(start.h1)}"
        + (
            ": " + "; ".join("tokens " + " - ".join(map(str, g.cycle)) for g in gone)
            if gone
            else ""
        )
    )
    return "\n".join(lines)


def format_markdown(result: ExplainResult, *, max_bars: int = 10) -> str:
    """``explain.md``: the same content as Markdown tables."""
    start, end = result.start, result.end
    out = [
        f"# What the prompt reads like: {_md(result.name)}",
        "",
        f"{_md(result.method)}, {result.n_tokens} virtual tokens of dimension {result.dim}; "
        f"base model {_md(str(result.base_model))}; snapshots at step {start.step} (start) and "
        f"step {end.step} (end).",
        "",
        "## Nearest vocabulary tokens",
        "",
    ]
    rows = explain_rows(result, top=None)
    if rows:
        out += [
            "Cosine similarity to the base model's input embeddings (the projection of PGSPT, "
            "Liou et al. 2025).",
            "",
            "| token | start | end |",
            "|---:|---|---|",
        ]
        out += [f"| {i} | {s} | {e} |" for i, s, e in rows]
    else:
        out.append(_md(result.note or "not available"))
    for label, snap in (("start", start), ("end", end)):
        out += [
            "",
            f"## Topology at the {label} (step {snap.step})",
            "",
            "H0 bars, longest first (the tokens of the component that dies):",
            "",
            "| death | MST edge | tokens |",
            "|---:|---|---|",
        ]
        out += [
            f"| {b.death:.4g} | {b.edge[0]}-{b.edge[1]} | {', '.join(map(str, b.members))} |"
            for b in snap.h0[:max_bars]
        ]
        out += ["", f"H1 loops ({len(snap.h1)}), most persistent first:", ""]
        if snap.h1:
            out += ["| birth | death | cycle | survives |", "|---:|---:|---|---|"]
            out += [
                f"| {loop.birth:.4g} | {loop.death:.4g} | {' - '.join(map(str, loop.cycle))} | "
                f"{'' if loop.survives is None else ('yes' if loop.survives else 'no')} |"
                for loop in snap.h1[:max_bars]
            ]
    out += ["", f"Loops of the start gone at the end: {len(result.gone_loops)} of {len(start.h1)}."]
    return "\n".join(out) + "\n"


def save_explain(result: ExplainResult, run_dir: PathLike | None = None) -> tuple[Path, Path]:
    """Write ``<run>/explain.json`` and ``<run>/explain.md`` (atomically); their paths."""
    run = Path(run_dir) if run_dir is not None else Path(result.run_dir)
    js = atomic_write_json(run / EXPLAIN_JSON, result.to_dict())
    md = atomic_write_text(run / EXPLAIN_MD, format_markdown(result))
    return js, md


def load_explain(run_dir: PathLike) -> ExplainResult:
    """Read ``<run>/explain.json`` back."""
    file = Path(run_dir) / EXPLAIN_JSON
    if not file.is_file():
        raise MissingFileError(f"{file} does not exist; run `hf-tsprompt explain {run_dir}`.")
    try:
        return ExplainResult.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunFolderError(f"{file} is corrupt ({err}); run explain again.") from None
