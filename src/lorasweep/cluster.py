"""SLURM: fill slurm/*.sbatch from the cluster config, submit with sbatch (returning at once), read squeue back.

The templates are plain sbatch scripts a user can also submit by hand; rendering replaces their #SBATCH lines
with the cluster config's, puts `cluster.setup` where the template says `# @setup`, and fixes the job's
variables (study, storage, overrides) at the top so the saved script alone says what ran.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from .fileio import atomic_write_text
from .sources import CONFIG_DIR_ENV, TEMPLATE_DIR  # TEMPLATE_DIR: the packaged slurm/*.sbatch

# SLURM's D-HH[:MM[:SS]] or HH:MM[:SS]. Bare minutes are refused: YAML reads an unquoted 4:00:00 as the number
# 14400 (base 60), which SLURM would take as 14400 minutes.
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d{1,2}(:\d{2}){1,2})$")


def slurm_settings(cluster: DictConfig) -> dict:
    """The cluster config as plain values, checked: one clear message for the first problem."""
    if cluster.name == "local":
        raise ValueError("cluster=local has no SLURM settings: pass cluster=slurm cluster.partition=NAME "
                         "(or your own conf/cluster/<site>.yaml)")
    try:
        values = {key: cluster[key] for key in cluster}
    except MissingMandatoryValue as exc:
        key = exc.full_key.split(".")[-1]
        raise ValueError(f"cluster.{key} is required by conf/cluster/{cluster.name}.yaml: "
                         f"pass cluster.{key}=VALUE") from None
    if not values["time"] or not _TIME.match(str(values["time"])):
        raise ValueError(f"cluster.time must be SLURM time like '04:00:00' or '1-00:00:00' (quoted in YAML), "
                         f"got {values['time']!r}")
    for key, low in (("nodes", 1), ("processes_per_node", 1), ("cpus_per_task", 1), ("gpus_per_node", 0),
                     ("array", 1), ("signal_seconds", 0)):
        if values[key] < low:
            raise ValueError(f"cluster.{key} must be >= {low}, got {values[key]}")
    return values


def sbatch_lines(settings: dict, kind: str, array: int | None, job_name: str) -> list[str]:
    """The #SBATCH header for one job of `kind`; a worker array gets --array=0-(K-1)."""
    log = "%x-%A_%a.out" if array else "%x-%j.out"
    options = [
        ("job-name", job_name),
        ("array", f"0-{array - 1}" if array else None),
        ("partition", settings["partition"]),
        ("account", settings["account"]),
        ("nodes", settings["nodes"]),
        ("ntasks-per-node", 1),  # one launcher per node: accelerate launch starts processes_per_node
        ("cpus-per-task", settings["cpus_per_task"]),
        ("gpus-per-node", settings["gpus_per_node"] or None),
        ("mem", settings["mem"]),
        ("time", settings["time"]),
        ("requeue", True),
        ("signal", f"B:USR1@{settings['signal_seconds']}" if settings["signal_seconds"] else None),
        ("open-mode", "append"),  # a requeued task appends to its log instead of overwriting it
        ("output", str(Path(settings["log_dir"]).resolve() / log)),
        ("chdir", os.getcwd()),  # relative run roots and storages mean what they meant here
    ]
    return [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}" for k, v in options if v is not None]


