"""`lorasweep reproduce HASH`: rerun a stored run from its config alone and check the result.

The stored resolved config is recomposed against the CURRENT schema (a key that no longer exists is named),
rerun into runs/<hash>/reproductions/<n>/, and every final metric is compared: on CPU the deterministic ones
must be bitwise equal; on GPU they are compared against a tolerance. Environment drift (versions, commit,
device) is reported against the stored env.json. Inputs that changed since the run (a data file, a model's
weights, a hub model's commit: inputs.json against the files now, config/fingerprints.py) are named, and nothing is
rerun: the rerun could not reproduce the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config.fingerprints import changes, fingerprint
from ..config.schema import TrainConfig, config_hash, validate
from ..errors import UserError, one_line
from ..lora.targets import parse_targets_label
from ..runs.metrics import deterministic_metrics
from ..runs.store import RunDir, RunStore
from ..tables import format_rows
from .tracking import NullTracker

ENV_KEYS = ("python", "torch", "transformers", "lorasweep", "git_commit", "device", "num_processes")


def recompose(stored: dict | DictConfig, source: str = "stored config") -> DictConfig:
    """A stored resolved config, checked against today's schema: ValueError naming a key that does not fit."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), stored)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(
            f"{source} no longer composes with the current schema (key {key}): {' '.join(str(exc).split()[:12])}"
        ) from None
    validate(cfg)
    return cfg


@dataclass
class Comparison:
    rows: list[tuple[str, object, object, bool]] = field(default_factory=list)  # metric, original, rerun, ok
    drift: list[tuple[str, object, object]] = field(default_factory=list)
    exact: bool = True
    tolerance: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return all(ok for *_, ok in self.rows)


def compare_metrics(original: dict, rerun: dict, tolerance: float | None) -> Comparison:
    """Deterministic metrics: bitwise equal (tolerance None) or within a relative tolerance."""
    result = Comparison(exact=tolerance is None, tolerance=tolerance)
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


def reproduce(
    hash_prefix: str, run_root: str | Path = "runs", tolerance: float | None = None, stored_config: dict | None = None
) -> tuple[Comparison, Path, dict]:
    """Rerun the run named by `hash_prefix` (or by a config fetched elsewhere, e.g. from W&B)."""
    import torch

    from .lifecycle import train

    store = RunStore(run_root)
    if stored_config is None:
        run = store.find(hash_prefix)
        cfg = recompose(OmegaConf.to_container(run.config()), f"{run.config_file}")
        original = run.metrics() if run.is_complete() else None
        if original is None:
            raise UserError(f"run {run.hash} is not complete (no metrics.json): nothing to compare against")
        original_env, recorded = run.env(), run.inputs()
    else:
        stored_config = dict(stored_config)
        original, original_env, recorded = stored_config.pop("_metrics", {}), {}, {}
        cfg = recompose(stored_config, f"W&B run {hash_prefix}")
    current = fingerprint(cfg)
    if stored_config is not None:
        run = store.run(config_hash(cfg, current))
    _check_hash(cfg, hash_prefix, recorded, current)
    changed = changes(recorded, current)
    if changed:
        raise UserError(f"cannot reproduce {run.hash}: {'; '.join(changed)} (nothing rerun)")
    target = next_reproduction_dir(run)
    OmegaConf.update(cfg, "run_root", str(store.root), force_add=True)
    if tolerance is None and torch.cuda.is_available():
        tolerance = 1e-4  # GPU kernels are not bitwise reproducible across runs
    recorded = int(original_env.get("num_processes") or 1)
    processes, notes = recorded, []
    if original and "packed_with" in original and tolerance is None:
        tolerance = PACKED_TOLERANCE
        notes.append(
            "trained in a pack (its base matmuls batched with other trials'), rerun alone: the rows are summed in "
            f"other blocks, so metrics are compared within relative tolerance {tolerance:g}"
        )
    if recorded > 1 and not can_launch(recorded):
        processes = 1
        if tolerance is None:
            tolerance = CROSS_COUNT_TOLERANCE
        notes.append(
            f"trained with {recorded} processes, rerun with 1 (this machine cannot launch {recorded}): "
            f"gradients are reduced in another order, so metrics are compared within relative tolerance "
            f"{tolerance:g}"
        )
    if processes > 1:  # the recorded count: summed in the same order, so bitwise equal again on CPU
        metrics = _train_in_processes(cfg, target, processes)
    else:
        metrics = train(cfg, tracker=NullTracker(), run_dir=target, force=True)
    comparison = compare_metrics(original or {}, metrics, tolerance)
    comparison.drift = env_drift(original_env, RunDir(target).env())
    if not recorded:
        notes.append("the run recorded no inputs.json: a changed data file or model could not be named")
    comparison.notes = notes
    return comparison, target, metrics


