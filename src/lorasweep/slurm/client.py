"""SLURM's client commands (sbatch, sinfo): each runs with a timeout, and a refusal is a one-line ValueError."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import UserError, one_line


def run(command: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a controller that does not answer is an error, not a hang."""
    try:
        return subprocess.run(command, input=input, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError(f"{Path(command[0]).name} did not answer within 120 s (is slurmctld reachable?)") from None


def first_error(text: str) -> str:
    lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines() or [""]
    return one_line(lines[0], 300)


def require_sbatch() -> str:
    found = shutil.which("sbatch")
    if not found:
        raise UserError("sbatch not found on PATH: run this on a SLURM login node (use --dry-run to see the script)")
    return found


def check_with_sbatch(script: str) -> None:
    """`sbatch --test-only`: SLURM validates the request (partition, GPUs, time) and submits nothing."""
    done = run([require_sbatch(), "--test-only"], input=script)
    if done.returncode:
        raise UserError(f"sbatch rejects this job: {first_error(done.stderr or done.stdout)}")


def sbatch(path: Path) -> str:
    """sbatch the script and return its job id at once (the job runs on its own)."""
    done = run([require_sbatch(), "--parsable", str(path)])
    if done.returncode:
        raise UserError(f"sbatch failed: {first_error(done.stderr or done.stdout)}")
    return done.stdout.strip().split(";")[0]


def partition_nodes(partition: str | None) -> int | None:
    """How many nodes the partition (or the default one) has; None when sinfo cannot tell."""
    if not shutil.which("sinfo"):
        return None
    done = run(["sinfo", "-h", "-o", "%P %D"])
    if done.returncode:
        return None
    for line in done.stdout.splitlines():
        name, count = line.split()
        if (partition is None and name.endswith("*")) or name.rstrip("*") == partition:
            return int(count)
    return None
