"""The sweep commands of `lorasweep`: sweep, worker, status, report, dashboard (registered on the group in cli/main.py).
Each parses, calls the library (sweep/), and prints."""

from __future__ import annotations

import click

from .options import CONFIG_DIR, DRY_RUN, MEMORY_CAP, OPTIONS, OVERRIDES, PACK, RUN_ROOT, STORAGE, STUDY, overrides_of


@click.command(**OPTIONS)
@click.argument("spec")
@OVERRIDES
@click.option(
    "--workers",
    default="1",
    show_default=True,
    metavar="K|auto",
    help="local worker processes (with --slurm: per array task); 0: create and queue only; auto: as many as the "
    "GPUs (or CPU cores) and the memory estimate allow",
)
@click.option("--n-trials", type=int, default=None, help="trial budget (default: the spec's)")
@STORAGE
@STUDY(required=False)
@click.option("--slurm", is_flag=True, help="queue the trials, submit slurm/sweep_array.sbatch and return")
@click.option("--array", type=int, default=None, help="with --slurm: array tasks (default cluster.array)")
@DRY_RUN
@MEMORY_CAP
@PACK
@click.option(
    "--retry-failed",
    type=int,
    default=1,
    show_default=True,
    metavar="N",
    help="on an existing study, re-queue each failed trial (same params) up to N times in all; 0: never",
)
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
    pack,
    retry_failed,
    estimate_only,
    device,
    run_root,
    config_dir,
):
    """An Optuna sweep from sweeps/SPEC.yaml with K local workers."""
    from ..sources import find_spec
    from ..sweep.placement import parse_workers
    from . import console

    workers = parse_workers(workers)  # a bad value is one line before anything is composed
    overrides = overrides_of(overrides, run_root, config_dir)
    if memory_cap is not None:  # stored with the study's overrides, so every worker (and SLURM task) applies it
        from ..estimate import parse_memory_size

        overrides.append(f"cluster.memory_cap={parse_memory_size(memory_cap, '--memory-cap')}")
    spec = str(find_spec(spec))
    if estimate_only:
        from ..sweep.launch import prepare
        from ..sweep.memory_estimate import estimate_sweep, format_sweep_estimate

        sweep_spec, _ = prepare(spec, overrides, n_trials, storage, study)
        click.echo(format_sweep_estimate(estimate_sweep(sweep_spec, overrides, device=device)))
        return 0
    if slurm or dry_run or array is not None:
        if not slurm:
            raise click.UsageError("--array and --dry-run go with --slurm")
        from ..sweep.slurm_array import submit_sweep

        submission = submit_sweep(
            spec,
            overrides,
            array=array,
            n_trials=n_trials,
            storage=storage,
            study=study,
            dry_run=dry_run,
            pack=pack,
            retry_failed=retry_failed,
            workers=workers,
        )
        for line in submission["placement"]:  # a dry run's stdout is the script alone
            click.echo(line, err=dry_run)
        console.print_submission(submission, dry_run)
        if not dry_run and submission["workers_per_task"] > 1:
            click.echo(f"each array task runs {submission['workers_per_task']} workers (one srun task each)")
        return 0
    from ..sweep.launch import run_sweep
    from ..sweep.outcome import short_notes, study_outcome
    from ..sweep.report import format_table, leaderboard
    from ..training.signals import StopOnSignal

    stop = StopOnSignal().install()
    optuna_study, sweep_spec = run_sweep(
        spec,
        overrides,
        workers=workers,
        n_trials=n_trials,
        storage=storage,
        study=study,
        should_stop=stop,
        pack=pack,
        retry_failed=retry_failed,
    )
    if stop.received:
        click.echo(
            f"lorasweep: sweep stopped by {stop.received}: running trials were checkpointed and "
            "re-queued; the same command continues the study",
            err=True,
        )
        return stop.exit_code
    click.echo(format_table(short_notes(leaderboard(optuna_study, sweep_spec), optuna_study)))
    if workers == 0:  # queue only: nothing ran here, so no verdict on the trials yet (`lorasweep status` gives it)
        return 0
    return _outcome(study_outcome(optuna_study))


def _outcome(outcome: tuple[int, str | None]) -> int:
    """Print the study's failure summary (if any) on stderr; the exit code (docs/errors.md)."""
    code, line = outcome
    if line:
        click.echo(f"lorasweep: {line}", err=True)
    return code


@click.command()
@STUDY(required=True)
@click.option("--storage", required=True, help="the study's storage URL")
@MEMORY_CAP
@PACK
@CONFIG_DIR
def worker(study, storage, memory_cap, pack, config_dir):
    """One sweep worker on an existing study (for SLURM or any launcher)."""
    from ..sources import use_config_dir
    from ..sweep.worker import run_worker
    from ..training.signals import StopOnSignal

    use_config_dir(config_dir)
    if memory_cap is not None:  # a bad cap is bad input here, not a failure of every trial
        from ..estimate import parse_memory_size

        memory_cap = parse_memory_size(memory_cap, "--memory-cap")
    if pack is not None:
        from ..pack.size import parse_pack

        pack = parse_pack(pack)
    stop = StopOnSignal().install()
    done = run_worker(study, storage, should_stop=stop, memory_cap=memory_cap, pack=pack)
    click.echo(f"worker {'stopped by ' + stop.received if stop.received else 'finished'}: {done} trials")
    return stop.exit_code


@click.command()
@STUDY(required=True)
@STORAGE
@RUN_ROOT()
def status(study, storage, run_root):
    """Trial states of a study next to its SLURM jobs' queue state; exit 1 while failures outnumber completions."""
    from ..sweep.outcome import study_outcome
    from ..sweep.status import study_status
    from ..sweep.study import open_study

    optuna_study, spec, _ = open_study(study, storage, run_root)
    click.echo(study_status(optuna_study, spec))
    return _outcome(study_outcome(optuna_study))


@click.command()
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
    from ..sweep.report import make_report

    if split and not table:
        raise click.UsageError("--split goes with --table ROW COL")
    keys = [*table, *([split] if split else [])] if table else None
    for line in make_report(study, storage, run_root, out, wandb_mode, keys):
        click.echo(line)
    return 0


@click.command()
@STUDY(required=True)
@STORAGE
@RUN_ROOT()
@click.option("--port", type=int, default=8080, show_default=True)
def dashboard(study, storage, run_root, port):
    """optuna-dashboard on 127.0.0.1, live on the study's storage."""
    from ..sweep.dashboard import serve
    from ..sweep.storage import default_storage_url

    serve(study, storage or default_storage_url(run_root), port=port)
    return 0


SWEEP_COMMANDS = (sweep, worker, status, report, dashboard)
