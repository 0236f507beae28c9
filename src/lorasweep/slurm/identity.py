"""Who this process is to SLURM, read from the environment slurmd gives a job (all of lorasweep's `SLURM_*`
reading is here). Outside SLURM every answer is None or 0."""

from __future__ import annotations

import os


def array_task() -> str | None:
    """This array task as squeue and scontrol name it (`JOB_TASK`), None outside a job array."""
    if not os.environ.get("SLURM_ARRAY_JOB_ID"):
        return None
    return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"


def array_index() -> int | None:
    """This task's index in its array (`--array=0-(K-1)`), None when SLURM set none."""
    index = os.environ.get("SLURM_ARRAY_TASK_ID")
    return int(index) if index is not None else None


def job() -> str | None:
    """This job: the array task (`JOB_TASK`) in an array, else the job id; None outside SLURM."""
    return array_task() or os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 on its first start and outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
