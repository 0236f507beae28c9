"""`--slurm`: turn a sweep or a training run into a submitted SLURM job and return at once.

Everything is checked before anything is created or submitted: the cluster config, sbatch on PATH, and (for
sweeps) that the study storage is safe for the array. Then the study's trials are queued, the script is rendered
into the log folder (so what ran is on disk) and sbatch'ed.
"""

from __future__ import annotations

from pathlib import Path

from . import cluster
from .config import compose


def submit_sweep(spec_path: str, overrides: list[str], array: int | None = None, n_trials: int | None = None,
                 storage: str | None = None, study: str | None = None, dry_run: bool = False) -> dict:
    from .sweep.launch import prepare
    from .sweep.study import SLURM_JOBS_ATTR, create_study

    spec, url = prepare(spec_path, overrides, n_trials, storage, study)
    settings = cluster.slurm_settings(compose([*spec.fixed, *overrides]).cluster)
    array = settings["array"] if array is None else array
    if array <= 0:
        raise ValueError(f"--array must be > 0, got {array}")
    array = min(array, spec.n_trials)  # more workers than trials would only wait
    cluster.check_storage_for_array(url, settings)
    text = cluster.render("sweep_array", settings, {"STUDY": spec.study, "STORAGE": url},
                          job_name=f"lorasweep-{spec.study}", array=array)
    result = {"study": spec.study, "storage": url, "array": array, "script": text}
    if dry_run:
        return result
    cluster.check_with_sbatch(text)  # SLURM's own verdict on the request, before the study exists
    optuna_study = create_study(spec, url, overrides)  # an unreachable storage fails here, before sbatch
    path = cluster.save_script(text, Path(settings["log_dir"]), f"{spec.study}.sbatch")
    job_id = cluster.submit(path)
    optuna_study.set_user_attr(SLURM_JOBS_ATTR, [*optuna_study.user_attrs.get(SLURM_JOBS_ATTR, []), job_id])
    return {**result, "job_id": job_id, "path": path}


def submit_train(overrides: list[str], dry_run: bool = False) -> dict:
    from .config import config_hash

    cfg = compose(overrides)
    settings = cluster.slurm_settings(cfg.cluster)
    digest = config_hash(cfg)
    text = cluster.render("train", settings, {}, job_name=f"lorasweep-{digest[:8]}", args=list(overrides))
    result = {"config_hash": digest, "script": text}
    if dry_run:
        return result
    cluster.check_with_sbatch(text)
    path = cluster.save_script(text, Path(settings["log_dir"]), f"train-{digest[:12]}.sbatch")
    return {**result, "job_id": cluster.submit(path), "path": path}