def render(kind: str, settings: dict, variables: dict[str, str], job_name: str, array: int | None = None,
           args: list[str] | None = None) -> str:
    """The template `slurm/<kind>.sbatch` with this job's header, setup lines, variables and arguments."""
    template = (TEMPLATE_DIR / f"{kind}.sbatch").read_text()
    head, body = [], []
    for line in template.splitlines():
        if line.startswith("#SBATCH"):
            continue
        (body if body or (head and not line.startswith("#")) else head).append(line)
    python = "python3" if settings["setup"] else sys.executable  # no setup: the Python that rendered this
    fixed = {**variables, "PROCS_PER_NODE": str(settings["processes_per_node"]), "PYTHON": python}
    if os.environ.get(CONFIG_DIR_ENV):  # --config-dir: the job composes from the same folders
        fixed[CONFIG_DIR_ENV] = str(Path(os.environ[CONFIG_DIR_ENV]).resolve())
    prelude = [f"export {k}={shlex.quote(v)}" for k, v in fixed.items()]
    if args:
        prelude.append("set -- " + " ".join(shlex.quote(a) for a in args))
    lines = [*head, *sbatch_lines(settings, kind, array, job_name), *prelude]
    for line in body:
        if line.startswith("# @setup"):
            lines.extend(settings["setup"])
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def save_script(job_text: str, directory: Path, name: str) -> Path:
    """Write the rendered script where its logs go (this also makes the folder sbatch will open the logs in)."""
    atomic_write_text(directory / name, job_text)
    return directory / name


def require_sbatch() -> str:
    found = shutil.which("sbatch")
    if not found:
        raise ValueError("sbatch not found on PATH: run this on a SLURM login node (use --dry-run to see the script)")
    return found


def check_with_sbatch(script: str) -> None:
    """`sbatch --test-only`: SLURM validates the request (partition, GPUs, time) and submits nothing."""
    done = _slurm([require_sbatch(), "--test-only"], input=script)
    if done.returncode:
        raise ValueError(f"sbatch rejects this job: {_first_error(done.stderr or done.stdout)}")


def _slurm(command: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a controller that does not answer is an error, not a hang."""
    try:
        return subprocess.run(command, input=input, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{Path(command[0]).name} did not answer within 120 s (is slurmctld reachable?)") from None


def _first_error(text: str) -> str:
    lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines() or [""]
    return " ".join(lines[0].split())[:300]


def submit(path: Path) -> str:
    """sbatch the script and return its job id at once (the job runs on its own)."""
    done = _slurm([require_sbatch(), "--parsable", str(path)])
    if done.returncode:
        raise ValueError(f"sbatch failed: {_first_error(done.stderr or done.stdout)}")
    return done.stdout.strip().split(";")[0]


def partition_nodes(partition: str | None) -> int | None:
    """How many nodes the partition (or the default one) has; None when sinfo cannot tell."""
    if not shutil.which("sinfo"):
        return None
    done = _slurm(["sinfo", "-h", "-o", "%P %D"])
    if done.returncode:
        return None
    for line in done.stdout.splitlines():
        name, count = line.split()
        if (partition is None and name.endswith("*")) or name.rstrip("*") == partition:
            return int(count)
    return None


def check_storage_for_array(storage_url: str, settings: dict) -> None:
    """SQLite's file locks are not safe across nodes: refuse it unless every task must share one node."""
    if not storage_url.startswith("sqlite:"):
        return
    nodes = partition_nodes(settings["partition"])
    if settings["nodes"] > 1 or nodes is None or nodes > 1:
        where = f"trials span {settings['nodes']} nodes" if settings["nodes"] > 1 else (
            f"partition {settings['partition'] or '(default)'} has {nodes or 'an unknown number of'} nodes")
        raise ValueError(f"a SQLite study storage is not safe for a multi-node array ({where}): use "
                         "--storage journal:///shared/fs/study.log or --storage postgresql://USER@HOST/DB")


def queue_states(job_ids: list[str]) -> list[tuple[str, str, str]]:
    """(job id, state, reason or node) for each array task still in squeue."""
    if not job_ids or not shutil.which("squeue"):
        return []
    done = _slurm(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%R"])
    if done.returncode and "Invalid job id" not in done.stderr:  # finished jobs are "invalid" once purged
        raise ValueError(f"squeue failed: {_first_error(done.stderr)}")
    return [tuple(line.split("|", 2)) for line in done.stdout.splitlines() if line.count("|") == 2]
