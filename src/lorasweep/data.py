"""Data: raw splits (shipped, hub or local files), tokenisation cached on disk by fingerprint, and the collator.

Split names accept the `datasets` slice syntax ("train[:95%]", "train[-500:]"), so a source with one split
(alpaca) can still give a held-out eval split.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import datasets
import torch

from .choices import require_choice
from .errors import UserError
from .fileio import atomic_directory

DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
IGNORE = -100  # label that the loss skips
SFT_SEPARATOR = "\n### Response:\n"  # between prompt and response; counted as prompt (no loss)
CACHE_VERSION = 1  # bump when tokenisation changes, so old cache entries are not reused
FORMAT_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# DataConfig fields that change what tokenized_splits returns (name is only a label).
FINGERPRINT_FIELDS = (
    "task",
    "source",
    "path",
    "hub_config",
    "format",
    "train_split",
    "eval_split",
    "text_field",
    "label_field",
    "num_labels",
    "prompt_field",
    "response_field",
    "max_length",
    "max_train_examples",
    "max_eval_examples",
)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- raw splits
def load_raw_splits(data_cfg) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) as loaded, cut to max_*_examples, with the configured columns and labels checked."""
    require_choice("data.task", data_cfg.task)
    splits = _load_source(data_cfg)
    out = []
    for key, limit in (("train_split", data_cfg.max_train_examples), ("eval_split", data_cfg.max_eval_examples)):
        spec = getattr(data_cfg, key)
        ds = _first_rows(_select(splits, spec, f"data.{key}"), limit, key)
        _check_columns(ds, data_cfg, spec)
        if data_cfg.task == "classification":
            _check_labels(ds, data_cfg, spec)
        out.append(ds)
    return out[0], out[1]


def _load_source(cfg) -> datasets.DatasetDict:
    require_choice("data.source", cfg.source)
    if cfg.source in ("shipped", "local"):
        fmt, files = _data_files(cfg)
        return datasets.load_dataset(fmt, data_files=files)
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


def _check_columns(ds: datasets.Dataset, cfg, split: str) -> None:
    keys = ("text_field", "label_field") if cfg.task == "classification" else ("prompt_field", "response_field")
    for key in keys:
        column = getattr(cfg, key)
        if column not in ds.column_names:
            raise UserError(
                f"column {column!r} (data.{key}) not found in split {split!r}; "
                f"available columns: {', '.join(ds.column_names)}"
            )


def _check_labels(ds: datasets.Dataset, cfg, split: str) -> None:
    n = cfg.num_labels
    bad = [v for v in ds.unique(cfg.label_field) if type(v) is not int or not 0 <= v < n]
    if bad:
        shown = ", ".join(repr(v) for v in sorted(bad, key=repr)[:5])
        raise UserError(
            f"labels outside [0, {n}) in split {split!r} (data.label_field={cfg.label_field!r}, "
            f"data.num_labels={n}): {shown}"
        )


