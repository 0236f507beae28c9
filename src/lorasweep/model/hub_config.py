"""Where a model's architecture (its transformers config, no weights) comes from, offline first.

Tiny models and the packaged MiniLM carry theirs; a local directory has its config.json; a hub id is looked
up among the architectures shipped here (the public `config.json` dimensions of a few large models, so a
7B-70B config can be estimated on a laptop), then in the local hub cache (never the network).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

SHIPPED_DIR = Path(__file__).resolve().parent / "known_configs"


def shipped_architectures() -> dict[str, Path]:
    """{hub id: shipped config file}; each file names the hub ids it stands for (`_hub_ids`)."""
    found = {}
    for path in sorted(SHIPPED_DIR.glob("*.json")):
        for hub_id in json.loads(path.read_text()).get("_hub_ids", []):
            found[hub_id] = path
    return found


def architecture_config(model_cfg, missing_ok: bool = False):
    """The transformers config for `model_cfg`, or a one-line UserError naming what to provide. `missing_ok`: a hub
    id found neither shipped nor in the cache gives None (preflight: a run online fetches it; its load decides)."""
    from transformers import AutoConfig

    from .load import TINY_CONFIGS, packaged_minilm_dir

    if model_cfg.source == "tiny":
        if model_cfg.arch not in TINY_CONFIGS:
            raise UserError(
                f"no tiny config for model.arch={model_cfg.arch!r}: expected one of {', '.join(TINY_CONFIGS)}"
            )
        return AutoConfig.for_model(model_cfg.arch, **TINY_CONFIGS[model_cfg.arch])
    path = packaged_minilm_dir() if model_cfg.source == "packaged" else model_cfg.name_or_path
    if path is None:
        raise UserError(f"model.name_or_path is required for model.source={model_cfg.source}")
    local = Path(str(path)).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"no config.json in {local} (model.name_or_path): the estimate needs the architecture")
        return AutoConfig.from_pretrained(str(local))
    if str(path).startswith((".", "/", "~")):
        raise UserError(f"model path not found: {local} (model.name_or_path)")
    shipped = shipped_architectures().get(str(path))
    if shipped is not None:
        data = {k: v for k, v in json.loads(shipped.read_text()).items() if not k.startswith("_")}
        return AutoConfig.for_model(data.pop("model_type"), **data)
    try:  # the hub cache only: an estimate never waits on the network
        return AutoConfig.from_pretrained(str(path), revision=model_cfg.revision, local_files_only=True)
    except (OSError, ValueError):
        if missing_ok:
            return None
        known = ", ".join(f"model={p.stem}" for p in sorted(set(shipped_architectures().values())))
        raise UserError(
            f"architecture of {path!r} not found offline: set model.name_or_path to a directory "
            f"holding its config.json (weights not needed), or a shipped architecture: {known}"
        ) from None
