"""Fill slurm/*.sbatch from the cluster config: the checked settings, the #SBATCH header, the job script.

The templates are plain sbatch scripts a user can also submit by hand; rendering replaces their #SBATCH lines
with the cluster config's, puts `cluster.setup` where the template says `# @setup`, writes the shared launcher
(slurm/launch.sh) in place of the line that sources it (`# @launch`), and fixes the job's variables (study,
storage, overrides) at the top, so the saved script alone says what ran.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from ..errors import UserError
from ..fileio import atomic_write_text
from ..sources import CONFIG_DIR_ENV, TEMPLATE_DIR  # TEMPLATE_DIR: the packaged slurm/*.sbatch

# SLURM's D-HH[:MM[:SS]] or HH:MM[:SS]. Bare minutes are refused: YAML reads an unquoted 4:00:00 as the number
# 14400 (base 60), which SLURM would take as 14400 minutes.
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d{1,2}(:\d{2}){1,2})$")
LAUNCH_MARKER = "# @launch"  # ends the template line that sources slurm/launch.sh: the launcher goes there


def slurm_settings(cluster: DictConfig) -> dict:
    """The cluster config as plain values, checked: one clear message for the first problem."""
    if cluster.name == "local":
        raise UserError(
            "cluster=local has no SLURM settings: pass cluster=slurm cluster.partition=NAME "
            "(or your own conf/cluster/<site>.yaml)"
        )
    try:
        values = {key: cluster[key] for key in cluster}
    except MissingMandatoryValue as exc:
        key = exc.full_key.split(".")[-1]
        raise UserError(
            f"cluster.{key} is required by conf/cluster/{cluster.name}.yaml: pass cluster.{key}=VALUE"
        ) from None
    if not values["time"] or not _TIME.match(str(values["time"])):
        raise UserError(
            f"cluster.time must be SLURM time like '04:00:00' or '1-00:00:00' (quoted in YAML), got {values['time']!r}"
        )
    for key, low in (
        ("nodes", 1),
        ("processes_per_node", 1),
        ("cpus_per_task", 1),
        ("gpus_per_node", 0),
        ("array", 1),
        ("signal_seconds", 0),
    ):
        if values[key] < low:
            raise UserError(f"cluster.{key} must be >= {low}, got {values[key]}")
    return values


def sbatch_lines(settings: dict, kind: str, array: int | None, job_name: str, tasks_per_node: int = 1) -> list[str]:
    """The #SBATCH header for one job of `kind`; a worker array gets --array=0-(K-1). `tasks_per_node` > 1: that
    many one-process tasks per node (sweep workers), each with its own GPUs where there are enough."""
    log = "%x-%A_%a.out" if array else "%x-%j.out"
    gpus = settings["gpus_per_node"]
    per_task = gpus // tasks_per_node if tasks_per_node > 1 and gpus and gpus % tasks_per_node == 0 else None
    options = [
        ("job-name", job_name),
        ("array", f"0-{array - 1}" if array else None),
        ("partition", settings["partition"]),
        ("account", settings["account"]),
        ("nodes", settings["nodes"]),
        # one launcher per node (accelerate launch starts processes_per_node), or one task per worker
        ("ntasks-per-node", tasks_per_node),
        ("cpus-per-task", max(1, settings["cpus_per_task"] // tasks_per_node)),  # the node's CPUs, split
        # SLURM binds each task its own GPUs; more tasks than GPUs share them (slurm/launch.sh: GPU i mod n)
        ("gpus-per-task", per_task),
        ("gpus-per-node", None if per_task else gpus or None),
        ("mem", settings["mem"]),
        ("time", settings["time"]),
        ("requeue", True),
        ("signal", f"B:USR1@{settings['signal_seconds']}" if settings["signal_seconds"] else None),
        ("open-mode", "append"),  # a requeued task appends to its log instead of overwriting it
        ("output", str(Path(settings["log_dir"]).resolve() / log)),
        ("chdir", os.getcwd()),  # relative run roots and storages mean what they meant here
    ]
    return [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}" for k, v in options if v is not None]


def render(
    kind: str,
    settings: dict,
    variables: dict[str, str],
    job_name: str,
    array: int | None = None,
    args: list[str] | None = None,
    tasks_per_node: int = 1,
) -> str:
    """The template `slurm/<kind>.sbatch` with this job's header, setup lines, variables and arguments."""
    template = (TEMPLATE_DIR / f"{kind}.sbatch").read_text()
    head, body = [], []
    for line in template.splitlines():
        if line.startswith("#SBATCH"):
            continue
        (body if body or (head and not line.startswith("#")) else head).append(line)
    python = "python3" if settings["setup"] else sys.executable  # no setup: the Python that rendered this
    fixed = {
        **variables,
        "PROCS_PER_NODE": str(settings["processes_per_node"]),
        "TASKS_PER_NODE": str(tasks_per_node),
        "PYTHON": python,
    }
    if os.environ.get(CONFIG_DIR_ENV):  # --config-dir: the job composes from the same folders
        fixed[CONFIG_DIR_ENV] = str(Path(os.environ[CONFIG_DIR_ENV]).resolve())
    prelude = [f"export {k}={shlex.quote(v)}" for k, v in fixed.items()]
    if args:
        prelude.append("set -- " + " ".join(shlex.quote(a) for a in args))
    lines = [*head, *sbatch_lines(settings, kind, array, job_name, tasks_per_node), *prelude]
    for line in body:
        if line.startswith("# @setup"):
            lines.extend(settings["setup"])
        elif line.rstrip().endswith(LAUNCH_MARKER):
            lines.extend(launcher_lines())
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def launcher_lines() -> list[str]:
    """slurm/launch.sh as it is written into a rendered script (in place of the line that sources it)."""
    text = (TEMPLATE_DIR / "launch.sh").read_text()
    return ["# --- slurm/launch.sh ---", *text.splitlines(), "# --- end of slurm/launch.sh ---"]


def save_script(job_text: str, directory: Path, name: str) -> Path:
    """Write the rendered script where its logs go (this also makes the folder sbatch will open the logs in)."""
    atomic_write_text(directory / name, job_text)
    return directory / name
