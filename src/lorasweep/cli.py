"""The `lorasweep` command (click): parse, call the library, print (console.py). Bad input is one line on stderr
and exit code 2; a bug keeps its traceback.

Hydra overrides (key=value) go anywhere after the command, before or after options. Options shared by several
commands are declared once below (RUN_ROOT, STUDY, STORAGE, CONFIG_DIR).
"""

from __future__ import annotations

import sys

import click

from . import __version__

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorasweep")
def cli() -> None:
    """Run, track and compare LoRA sweeps."""


def _overrides(overrides, run_root: str | None = None, config_dir: str | None = None) -> list[str]:
    """The command's Hydra overrides: a stray option (an unknown --flag) is a usage error, not an override."""
    from .sources import use_config_dir

    strays = [o for o in overrides if o.startswith("-") or "=" not in o]
    if strays:
        raise click.UsageError(f"unrecognized arguments: {' '.join(strays)} (overrides are key=value)")
    use_config_dir(config_dir)
    return [*overrides, *([f"run_root={run_root}"] if run_root else [])]


@cli.command(**OPTIONS)
@OVERRIDES
@click.option("--cfg", is_flag=True, help="print the composed config and its hash; do not run")
@FORCE
@click.option("--slurm", is_flag=True, help="submit slurm/train.sbatch (cluster=... settings)")
@DRY_RUN
@RUN_ROOT(None)
@CONFIG_DIR
def train(overrides, cfg, force, slurm, dry_run, run_root, config_dir):
    """One LoRA run from conf/ plus Hydra overrides (lora=all lora.rank=16 optim.lr=1e-3 ...)."""
    from . import console
    from .config import compose
    from .preflight import check_config

    overrides = _overrides(overrides, run_root, config_dir)
    if slurm:
        from .slurm.submit import submit_train

        console.print_submission(submit_train(overrides, dry_run=dry_run), dry_run)
        return 0
    config = compose(overrides)
    check_config(config)  # what train() checks first, so --cfg refuses what train would
    if cfg:
        from omegaconf import OmegaConf

        from .config import config_hash

        click.echo(OmegaConf.to_yaml(config, resolve=True), nl=False)
        click.echo(f"# config hash: {config_hash(config)}")
        return 0
    from .run import Callbacks
    from .run import train as train_run
    from .signals import StopOnSignal

    stop = StopOnSignal().install()
    metrics = train_run(config, force=force, callbacks=Callbacks(should_stop=stop))
    if metrics["status"] == "interrupted":
        console.print_interrupted(metrics, stop.received)
        return stop.exit_code or 1
    console.print_result(config, metrics)
    return 0 if metrics["status"] in ("completed", "reused", "pruned") else 1


@cli.command(**OPTIONS)
@click.argument("spec")
@OVERRIDES
@click.option(
    "--workers", type=int, default=1, show_default=True, help="local worker processes; 0: create and queue only"
)
@click.option("--n-trials", type=int, default=None, help="trial budget (default: the spec's)")
@STORAGE
@STUDY(required=False)
@click.option("--slurm", is_flag=True, help="queue the trials, submit slurm/sweep_array.sbatch and return")
@click.option("--array", type=int, default=None, help="with --slurm: array tasks (default cluster.array)")
@DRY_RUN
@MEMORY_CAP
@click.option(
    "--estimate",
    "estimate_only",
    is_flag=True,
    help="print the predicted peak of every grid point (or the search space's corners); queue nothing",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="with --estimate: the device assumed (default: the config's)",
)
@RUN_ROOT(None)
@CONFIG_DIR
def sweep(
    spec,
    overrides,
    workers,
    n_trials,
    storage,
    study,
    slurm,
    array,
    dry_run,
    memory_cap,
    estimate_only,
    device,
    run_root,
    config_dir,
):
    """An Optuna sweep from sweeps/SPEC.yaml with K local workers."""
    from . import console
    from .sources import find_spec

    overrides = _overrides(overrides, run_root, config_dir)
    if memory_cap is not None:  # stored with the study's overrides, so every worker (and SLURM task) applies it
        from .estimate import parse_memory_size

        overrides.append(f"cluster.memory_cap={parse_memory_size(memory_cap, '--memory-cap')}")
    spec = str(find_spec(spec))
    if estimate_only:
        from .sweep.launch import prepare
        from .sweep.memory_estimate import estimate_sweep, format_sweep_estimate

        sweep_spec, _ = prepare(spec, overrides, n_trials, storage, study)
        click.echo(format_sweep_estimate(estimate_sweep(sweep_spec, overrides, device=device)))
        return 0
    if slurm or dry_run or array is not None:
        if not slurm:
            raise click.UsageError("--array and --dry-run go with --slurm")
        from .sweep.slurm_array import submit_sweep

        console.print_submission(
            submit_sweep(
                spec, overrides, array=array, n_trials=n_trials, storage=storage, study=study, dry_run=dry_run
            ),
            dry_run,
        )
        return 0
    from .signals import StopOnSignal
    from .sweep.launch import run_sweep
    from .sweep.report import format_table, leaderboard

    stop = StopOnSignal().install()
    optuna_study, sweep_spec = run_sweep(
        spec, overrides, workers=workers, n_trials=n_trials, storage=storage, study=study, should_stop=stop
    )
    if stop.received:
        click.echo(
            f"lorasweep: sweep stopped by {stop.received}: running trials were checkpointed and "
            "re-queued; the same command continues the study",
            err=True,
        )
        return stop.exit_code
    click.echo(format_table(leaderboard(optuna_study, sweep_spec)))
    return 0


