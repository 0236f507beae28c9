"""The `lorasweep` command (click): parse, call the library, print (cli/console.py). Bad input is one line on stderr
and exit code 2; a bug keeps its traceback.

Hydra overrides (key=value) go anywhere after the command, before or after options. Options shared by several
commands are declared once in cli/options.py; the sweep commands live in cli/sweep_commands.py.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from .options import CONFIG_DIR, DRY_RUN, FORCE, NO_OVERRIDES, OPTIONS, OVERRIDES, RUN_ROOT, STUDY, overrides_of
from .sweep_commands import SWEEP_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorasweep")
def cli() -> None:
    """Run, track and compare LoRA sweeps."""


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
    from ..config.schema import compose
    from ..training.preflight import check_config
    from . import console

    overrides = overrides_of(overrides, run_root, config_dir)
    if slurm:
        from ..slurm.submit import submit_train

        console.print_submission(submit_train(overrides, dry_run=dry_run), dry_run)
        return 0
    config = compose(overrides)
    check_config(config)  # what train() checks first, so --cfg refuses what train would
    if cfg:
        from omegaconf import OmegaConf

        from ..config.schema import config_hash

        click.echo(OmegaConf.to_yaml(config, resolve=True), nl=False)
        click.echo(f"# config hash: {config_hash(config)}")
        return 0
    from ..training.lifecycle import Callbacks
    from ..training.lifecycle import train as train_run
    from ..training.signals import StopOnSignal

    stop = StopOnSignal().install()
    metrics = train_run(config, force=force, callbacks=Callbacks(should_stop=stop))
    if metrics["status"] == "interrupted":
        console.print_interrupted(metrics, stop.received)
        return stop.exit_code or 1
    console.print_result(config, metrics)
    return 0 if metrics["status"] in ("completed", "reused", "pruned") else 1


@cli.command(**OPTIONS)
@OVERRIDES
@click.option("--show", "show", type=click.IntRange(min=0), default=3, show_default=True, metavar="N")
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON list of {input_ids, labels, ...}")
@RUN_ROOT(None)
@CONFIG_DIR
def data(overrides, show, split, as_json, run_root, config_dir):
    """The first N examples of a split as the run trains on them: the trained part marked, labels named."""
    from ..config.schema import compose
    from ..data.show import as_text, counts_line, shown_examples
    from ..model.load import load_tokenizer
    from ..training.preflight import check_config

    config = compose(overrides_of(overrides, run_root, config_dir))
    check_config(config)  # the same checks (and the same tokenised cache) as train
    tokenizer = load_tokenizer(config.model)
    rows, info = shown_examples(config, tokenizer, split, show)
    if as_json:
        from ..data.show import as_json as to_json

        click.echo(to_json(rows, info))
        click.echo(counts_line(config, info), err=True)
    else:
        if rows:
            click.echo(as_text(rows, info, tokenizer, split))
        click.echo(counts_line(config, info))
    return 0


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
    from ..config.schema import compose
    from ..estimate import estimate_config, format_account
    from ..training.preflight import check_config

    config = compose(overrides_of(overrides, run_root, config_dir))
    check_config(config)  # the checks train makes first
    from ..estimate.fit import fit_summary
    from ..estimate.headroom import memory_budget
    from ..estimate.peak import default_device

    # What a fit would use here (free memory less cluster.memory_margin, or a cap): a bad value is said first
    budget = memory_budget(config, device or default_device(config), fallback=False)
    account = estimate_config(config, device)
    fit = fit_summary(config, budget, account)
    if as_json:
        import json

        click.echo(json.dumps({**account, "fit": fit}, indent=2, sort_keys=True))
    else:
        click.echo(format_account(account))
        click.echo(fit["line"])
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
    from ..sources import use_config_dir
    from ..training.reproduce import fetch_wandb_config, format_comparison
    from ..training.reproduce import reproduce as reproduce_run

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
@click.option(
    "--input",
    "input_path",
    required=True,
    help='JSON lines: {"text", "text_pair"?, "adapter": NAME or "base"} or {"messages": [...], "adapter"}',
)
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
    type=click.Choice(["classification", "regression", "causal_lm"]),
    default=None,
    help="default: from the adapters' task_type (a one-output head: regression)",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="auto: CUDA if any"
)
def predict(adapters, input_path, output, base, run_root, task, batch_size, max_new_tokens, device):
    """One pass over a batch whose lines each use their own adapter."""
    from ..serve.predict import parse_adapter_specs, predict_file

    predict_file(
        parse_adapter_specs(list(adapters), run_root),
        input_path,
        output,
        base=base,
        task=task,
        run_root=run_root,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
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


for _command in SWEEP_COMMANDS:
    cli.add_command(_command)


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from optuna.exceptions import StorageInternalError

    from ..errors import UserError

    # UserError: lorasweep's own verdict on its input. Hydra/OmegaConf: a config the user typed. FileNotFoundError:
    # a path the user gave. StorageInternalError: the study database refused (read-only file, lost connection).
    # Anything else, a ValueError from a bug included, keeps its traceback.
    return (UserError, FileNotFoundError, HydraException, OmegaConfBaseException, StorageInternalError)


def _quiet_libraries() -> None:
    """Library progress bars and load reports drown lorasweep's own output. Said through the libraries' own
    environment variables, so that a command that never loads them (`--help`, `runs`, `status`, `report`) does
    not import them for this (1-2 s); set directly where they are loaded already (the CLI called in-process)."""
    import logging
    import os

    # bitsandbytes warns at import about an optional kernels package (a slower CPU fallback; harmless), and
    # `kernels` (transformers >= 5.25 installs it) that offline it skips a publisher check of the cached kernel.
    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)  # what the user set wins
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.set_verbosity_error()
        sys.modules["transformers"].utils.logging.disable_progress_bar()


# Read when each library is imported: datasets' and the hub's (transformers') progress bars, transformers' logs.
_QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


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
