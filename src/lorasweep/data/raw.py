"""Raw splits: shipped, hub or local files, cut to max_*_examples, with the configured columns and labels checked.

Split names accept the `datasets` slice syntax ("train[:95%]", "train[-500:]"), so a source with one split
(alpaca) can still give a held-out eval split.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

import datasets

from ..choices import require_choice
from ..errors import UserError, one_line

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
FORMAT_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_raw_splits(data_cfg) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) as loaded, cut to max_*_examples, with the style's columns and the labels checked."""
    from .labels import check_labels, label_names
    from .styles import required_columns  # styles name the columns each row shape reads

    require_choice("data.task", data_cfg.task)
    splits = _load_source(data_cfg)
    out = []
    for key, limit in (("train_split", data_cfg.max_train_examples), ("eval_split", data_cfg.max_eval_examples)):
        spec = getattr(data_cfg, key)
        ds = _first_rows(_select(splits, spec, f"data.{key}"), limit, key)
        if len(ds) == 0:
            raise UserError(f"split {spec!r} (data.{key}) of {data_cfg.path} is empty")
        _check_columns(ds, required_columns(data_cfg), spec)
        out.append(ds)
    if data_cfg.task != "causal_lm":
        names = label_names(data_cfg, out[0])
        for ds, key in zip(out, ("train_split", "eval_split")):
            check_labels(ds, data_cfg, data_cfg[key], names)
    return out[0], out[1]


def _load_source(cfg) -> datasets.DatasetDict:
    require_choice("data.source", cfg.source)
    if cfg.source in ("shipped", "local"):
        fmt, files = _data_files(cfg)
        empty = next((f for fs in files.values() for f in fs if os.path.getsize(f) == 0), None)
        if empty is not None:
            raise UserError(f"data file {empty} is empty")
        try:
            return datasets.load_dataset(fmt, data_files=files)
        except datasets.exceptions.DatasetGenerationError as exc:  # the reader's own error is the cause
            cause = exc.__cause__ or exc
            raise UserError(f"cannot read {cfg.path} as {fmt}: {one_line(cause, 300)}") from None
    local = _local_dir(cfg.path)
    if local is None and cfg.path.startswith((".", "/", "~")):
        raise UserError(f"data path not found: {cfg.path}")
    where = f"{cfg.path!r}" + (f" (config {cfg.hub_config!r})" if cfg.hub_config else "")
    try:  # a hub id, or a local directory in hub layout (a snapshot): the same call
        return datasets.load_dataset(str(local or cfg.path), cfg.hub_config)
    except (OSError, ValueError) as exc:  # offline and not cached, no such repo, unknown config
        raise UserError(f"cannot load dataset {where}: {str(exc).splitlines()[0]}") from None


def _local_dir(path: str) -> Path | None:
    local = Path(path).expanduser()
    return local if local.is_dir() else None


def _split_names(spec: str) -> list[str]:
    """Base split names in a split spec: "train[:90%]+validation" -> [train, validation]."""
    return [re.sub(r"\[.*?\]", "", part).strip() for part in spec.split("+")]


def _data_files(cfg) -> tuple[str, dict[str, list[str]]]:
    """(format, {split: files}) for the splits that train_split and eval_split name (shipped and local)."""
    needed = list(dict.fromkeys(_split_names(cfg.train_split) + _split_names(cfg.eval_split)))
    if cfg.source == "shipped":
        root = DATASETS_DIR / cfg.path
        if not root.is_dir():
            shipped = sorted(p.name for p in DATASETS_DIR.iterdir() if p.is_dir())
            raise UserError(f"data path not found: {root} (shipped datasets: {', '.join(shipped)})")
        return "json", _files_in_dir(root, "json", needed)
    path = os.path.expanduser(cfg.path)
    if os.path.isdir(path):
        files = _files_in_dir(Path(path), cfg.format, needed)
    elif "{split}" in path:  # one pattern for all splits: data/{split}-*.parquet
        files = {s: sorted(glob.glob(path.replace("{split}", s))) for s in needed}
        missing = [s for s, found in files.items() if not found]
        if missing:
            found = sorted(glob.glob(path.replace("{split}", "*")))
            if not found:
                raise UserError(f"data path not found: {path}")
            pattern = re.escape(path).replace(r"\{split\}", "([^/]+?)")
            pattern = pattern.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")  # the glob, as a regex
            available = sorted({m.group(1) for f in found if (m := re.fullmatch(pattern, f))})
            raise UserError(
                f"split {missing[0]!r} not found: no file matches {path}; available splits: {', '.join(available)}"
            )
    else:  # one file or pattern: like datasets, it is the split "train"
        found = sorted(glob.glob(path))
        if not found:
            raise UserError(f"data path not found: {path}")
        files = {"train": found}
        if any(s != "train" for s in needed):
            raise UserError(
                f"split {[s for s in needed if s != 'train'][0]!r} not found: {path} is one split, "
                "'train'; available splits: train (slice it, e.g. data.eval_split='train[-500:]')"
            )
    return _format(cfg.format, [f for fs in files.values() for f in fs]), files


