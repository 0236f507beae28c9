"""Where configs, sweep specs and sbatch templates come from: the user's folders first, then the package.

The package ships the repository's conf/, sweeps/ and slurm/ as lorasweep.conf, lorasweep.sweeps and
lorasweep.slurm_templates (setup.py maps them; an editable install reads the repository's folders). Config
groups are searched, first match wins, in: --config-dir DIR (exported to workers as $LORASWEEP_CONFIG_DIR), a
conf/ folder in the current directory, then the packaged conf (Hydra's pkg://lorasweep.conf). Where a file came
from is not part of the config hash: only the composed values are.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import UserError

CONFIG_DIR_ENV = "LORASWEEP_CONFIG_DIR"
PACKAGED_CONF = "pkg://lorasweep.conf"
CONF_DIR = Path(str(resources.files("lorasweep.conf")))  # the packaged config groups (a real folder)
SWEEPS_DIR = Path(str(resources.files("lorasweep.sweeps")))
TEMPLATE_DIR = Path(str(resources.files("lorasweep.slurm_templates")))


def user_config_dirs(config_dir: str | Path | None = None) -> list[Path]:
    """The user's config folders, searched before the packaged ones: config_dir (or $LORASWEEP_CONFIG_DIR),
    then ./conf when it exists (and is not the packaged folder itself, as in a checkout)."""
    dirs = []
    explicit = config_dir or os.environ.get(CONFIG_DIR_ENV)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--config-dir {explicit}: no such directory")
        dirs.append(path)
    local = Path("conf").resolve()
    if local.is_dir() and local not in dirs and local != CONF_DIR.resolve():
        dirs.append(local)
    return dirs


def use_config_dir(config_dir: str | Path | None) -> None:
    """--config-dir for this process and the workers and SLURM jobs it starts (exported as $LORASWEEP_CONFIG_DIR)."""
    if config_dir:
        os.environ[CONFIG_DIR_ENV] = str(user_config_dirs(config_dir)[0])


def find_spec(spec: str | Path) -> Path:
    """A sweep spec path as given, else the packaged spec of that name (`rank_alpha_targets[.yaml]`)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = SWEEPS_DIR / name
    if packaged.is_file() and path.parent in (Path("."), Path("sweeps")):
        return packaged
    known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
    raise UserError(f"sweep spec {str(spec)!r} not found (packaged specs: {known})")
