"""Tokenisation, cached on disk by fingerprint: the data config, the tokenizer (its chat template too) and the
source files' content. An entry holds both splits and info.json: the label names and what max_length dropped or
truncated, so a run that reads the cache reports the same counts as the run that wrote it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import UserError
from ..fileio import atomic_directory
from .labels import label_names
from .raw import _source_hash, load_raw_splits
from .styles import Encoding, style_of

CACHE_VERSION = 2  # bump when tokenisation changes, so old cache entries are not reused
# DataConfig fields that change what tokenisation returns (name is only a label).
FINGERPRINT_FIELDS = (
    "task",
    "style",
    "source",
    "path",
    "hub_config",
    "format",
    "train_split",
    "eval_split",
    "text_field",
    "text_pair_field",
    "label_field",
    "num_labels",
    "label_names",
    "prompt_field",
    "prompt_template",
    "response_field",
    "messages_field",
    "chat_template",
    "train_on",
    "max_length",
    "max_train_examples",
    "max_eval_examples",
)
INFO_NAME = "info.json"
_ENCODED: dict[str, tuple] = {}  # fingerprint -> (splits, info) checked by preflight, not yet saved
log = logging.getLogger(__name__)


@dataclass
class TokenizedData:
    train: datasets.Dataset
    eval: datasets.Dataset
    info: dict  # label_names, style, counts: {"train": {rows, truncated, dropped}, "eval": ...}


def tokenized_data(data_cfg, tokenizer, cache_dir: str | Path) -> TokenizedData:
    """Both splits with input_ids, attention_mask, labels (and the eval prompts of a causal LM), from
    cache_dir/<fingerprint>/ when present; bad rows fail here, before anything is written."""
    key = fingerprint(data_cfg, tokenizer)
    final = Path(cache_dir) / key
    if final.is_dir():  # it only appears by an atomic rename, so it is complete
        log.info("tokenized data from cache %s", final)
    else:
        encoded, info = _ENCODED.get(key) or encode_splits(data_cfg, tokenizer, key)
        with atomic_directory(final, replace=False) as tmp:  # another process may have published it first
            encoded.save_to_disk(str(tmp))
            (tmp / INFO_NAME).write_text(json.dumps(info, sort_keys=True))
    loaded = datasets.load_from_disk(str(final))  # the same objects on a miss and a hit
    return TokenizedData(loaded["train"], loaded["eval"], json.loads((final / INFO_NAME).read_text()))


def check_encoding(data_cfg, tokenizer, cache_dir: str | Path) -> None:
    """Every row encoded as tokenized_data would, writing nothing (preflight: bad input leaves no trace); the
    result is kept in memory for this process's run to save, so a run does not tokenise twice."""
    key = fingerprint(data_cfg, tokenizer)
    if key in _ENCODED or (Path(cache_dir) / key).is_dir():
        return
    while len(_ENCODED) >= 2:  # a sweep's workers check one data config after another: keep the newest
        _ENCODED.pop(next(iter(_ENCODED)))
    _ENCODED[key] = encode_splits(data_cfg, tokenizer, key)


def tokenized_splits(data_cfg, tokenizer, cache_dir: str | Path) -> tuple[datasets.Dataset, datasets.Dataset]:
    data = tokenized_data(data_cfg, tokenizer, cache_dir)
    return data.train, data.eval


def encode_splits(data_cfg, tokenizer, tag: str = "") -> tuple[datasets.DatasetDict, dict]:
    """(both splits encoded, info), in memory; one-line errors for labels, rows and templates."""
    train, eval_ = load_raw_splits(data_cfg)
    names = label_names(data_cfg, train)  # load_raw_splits checked every label against these
    counts, encoded = {}, {}
    for split, ds in (("train", train), ("eval", eval_)):
        prompts = split == "eval" and style_of(data_cfg) in ("prompt_response", "chat")  # eval_generate's prompts
        encoding = Encoding(data_cfg, tokenizer, names, with_prompts=prompts)
        encoded[split] = _map(ds, encoding, f"{tag}-{split}")
        counts[split] = {k: encoding.counts[k] for k in ("rows", "truncated", "dropped")}
        if len(encoded[split]) == 0:
            raise UserError(
                f"every row of the {split} split was dropped: no trained token within data.max_length="
                f"{data_cfg.max_length} ({counts[split]['rows']} rows); raise data.max_length"
            )
    info = {"label_names": names, "style": style_of(data_cfg), "counts": counts}
    return datasets.DatasetDict(encoded), info


def _map(ds: datasets.Dataset, encoding: Encoding, tag: str) -> datasets.Dataset:
    # In memory and uncached: our own cache is the only one (and datasets cannot hash a tokenizer anyway).
    return ds.map(
        encoding,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=tag or None,
        desc="tokenizing",
    )


def fingerprint(data_cfg, tokenizer) -> str:
    record = {
        "version": CACHE_VERSION,
        "data": {k: _plain(data_cfg.get(k)) for k in FINGERPRINT_FIELDS},
        "tokenizer": tokenizer_identity(tokenizer),
        "files": _source_hash(data_cfg),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def tokenizer_identity(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)  # call state that tokenising changes
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    template = getattr(tokenizer, "chat_template", None)
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(tokenizer.name_or_path),
        "size": len(tokenizer),
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id],
        "sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "chat_template": hashlib.sha256(str(template).encode()).hexdigest() if template else None,
    }
