"""The options and arguments several `lorasweep` commands share, declared once (cli/main.py, cli/sweep_commands.py)."""

from __future__ import annotations

import click

OVERRIDES = click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
CONFIG_DIR = click.option(
    "--config-dir",
    default=None,
    metavar="DIR",
    help="config groups searched before ./conf and the packaged ones (model/my_llama.yaml ...)",
)
STORAGE = click.option(
    "--storage", default=None, help="sqlite:///F, journal:///F or postgresql://... (default: sqlite under the run root)"
)
FORCE = click.option("--force", is_flag=True, help="rerun even if this config hash has a complete run")
DRY_RUN = click.option("--dry-run", is_flag=True, help="with --slurm: print the script, submit nothing")
MEMORY_CAP = click.option(
    "--memory-cap",
    default=None,
    metavar="SIZE",
    help="skip trials predicted above this peak (e.g. 80GiB); default: the spec's or cluster.memory_cap",
)

PACK = click.option(
    "--pack",
    default=None,
    metavar="K|auto",
    help="train up to K trials at once on one frozen base (auto: as many as fit); default: the spec's pack, else 1",
)


def RUN_ROOT(default: str | None = "runs"):
    return click.option(
        "--run-root",
        default=default,
        metavar="DIR",
        help="the run store (the same as run_root=DIR)" + (f"; default {default}" if default else ""),
    )


def STUDY(required: bool):
    return click.option(
        "--study",
        required=required,
        default=None,
        help="the study name" + ("" if required else " (default: the spec's)"),
    )


# Commands whose run root is an option only: `run_root=DIR` is accepted there as a synonym (main() rewrites it).
NO_OVERRIDES = ("worker", "status", "report", "dashboard", "reproduce", "runs", "compare", "predict")
OPTIONS = dict(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})


def overrides_of(overrides, run_root: str | None = None, config_dir: str | None = None) -> list[str]:
    """The command's Hydra overrides: a stray option (an unknown --flag) is a usage error, not an override."""
    from ..sources import use_config_dir

    strays = [o for o in overrides if o.startswith("-") or "=" not in o]
    if strays:
        raise click.UsageError(f"unrecognized arguments: {' '.join(strays)} (overrides are key=value)")
    use_config_dir(config_dir)
    return [*overrides, *([f"run_root={run_root}"] if run_root else [])]
