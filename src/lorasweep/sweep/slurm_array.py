"""`lorasweep sweep SPEC --slurm`: queue the study's trials and submit a SLURM array of workers, then return.

Everything is checked before anything is created or submitted: the spec, the cluster config, sbatch's own
verdict on the request, and that the study storage is safe for the array. Then the trials are queued, the script
is rendered into the log folder (so what ran is on disk) and sbatch'ed. It lives in sweep/ because it is a
sweep's way to start workers; slurm/ renders and submits but knows nothing of studies.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config.schema import compose
from ..errors import UserError
from ..slurm import client, queue
from ..slurm.render import render, save_script, slurm_settings
from .launch import prepare
from .placement import place_slurm
from .study import DEFAULT_RETRY_FAILED, check_retry_failed, create_study


def submit_sweep(
    spec_path: str,
    overrides: list[str],
    array: int | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    dry_run: bool = False,
    pack=None,
    retry_failed: int = DEFAULT_RETRY_FAILED,
    workers: int | str = 1,
) -> dict:
    """The array's script, and unless `dry_run` the job submitted after the study's trials are queued (its failed
    ones re-queued first, up to `retry_failed` times each: the same queueing as a local sweep). `workers`: the
    workers of each array task (K or auto, sweep/placement.py), one srun task each on the task's node: with as
    many GPUs, `--gpus-per-task=1`; with fewer, they share the node's GPUs (slurm/launch.sh)."""
    check_retry_failed(retry_failed)
    # workers read the pack from the study; place_slurm checks it (and sizes auto where it can)
    spec, url = prepare(spec_path, overrides, n_trials, storage, study, pack, check_pack=False)
    settings = slurm_settings(compose([*spec.fixed, *overrides]).cluster)
    array = settings["array"] if array is None else array
    if array <= 0:
        raise UserError(f"--array must be > 0, got {array}")
    lines: list[str] = []
    placement = place_slurm(spec, overrides, workers, settings, say=lines.append)
    spec = replace(spec, pack=placement.pack)
    # more workers than trials (or than packs of trials) would only wait
    runs = -(-spec.n_trials // spec.pack) if isinstance(spec.pack, int) else spec.n_trials
    array = min(array, -(-runs // placement.workers))
    check_storage_for_array(url, settings)
    text = render(
        "sweep_array",
        settings,
        {"STUDY": spec.study, "STORAGE": url},
        job_name=f"lorasweep-{spec.study}",
        array=array,
        tasks_per_node=placement.workers,
    )
    result = {
        "study": spec.study,
        "storage": url,
        "array": array,
        "workers_per_task": placement.workers,
        "placement": lines,
        "script": text,
    }
    if dry_run:
        return result
    client.check_with_sbatch(text)  # SLURM's own verdict on the request, before the study exists
    optuna_study = create_study(spec, url, overrides, retry_failed)  # an unreachable storage fails here, before sbatch
    path = save_script(text, Path(settings["log_dir"]), f"{spec.study}.sbatch")
    job_id = client.sbatch(path)
    queue.record_job(optuna_study, job_id)
    return {**result, "job_id": job_id, "path": path}


def check_storage_for_array(storage_url: str, settings: dict) -> None:
    """SQLite's file locks are not safe across nodes: refuse it unless every task must share one node."""
    if not storage_url.startswith("sqlite:"):
        return
    nodes = client.partition_nodes(settings["partition"])
    if settings["nodes"] > 1 or nodes is None or nodes > 1:
        where = (
            f"trials span {settings['nodes']} nodes"
            if settings["nodes"] > 1
            else (f"partition {settings['partition'] or '(default)'} has {nodes or 'an unknown number of'} nodes")
        )
        raise UserError(
            f"a SQLite study storage is not safe for a multi-node array ({where}): use "
            "--storage journal:///shared/fs/study.log or --storage postgresql://USER@HOST/DB"
        )
