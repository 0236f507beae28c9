"""`lorasweep reproduce HASH`: rerun a stored run from its config alone and check the result.

The stored resolved config is recomposed against the CURRENT schema (a key that no longer exists is named),
rerun into runs/<hash>/reproductions/<n>/, and every final metric is compared: on CPU the deterministic ones
must be bitwise equal; on GPU they are compared against a tolerance. Environment drift (versions, commit,
device) is reported against the stored env.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import TrainConfig, config_hash, validate
from .runstore import RunDir, RunStore, deterministic_metrics
from .tracking import NullTracker

ENV_KEYS = ("python", "torch", "transformers", "lorasweep", "git_commit", "device", "num_processes")


def recompose(stored: dict | DictConfig, source: str = "stored config") -> DictConfig:
    """A stored resolved config, checked against today's schema: ValueError naming a key that does not fit."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), stored)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ValueError(f"{source} no longer composes with the current schema (key {key}): "
                         f"{' '.join(str(exc).split()[:12])}") from None
    validate(cfg)
    return cfg


@dataclass
class Comparison:
    rows: list[tuple[str, object, object, bool]] = field(default_factory=list)  # metric, original, rerun, ok
    drift: list[tuple[str, object, object]] = field(default_factory=list)
    exact: bool = True

    @property
    def matches(self) -> bool:
        return all(ok for *_, ok in self.rows)


def compare_metrics(original: dict, rerun: dict, tolerance: float | None) -> Comparison:
    """Deterministic metrics: bitwise equal (tolerance None) or within a relative tolerance."""
    result = Comparison(exact=tolerance is None)
    for key in sorted(deterministic_metrics(original)):
        a, b = original[key], rerun.get(key)
        if tolerance is None or not isinstance(a, float) or b is None:
            ok = a == b
        else:
            ok = math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
        result.rows.append((key, a, b, ok))
    return result


def env_drift(original: dict, current: dict) -> list[tuple[str, object, object]]:
    return [(k, original.get(k), current.get(k)) for k in ENV_KEYS if original.get(k) != current.get(k)]


def next_reproduction_dir(run: RunDir) -> Path:
    base = run.path / "reproductions"
    taken = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return base / str(max(taken, default=0) + 1)


def reproduce(hash_prefix: str, run_root: str | Path = "runs", tolerance: float | None = None,
              stored_config: dict | None = None) -> tuple[Comparison, Path, dict]:
    """Rerun the run named by `hash_prefix` (or by a config fetched elsewhere, e.g. from W&B)."""
    import torch

    from .train import train

    store = RunStore(run_root)
    if stored_config is None:
        run = store.find(hash_prefix)
        cfg = recompose(OmegaConf.to_container(run.config()), f"{run.config_file}")
        original = run.metrics() if run.is_complete() else None
        if original is None:
            raise ValueError(f"run {run.hash} is not complete (no metrics.json): nothing to compare against")
        original_env = run.env()
    else:
        stored_config = dict(stored_config)
        original, original_env = stored_config.pop("_metrics", {}), {}
        cfg = recompose(stored_config, f"W&B run {hash_prefix}")
        run = store.run(config_hash(cfg))
    digest = config_hash(cfg)
    if not digest.startswith(hash_prefix.lower()[: len(digest)]):
        raise ValueError(f"stored config hashes to {digest}, not {hash_prefix}: the canonical form changed")
    target = next_reproduction_dir(run)
    OmegaConf.update(cfg, "run_root", str(store.root), force_add=True)
    if tolerance is None and torch.cuda.is_available():
        tolerance = 1e-4  # GPU kernels are not bitwise reproducible across runs
    metrics = train(cfg, tracker=NullTracker(), run_dir=target, force=True)
    comparison = compare_metrics(original or {}, metrics, tolerance)
    comparison.drift = env_drift(original_env, RunDir(target).env())
    return comparison, target, metrics


def format_comparison(comparison: Comparison, target: Path) -> str:
    lines = [f"reproduction in {target}", f"{'metric':<34} {'original':>22} {'reproduction':>22}  match"]
    for key, a, b, ok in comparison.rows:
        lines.append(f"{key:<34} {a!r:>22} {b!r:>22}  {'yes' if ok else 'NO'}")
    if comparison.matches:
        lines.append("all metrics bitwise equal" if comparison.exact else "all metrics within tolerance")
    else:
        lines.append("metrics DIFFER")
    for key, a, b in comparison.drift:
        lines.append(f"environment drift: {key}: {a} -> {b}")
    return "\n".join(lines)


def fetch_wandb_config(entity_project: str, hash_prefix: str) -> dict:
    """The nested config of the W&B run whose config.config_hash is HASH (needs network and a login)."""
    import wandb

    try:
        runs = list(wandb.Api().runs(entity_project, filters={"config.config_hash": hash_prefix}))
    except wandb.errors.Error as exc:  # no API key, unknown project, no network: one line, not a traceback
        raise ValueError(f"W&B ({entity_project}): {' '.join(str(exc).split())}") from None
    if not runs:
        raise ValueError(f"no W&B run in {entity_project} with config_hash {hash_prefix}")
    flat = dict(runs[0].config)
    nested: dict = {}
    for key, value in flat.items():
        if key in ("config_hash", "model", "data"):
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    targets = nested.get("lora", {}).get("targets")
    if isinstance(targets, str) and targets.startswith("["):  # flat_config writes a list as "[a,b]"
        nested["lora"]["targets"] = targets.strip("[]").split(",")
    nested["_metrics"] = {k: v for k, v in dict(runs[0].summary).items() if not k.startswith("_")}
    return nested