@cli.command()
@STUDY(required=True)
@click.option("--storage", required=True, help="the study's storage URL")
@MEMORY_CAP
@CONFIG_DIR
def worker(study, storage, memory_cap, config_dir):
    """One sweep worker on an existing study (for SLURM or any launcher)."""
    from .signals import StopOnSignal
    from .sources import use_config_dir
    from .sweep.worker import run_worker

    use_config_dir(config_dir)
    if memory_cap is not None:  # a bad cap is bad input here, not a failure of every trial
        from .estimate import parse_memory_size

        memory_cap = parse_memory_size(memory_cap, "--memory-cap")
    stop = StopOnSignal().install()
    done = run_worker(study, storage, should_stop=stop, memory_cap=memory_cap)
    click.echo(f"worker {'stopped by ' + stop.received if stop.received else 'finished'}: {done} trials")
    return stop.exit_code


@cli.command(**OPTIONS)
@OVERRIDES
@click.option("--json", "as_json", is_flag=True, help="the account as JSON (bytes)")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="the device assumed (default: cuda where the cluster has GPUs or this machine has one)",
)
@RUN_ROOT(None)
@CONFIG_DIR
def estimate(overrides, as_json, device, run_root, config_dir):
    """The memory of one training step of a config, predicted without loading weights or training."""
    from .config import compose
    from .estimate import estimate_config, format_account
    from .preflight import check_config

    config = compose(_overrides(overrides, run_root, config_dir))
    check_config(config)  # the checks train makes first
    account = estimate_config(config, device)
    if as_json:
        import json

        click.echo(json.dumps(account, indent=2, sort_keys=True))
    else:
        click.echo(format_account(account))
    return 0


@cli.command()
@STUDY(required=True)
@STORAGE
@RUN_ROOT()
def status(study, storage, run_root):
    """Trial states of a study next to its SLURM jobs' queue state."""
    from .sweep.status import study_status
    from .sweep.study import open_study

    click.echo(study_status(*open_study(study, storage, run_root)[:2]))
    return 0


@cli.command()
@STUDY(required=True)
@STORAGE
@RUN_ROOT()
@click.option("--out", default=None, help="report folder (default: RUN_ROOT/reports/STUDY)")
@click.option(
    "--wandb",
    "wandb_mode",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "offline", "online", "none"]),
    help="the W&B summary run; auto: in the trials' own W&B mode, none where they were not tracked",
)
@click.option(
    "--table",
    nargs=2,
    default=None,
    metavar="ROW COL",
    help="paper-style pivot: rows one searched param, columns another, cells the best objective",
)
@click.option("--split", default=None, metavar="KEY", help="with --table: a third searched param splitting the columns")
def report(study, storage, run_root, out, wandb_mode, table, split):
    """Leaderboard, HTML report with plots, W&B summary run."""
    from .sweep.report import make_report

    if split and not table:
        raise click.UsageError("--split goes with --table ROW COL")
    keys = [*table, *([split] if split else [])] if table else None
    for line in make_report(study, storage, run_root, out, wandb_mode, keys):
        click.echo(line)
    return 0


@cli.command()
@STUDY(required=True)
@STORAGE
@RUN_ROOT()
@click.option("--port", type=int, default=8080, show_default=True)
def dashboard(study, storage, run_root, port):
    """optuna-dashboard on 127.0.0.1, live on the study's storage."""
    from .sweep.dashboard import serve
    from .sweep.storage import default_storage_url

    serve(study, storage or default_storage_url(run_root), port=port)
    return 0


