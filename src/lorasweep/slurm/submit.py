"""`lorasweep train --slurm`: turn a training run into a submitted SLURM job and return at once.

The cluster config and sbatch's own verdict are checked before anything is written; then the script is rendered
into the log folder (so what ran is on disk) and sbatch'ed. A sweep's array of workers is sweep/slurm_array.py.
"""

from __future__ import annotations

from pathlib import Path

from ..config.schema import compose, config_hash
from . import client
from .render import render, save_script, slurm_settings


def submit_train(overrides: list[str], dry_run: bool = False) -> dict:
    cfg = compose(overrides)
    settings = slurm_settings(cfg.cluster)
    digest = config_hash(cfg)
    text = render("train", settings, {}, job_name=f"lorasweep-{digest[:8]}", args=list(overrides))
    result = {"config_hash": digest, "script": text}
    if dry_run:
        return result
    client.check_with_sbatch(text)
    path = save_script(text, Path(settings["log_dir"]), f"train-{digest[:12]}.sbatch")
    return {**result, "job_id": client.sbatch(path), "path": path}
