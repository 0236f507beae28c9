"""The SLURM jobs of a study and their queue states: `lorasweep sweep --slurm` records each array job id on the
study (a user attribute, so any worker or `lorasweep status` with the storage finds them), squeue says where
they are."""

from __future__ import annotations

import shutil

from ..errors import UserError
from .client import first_error, run

JOBS_ATTR = "slurm_jobs"  # the study's user attribute: array job ids submitted for it


def record_job(study, job_id: str) -> None:
    """Add a submitted job to the study's list (an Optuna study: anything with user_attrs/set_user_attr)."""
    study.set_user_attr(JOBS_ATTR, [*study.user_attrs.get(JOBS_ATTR, []), job_id])


def study_jobs(study) -> list[str]:
    """The job ids submitted for this study, oldest first."""
    return list(study.user_attrs.get(JOBS_ATTR, []))


def job_states(job_ids: list[str]) -> list[tuple[str, str, str]]:
    """(job id, state, reason or node) for each array task still in squeue."""
    if not job_ids or not shutil.which("squeue"):
        return []
    done = run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%R"])
    if done.returncode and "Invalid job id" not in done.stderr:  # finished jobs are "invalid" once purged
        raise UserError(f"squeue failed: {first_error(done.stderr)}")
    return [tuple(line.split("|", 2)) for line in done.stdout.splitlines() if line.count("|") == 2]