def _files_in_dir(root: Path, fmt: str | None, needed: list[str]) -> dict[str, list[str]]:
    """<split>.<ext> or sharded <split>-*.<ext> files in root."""
    suffixes = [s for s, f in FORMAT_SUFFIXES.items() if fmt in (None, f)]
    candidates = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in suffixes)
    files = {}
    for split in needed:
        files[split] = [str(p) for p in candidates if p.stem == split or p.stem.startswith(f"{split}-")]
        if not files[split]:
            available = sorted({p.stem.split("-")[0] for p in candidates})
            raise UserError(f"split {split!r} not found in {root}; available splits: {', '.join(available) or 'none'}")
    return files


def _format(fmt: str | None, files: list[str]) -> str:
    if fmt is not None:
        if fmt not in ("json", "parquet", "csv"):
            raise UserError(f"data.format must be one of json, parquet, csv; got {fmt!r}")
        return fmt
    kinds = {FORMAT_SUFFIXES.get(Path(f).suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise UserError(f"cannot tell the format of {files[0]}; set data.format to json, parquet or csv")
    return kinds.pop()


def _select(splits: datasets.DatasetDict, spec: str, key: str) -> datasets.Dataset:
    missing = [s for s in _split_names(spec) if s not in splits]
    if missing:
        raise UserError(f"split {missing[0]!r} ({key}) not found; available splits: {', '.join(sorted(splits))}")
    try:
        parts = datasets.ReadInstruction.from_spec(spec).to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError) as exc:
        raise UserError(f"{key}={spec!r} is not a split or a slice like train[:90%]: {exc}") from None
    chosen = [
        splits[p.splitname]
        if (p.from_, p.to) == (0, len(splits[p.splitname]))
        else splits[p.splitname].select(range(p.from_, p.to))
        for p in parts
    ]
    return chosen[0] if len(chosen) == 1 else datasets.concatenate_datasets(chosen)


def _first_rows(ds: datasets.Dataset, limit: int | None, key: str) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    if limit <= 0:
        raise UserError(f"data.max_{key.split('_')[0]}_examples must be > 0, got {limit}")
    return ds.select(range(limit))


def _check_columns(ds: datasets.Dataset, columns: dict[str, str], split: str) -> None:
    """columns: {config key: column name}; the first one missing is named with the columns there are."""
    for key, column in columns.items():
        if column not in ds.column_names:
            raise UserError(
                f"column {column!r} ({key}) not found in split {split!r}; "
                f"available columns: {', '.join(ds.column_names)}"
            )


def source_files(cfg) -> list[str] | None:
    """The files the splits are read from (shipped, local, or a hub-layout directory), sorted; None for a hub id.
    Also what a run's inputs fingerprint hashes (config/fingerprints.py)."""
    if cfg.source in ("shipped", "local"):
        return sorted({f for fs in _data_files(cfg)[1].values() for f in fs})
    local = _local_dir(cfg.path)
    if local is None:
        return None
    return sorted(str(p) for p in local.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _source_hash(cfg) -> str | None:
    """Content hash of the source files: editing a file invalidates the cache. None for a hub id."""
    files = source_files(cfg)
    if files is None:
        return None
    digest = hashlib.sha256()
    for name in files:
        digest.update(os.path.basename(name).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