def _check_hash(cfg: DictConfig, hash_prefix: str, recorded: dict, current: dict) -> None:
    """The stored config, with the inputs it recorded, hashes to HASH. A run without inputs.json (or a config
    from W&B) may be hashed with today's files, or, filed before inputs joined the hash, without them."""
    hashes = [config_hash(cfg, recorded)] if recorded else [config_hash(cfg, current), config_hash(cfg, {})]
    if not any(h.startswith(hash_prefix.lower()[: len(h)]) for h in hashes):
        raise UserError(f"stored config hashes to {hashes[0]}, not {hash_prefix}: the canonical form changed")


# The same config hash computes the same run on any number of processes up to the order in which gradients are
# summed: equal within this relative tolerance (measured differences are ~1e-4), bitwise with the same count.
CROSS_COUNT_TOLERANCE = 1e-3
# A packed run equals its solo run up to the base matmul's row blocking (lorasweep/pack/): far below this.
PACKED_TOLERANCE = 1e-4


def can_launch(processes: int) -> bool:
    """Whether this machine can train with `processes` processes: any number on CPU (gloo), one per GPU."""
    import torch

    return processes <= torch.cuda.device_count() if torch.cuda.is_available() else True


def _train_in_processes(cfg: DictConfig, target: Path, processes: int) -> dict:
    """Rerun under `torchrun --nproc_per_node N` (what the original run was launched with); its metrics."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        OmegaConf.save(cfg, config)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(processes),
                "--master_port",
                str(port),
                "-m",
                "lorasweep.training.reproduce",
                str(config),
                str(target),
            ],
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)},
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"the {processes}-process rerun failed (exit {done.returncode}): {tail}")
    return RunDir(target).metrics()


def format_comparison(comparison: Comparison, target: Path) -> str:
    rows = [
        {"metric": key, "original": repr(a), "reproduction": repr(b), "match": "yes" if ok else "NO"}
        for key, a, b, ok in comparison.rows
    ]  # repr: every digit, so "bitwise" can be read off the table
    lines = [f"reproduction in {target}", format_rows(rows, ["metric", "original", "reproduction", "match"])]
    lines += comparison.notes
    if comparison.matches:
        lines.append(
            "all metrics bitwise equal"
            if comparison.exact
            else f"all metrics within relative tolerance {comparison.tolerance:g}"
        )
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
        raise UserError(f"W&B ({entity_project}): {one_line(exc)}") from None
    if not runs:
        raise UserError(f"no W&B run in {entity_project} with config_hash {hash_prefix}")
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
    if isinstance(nested.get("lora", {}).get("targets"), str):  # flat_config wrote targets_label()
        nested["lora"]["targets"] = parse_targets_label(nested["lora"]["targets"])
    nested["_metrics"] = {k: v for k, v in dict(runs[0].summary).items() if not k.startswith("_")}
    return nested


if __name__ == "__main__":  # one rank of a multi-process rerun (_train_in_processes)
    import sys

    from .lifecycle import train

    train(recompose(OmegaConf.load(sys.argv[1])), tracker=NullTracker(), run_dir=Path(sys.argv[2]), force=True)
