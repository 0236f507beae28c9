"""Hydra composition, done once per distinct set of config-group choices.

A sweep worker composes a config per trial, and Hydra's compose costs about 0.3 s (reading and merging every
YAML of the defaults list) — most of a short trial's fixed cost. Overrides are of two kinds: group choices
(`lora=all`, `trainer=smoke`, `+experiment=x`) decide which files are merged; value overrides (`lora.rank=4`,
`seed=3`) are applied to the merged result afterwards, which is also what Hydra itself does. So the merged
config is kept per (group choices, config folders and their files' mtimes) and the value overrides are applied
to a copy with Hydra's own override code: the result, and so the config hash, is the same as a full compose
(tests/test_composition.py checks that over many random override sets).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from omegaconf import DictConfig

from .. import internals
from ..errors import UserError, one_line
from ..sources import CONF_DIR, user_config_dirs

_MERGED: dict[tuple, DictConfig] = {}
_MAX_ENTRIES = 64


def compose_overrides(overrides: list[str], config_dir: str | Path | None = None) -> DictConfig:
    """The composed (not yet validated) config; Hydra's and OmegaConf's errors become one-line UserErrors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        folders = [*user_config_dirs(config_dir), CONF_DIR]
        groups, values = _split(list(overrides), folders)
        key = (tuple(groups), _fingerprint(folders))
        merged = _MERGED.get(key)
        if merged is None:
            merged = internals.hydra_compose(groups, internals.hydra_search_path(folders[:-1]))
            if len(_MERGED) >= _MAX_ENTRIES:
                _MERGED.clear()
            _MERGED[key] = merged
        cfg = copy.deepcopy(merged)
        internals.hydra_apply_value_overrides(values, cfg)
        return cfg
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(describe(exc)) from exc


def _split(overrides: list[str], folders: list[Path]) -> tuple[list[str], list[str]]:
    """(group choices, value overrides), each in the order given. A group is a folder of YAML files in a config
    folder; `key@package=...` and deletions (`~key`) also go to Hydra's defaults list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups_known = {p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_dir()}
    parsed = OverridesParser.create().parse_overrides(overrides)
    groups, values = [], []
    for line, override in zip(overrides, parsed):
        is_group = override.key_or_group.split("/")[0] in groups_known or override.package is not None
        (groups if is_group or override.is_delete() else values).append(line)
    return groups, values


def _fingerprint(folders: list[Path]) -> tuple:
    """What a cached merge depends on besides the group choices: which files exist and when they changed."""
    files = []
    for folder in folders:
        if folder.is_dir():
            files += [(str(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*.yaml"))]
    return tuple(files)


def describe(exc: BaseException) -> str:
    """Hydra puts the useful part (which key, which type) in the exception's cause: one line with both."""
    parts: list[str] = []
    while exc is not None:
        text = one_line(exc)
        text = re.sub(r"\. To append to your config use \S+", "", text)  # adding keys is refused: no hint
        if text and text not in parts:
            parts.append(text)
        exc = exc.__cause__
    return ": ".join(parts) + _package_hint(parts)


def _package_hint(parts: list[str]) -> str:
    """A group file merged at its own group's key (`local: ...`) means a missing `# @package _global_` line."""
    match = re.search(r"In '(local|experiment)/([^']+)'.*Key '\1' not in", " ".join(parts))
    if not match:
        return ""
    return (
        f" (hint: {match.group(1)}/{match.group(2)}.yaml sets keys of the whole config, so its first line "
        f"must be `# @package _global_`)"
    )