@cli.command()
@click.argument("config_hash", metavar="HASH")
@RUN_ROOT()
@click.option(
    "--wandb",
    "wandb_path",
    default=None,
    metavar="ENTITY/PROJECT",
    help="find the config in W&B (config.config_hash == HASH) instead of the run store",
)
@click.option("--tolerance", type=float, default=None, help="relative tolerance (default: bitwise on CPU, 1e-4 on GPU)")
@CONFIG_DIR
def reproduce(config_hash, run_root, wandb_path, tolerance, config_dir):
    """Rerun a run from its config hash and compare every metric."""
    from .reproduce import fetch_wandb_config, format_comparison
    from .reproduce import reproduce as reproduce_run
    from .sources import use_config_dir

    use_config_dir(config_dir)
    stored = fetch_wandb_config(wandb_path, config_hash) if wandb_path else None
    comparison, target, _ = reproduce_run(config_hash, run_root, tolerance, stored_config=stored)
    click.echo(format_comparison(comparison, target))
    return 0 if comparison.matches else 1


@cli.command()
@RUN_ROOT()
@STUDY(required=False)
@click.option("--sort", default=None, metavar="COLUMN", help="e.g. eval/loss or rank")
def runs(run_root, study, sort):
    """A table of the runs in the run store."""
    from . import compare

    click.echo(compare.format_runs(compare.list_runs(run_root, study, sort)))
    return 0


@cli.command()
@click.argument("hashes", nargs=-1)
@STUDY(required=False)
@RUN_ROOT()
@click.option("--out", default=None, help="the page's folder (default: RUN_ROOT/compare/<hashes>)")
def compare(hashes, study, run_root, out):
    """Config differences, metrics side by side, loss curves."""
    from .compare import compare_from_store

    text, index = compare_from_store(run_root, list(hashes), study, out)
    click.echo(text)
    click.echo(f"\nloss curves and page: {index}")
    return 0


@cli.command()
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="NAME=HASH_OR_DIR",
    help="an adapter (a run hash, a run directory or an adapter directory); repeatable",
)
@click.option("--input", "input_path", required=True, help='JSON lines: {"text": ..., "adapter": NAME or "base"}')
@click.option("--output", default=None, help="JSON lines out (default: stdout)")
@click.option(
    "--base",
    default=None,
    help="base model: a model config name (minilm, tiny_gpt2, ...) or a hub-format "
    "dir (default: the adapters' runs' model, else the packaged minilm)",
)
@RUN_ROOT()
@click.option(
    "--task",
    type=click.Choice(["classification", "causal_lm"]),
    default=None,
    help="default: from the adapters' task_type",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
def predict(adapters, input_path, output, base, run_root, task, batch_size, max_new_tokens):
    """One pass over a batch whose lines each use their own adapter."""
    from .predict import parse_adapter_specs, predict_file

    predict_file(
        parse_adapter_specs(list(adapters), run_root),
        input_path,
        output,
        base=base,
        task=task,
        run_root=run_root,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    return 0


@cli.command()
@click.option("--rank", type=int, default=8, show_default=True)
@click.option("--alpha", type=float, default=16, show_default=True)
def demo(rank, alpha):
    """LoRA vs full fine-tuning on the packaged MiniLM: parameters and memory."""
    from .demo import print_demo, run_demo

    print_demo(run_demo(rank=rank, alpha=alpha))
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from optuna.exceptions import StorageInternalError

    from .errors import UserError

    # UserError: lorasweep's own verdict on its input. Hydra/OmegaConf: a config the user typed. FileNotFoundError:
    # a path the user gave. StorageInternalError: the study database refused (read-only file, lost connection).
    # Anything else, a ValueError from a bug included, keeps its traceback.
    return (UserError, FileNotFoundError, HydraException, OmegaConfBaseException, StorageInternalError)


def _quiet_libraries() -> None:
    """Library progress bars and load reports drown lorasweep's own output."""
    import logging

    import datasets
    import transformers

    # bitsandbytes warns at import about an optional kernels package (a slower CPU fallback; harmless).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _run_root_spelling(argv: list[str]) -> list[str]:
    """`run_root=DIR` also works where the option is `--run-root DIR` (runs, report, compare, ...)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in NO_OVERRIDES:
        return argv
    return [part for a in argv for part in (["--run-root", a.split("=", 1)[1]] if a.startswith("run_root=") else [a])]


def main(argv: list[str] | None = None) -> int:
    from . import console

    argv = _run_root_spelling(list(sys.argv[1:] if argv is None else argv))
    _quiet_libraries()
    try:
        code = cli.main(args=argv, prog_name="lorasweep", standalone_mode=False)
    except click.exceptions.Exit as done:  # --help, --version
        return done.exit_code
    except click.ClickException as exc:  # usage errors: click's own message (Usage: ... / Error: ...)
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    except _user_errors() as exc:
        console.print_error(exc)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