# ---------------------------------------------------------------- tokenisation and its cache
def tokenized_splits(data_cfg, tokenizer, cache_dir: str | Path) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) with input_ids, attention_mask, labels; from cache_dir/<fingerprint>/ when present."""
    key = fingerprint(data_cfg, tokenizer)
    final = Path(cache_dir) / key
    if final.is_dir():  # it only appears by an atomic rename, so it is complete
        log.info("tokenized data from cache %s", final)
    else:
        train, eval_ = load_raw_splits(data_cfg)
        encoded = datasets.DatasetDict(
            train=_tokenize(train, data_cfg, tokenizer, f"{key}-train"),
            eval=_tokenize(eval_, data_cfg, tokenizer, f"{key}-eval"),
        )
        _save_atomic(encoded, final)
    loaded = datasets.load_from_disk(str(final))  # the same objects on a miss and a hit
    return loaded["train"], loaded["eval"]


def fingerprint(data_cfg, tokenizer) -> str:
    record = {
        "version": CACHE_VERSION,
        "data": {k: getattr(data_cfg, k) for k in FINGERPRINT_FIELDS},
        "tokenizer": tokenizer_identity(tokenizer),
        "files": _source_hash(data_cfg),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_identity(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)  # call state that tokenising changes
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(tokenizer.name_or_path),
        "size": len(tokenizer),
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id],
        "sha256": hashlib.sha256(blob.encode()).hexdigest(),
    }


def _source_hash(cfg) -> str | None:
    """Content hash of the source files: editing a file invalidates the cache. None for a hub id."""
    if cfg.source in ("shipped", "local"):
        files = sorted({f for fs in _data_files(cfg)[1].values() for f in fs})
    else:
        local = _local_dir(cfg.path)
        if local is None:
            return None
        files = sorted(str(p) for p in local.rglob("*") if p.is_file() and ".cache" not in p.parts)
    digest = hashlib.sha256()
    for name in files:
        digest.update(os.path.basename(name).encode() + b"\0")
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _save_atomic(encoded: datasets.DatasetDict, final: Path) -> None:
    """A reader never sees half a cache entry; if another process published the same entry first, keep it."""
    with atomic_directory(final, replace=False) as tmp:
        encoded.save_to_disk(str(tmp))


def _tokenize(ds: datasets.Dataset, cfg, tokenizer, tag: str) -> datasets.Dataset:
    encode = _encode_classification if cfg.task == "classification" else _encode_sft
    # In memory and uncached: our own cache is the only one (and datasets cannot hash a tokenizer anyway).
    return ds.map(
        lambda batch: encode(batch, cfg, tokenizer),
        batched=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=tag,
        desc="tokenizing",
    )


def _encode_classification(batch: dict, cfg, tokenizer) -> dict:
    enc = tokenizer(list(batch[cfg.text_field]), truncation=True, max_length=cfg.max_length)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": list(batch[cfg.label_field]),
    }


def end_token(tokenizer) -> int:
    """The token that ends a response (trained on in SFT; where generation stops)."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has neither an eos nor a sep token to end responses")
    return end


def sft_prompt_ids(prompts: list[str], tokenizer) -> list[list[int]]:
    """Each prompt's token ids as SFT trains on them and generation (predict.py) starts from: BOS where the
    model has its own (Llama-style; GPT-2's BOS is its EOS), the prompt, then SFT_SEPARATOR."""
    end, bos = end_token(tokenizer), tokenizer.bos_token_id
    prefix = [bos] if bos is not None and bos != end else []
    encoded = tokenizer([p + SFT_SEPARATOR for p in prompts], add_special_tokens=False)["input_ids"]
    return [prefix + ids for ids in encoded]


def _encode_sft(batch: dict, cfg, tokenizer) -> dict:
    """prompt + separator (labels -100) then response + eos (labels = ids). Prompt and response are tokenised
    apart so the boundary is exact; rows whose response is cut off entirely are dropped (nothing to learn)."""
    end = end_token(tokenizer)
    prompts = sft_prompt_ids(list(batch[cfg.prompt_field]), tokenizer)
    responses = tokenizer(list(batch[cfg.response_field]), add_special_tokens=False)["input_ids"]
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, r in zip(prompts, responses):
        response = r + [end]
        ids = (prompt + response)[: cfg.max_length]
        if len(ids) <= len(prompt):
            continue
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(([IGNORE] * len(prompt) + response)[: cfg.max_length])
    return out


# ---------------------------------------------------------------- batching
def make_collator(task: str, tokenizer) -> "Collator":
    require_choice("data.task", task)
    candidates = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id)
    pad = next((t for t in candidates if t is not None), 0)  # no pad token (GPT-2): eos; padding is masked
    return Collator(task, pad)


class Collator:
    """Pads to the longest example in the batch (right side)."""

    def __init__(self, task: str, pad_id: int):
        self.task, self.pad_id = task, pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        shape = (len(examples), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long) if self.task == "causal_lm" else None
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            attention_mask[i, :n] = torch.as_tensor(e["attention_mask"], dtype=torch.long)
            if labels is not None:
                labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
        if labels is None:
            labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
