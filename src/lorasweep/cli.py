"""The `lorasweep` command: parse, call, print. Errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import UserError


def _demo(args: argparse.Namespace) -> int:
    from .demo import print_demo, run_demo

    print_demo(run_demo(rank=args.rank, alpha=args.alpha))
    return 0


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .config import compose, config_hash

    if args.slurm:
        from .slurm.submit import submit_train

        return _print_submission(submit_train(args.overrides, dry_run=args.dry_run), args.dry_run)
    from .preflight import check_config

    cfg = compose(args.overrides)
    check_config(cfg)  # the checks train() makes first, so --cfg refuses what train would
    if args.cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        print(f"# config hash: {config_hash(cfg)}")
        return 0
    from .run import Callbacks, train
    from .signals import StopOnSignal

    stop = StopOnSignal().install()
    metrics = train(cfg, force=args.force, callbacks=Callbacks(should_stop=stop))
    if metrics["status"] == "interrupted":
        print(f"lorasweep: {stop.received}: run {metrics['config_hash']} stopped at step {metrics['step']} "
              "(checkpointed); the same command resumes it", file=sys.stderr)
        return stop.exit_code or 1
    _print_result(cfg, metrics)
    return 0 if metrics["status"] in ("completed", "reused", "pruned") else 1


def _print_result(cfg, metrics: dict) -> None:
    from pathlib import Path

    run_dir = Path(cfg.run_root) / metrics["config_hash"]
    if metrics["status"] == "reused":
        print(f"config {metrics['config_hash']} already has a complete run in {run_dir} (use --force to rerun)")
    lines = [
        ("config hash", metrics["config_hash"]),
        ("status", metrics["status"]),
        ("trainable", f"{metrics['params/trainable']:,} / {metrics['params/total']:,} "
                      f"({100 * metrics['params/trainable_fraction']:.3f}%)"),
        ("optimizer state", f"{metrics['memory/optimizer_state_bytes'] / 2**20:.2f} MiB{_eight_bit_note(cfg)}"),
        ("eval loss", f"{metrics.get('eval/loss', float('nan')):.4f}"),
    ]
    if "eval/accuracy" in metrics:
        initial = metrics.get("eval/initial_accuracy")
        baseline = f"  (untrained: {initial:.4f})" if initial is not None else ""
        lines.append(("eval accuracy", f"{metrics['eval/accuracy']:.4f}{baseline}"))
    lines.append(("run directory", str(run_dir)))
    for key, value in lines:
        print(f"{key + ':':<17}{value}")


def _eight_bit_note(cfg) -> str:
    """adamw8bit keeps 32-bit state for tensors under optim.min_8bit_size elements: say so where that is all."""
    from .optim import EIGHT_BIT
    from .preflight import lora_skeleton

    model = lora_skeleton(cfg) if cfg.optim.name in EIGHT_BIT else None
    if model is None:
        return ""
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    small = sum(n for n in sizes if n < cfg.optim.min_8bit_size)
    if not small:
        return ""
    share = "all" if small == sum(sizes) else f"{100 * small / sum(sizes):.0f}% of"
    return (f" ({share} the trainable parameters are in tensors under optim.min_8bit_size="
            f"{cfg.optim.min_8bit_size} elements and keep 32-bit state; lower it to make them 8-bit)")


def _print_submission(result: dict, dry_run: bool) -> int:
    if dry_run:
        print(result["script"], end="")
        return 0
    what = f"array job {result['job_id']} ({result['array']} workers) for study {result['study']}" if "study" in \
        result else f"job {result['job_id']} for config {result['config_hash']}"
    print(f"submitted {what}; script: {result['path']}")
    if "study" in result:
        print(f"follow it: lorasweep status --study {result['study']} --storage {result['storage']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    if args.slurm or args.dry_run or args.array is not None:
        if not args.slurm:
            raise UserError("--array and --dry-run go with --slurm")
        from .slurm.submit import submit_sweep

        return _print_submission(submit_sweep(args.spec, args.overrides, array=args.array, n_trials=args.n_trials,
                                              storage=args.storage, study=args.study, dry_run=args.dry_run),
                                 args.dry_run)
    from .signals import StopOnSignal
    from .sweep.launch import run_sweep
    from .sweep.report import format_table, leaderboard

    stop = StopOnSignal().install()
    study, spec = run_sweep(args.spec, args.overrides, workers=args.workers, n_trials=args.n_trials,
                            storage=args.storage, study=args.study, should_stop=stop)
    if stop.received:
        print(f"lorasweep: sweep stopped by {stop.received}: running trials were checkpointed and re-queued; "
              "the same command continues the study", file=sys.stderr)
        return stop.exit_code
    print(format_table(leaderboard(study, spec)))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from .signals import StopOnSignal
    from .sweep.worker import run_worker

    stop = StopOnSignal().install()
    done = run_worker(args.study, args.storage, should_stop=stop)
    reason = f"stopped by {stop.received}" if stop.received else "finished"
    print(f"worker {reason}: {done} trials")
    return stop.exit_code


def _status(args: argparse.Namespace) -> int:
    from .sweep.status import study_status
    from .sweep.storage import default_storage_url
    from .sweep.study import load_study

    study, spec, _ = load_study(args.study, args.storage or default_storage_url(args.run_root))
    print(study_status(study, spec))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .sweep.report import (
        format_pivot,
        format_table,
        leaderboard,
        log_summary_to_wandb,
        prepare_report,
        summary_mode,
        write_html_report,
    )
    from .sweep.storage import default_storage_url
    from .sweep.study import load_study

    url = args.storage or default_storage_url(args.run_root)
    study, spec, overrides = load_study(args.study, url)
    data, pivot = prepare_report(study, spec, args.run_root, args.table)  # bad --table, nothing finished: errors
    print(format_table(leaderboard(study, spec)))
    if pivot is not None:
        print()
        print(format_pivot(pivot))
    out = Path(args.out or Path(args.run_root) / "reports" / args.study)
    index = write_html_report(study, spec, out, prepared=(data, pivot))
    print(f"report: {index}")
    mode = summary_mode(spec, overrides, args.wandb)
    if mode is not None:
        log_summary_to_wandb(study, spec, data, Path(args.run_root), pivot=pivot, mode=mode)
        print(f"W&B summary run: {args.study}-summary ({mode})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from .sweep.dashboard import serve
    from .sweep.storage import default_storage_url

    serve(args.study, args.storage or default_storage_url(args.run_root), port=args.port)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import fetch_wandb_config, format_comparison, reproduce

    stored = fetch_wandb_config(args.wandb, args.hash) if args.wandb else None
    comparison, target, _ = reproduce(args.hash, args.run_root, args.tolerance, stored_config=stored)
    print(format_comparison(comparison, target))
    return 0 if comparison.matches else 1


def _runs(args: argparse.Namespace) -> int:
    from .compare import format_runs, list_runs

    print(format_runs(list_runs(args.run_root, args.study, args.sort)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .compare import compare_runs
    from .runstore import RunStore

    store = RunStore(args.run_root)
    if args.study:
        runs = [r for r in store.runs() if r.config().sweep == args.study]
    else:
        runs = [store.find(h) for h in args.hashes]
    out = Path(args.out or Path(args.run_root) / "compare" / "-".join(r.hash[:6] for r in runs[:6]))
    text, index = compare_runs(runs, out)
    print(text)
    print(f"\nloss curves and page: {index}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import parse_adapter_specs, predict_file

    adapters = parse_adapter_specs(args.adapter, args.run_root)
    predict_file(adapters, args.input, args.output, base=args.base, task=args.task, run_root=args.run_root,
                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorasweep", description="Run, track and compare LoRA sweeps.")
    parser.add_argument("--version", action="version", version=f"lorasweep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="one LoRA run from conf/ plus Hydra overrides (key=value ...)")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. lora=all lora.rank=16 optim.lr=1e-3")
    train.add_argument("--cfg", action="store_true", help="print the composed config and its hash; do not run")
    train.add_argument("--force", action="store_true", help="rerun even if this config hash has a complete run")
    train.add_argument("--slurm", action="store_true", help="submit slurm/train.sbatch (cluster=... settings)")
    train.add_argument("--dry-run", action="store_true", help="with --slurm: print the script, submit nothing")
    train.set_defaults(func=_train)
    _add_source_options(train, run_root_override=True)

    sweep = sub.add_parser("sweep", help="an Optuna sweep from sweeps/SPEC.yaml with K local workers")
    sweep.add_argument("spec", help="sweep spec, e.g. sweeps/rank_alpha_targets.yaml")
    sweep.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial")
    sweep.add_argument("--workers", type=int, default=1, help="local worker processes; 0: create and queue only")
    sweep.add_argument("--n-trials", type=int, default=None, help="trial budget (default: the spec's)")
    sweep.add_argument("--storage", default=None, help="sqlite:///F, journal:///F or postgresql://... "
                                                      "(default: sqlite under the run root)")
    sweep.add_argument("--study", default=None, help="study name (default: the spec's)")
    sweep.add_argument("--slurm", action="store_true",
                       help="queue the trials, submit slurm/sweep_array.sbatch and return (cluster=... settings)")
    sweep.add_argument("--array", type=int, default=None, help="with --slurm: array tasks (default cluster.array)")
    sweep.add_argument("--dry-run", action="store_true", help="with --slurm: print the script, submit nothing")
    sweep.set_defaults(func=_sweep)
    _add_source_options(sweep, run_root_override=True)

    worker = sub.add_parser("worker", help="one sweep worker on an existing study (for SLURM or any launcher)")
    worker.add_argument("--study", required=True)
    worker.add_argument("--storage", required=True)
    worker.set_defaults(func=_worker)
    _add_source_options(worker)

    status = sub.add_parser("status", help="trial states of a study next to its SLURM jobs' queue state")
    status.add_argument("--study", required=True)
    status.add_argument("--storage", default=None, help="default: sqlite under the run root")
    status.add_argument("--run-root", default="runs")
    status.set_defaults(func=_status)

    report = sub.add_parser("report", help="leaderboard, HTML report with plots, W&B summary run")
    report.add_argument("--study", required=True)
    report.add_argument("--storage", default=None)
    report.add_argument("--run-root", default="runs")
    report.add_argument("--out", default=None, help="report folder (default: RUN_ROOT/reports/STUDY)")
    report.add_argument("--wandb", default="auto", choices=["auto", "offline", "online", "none"],
                        help="the W&B summary run; auto: in the trials' own W&B mode, none if they were not tracked")
    report.add_argument("--table", nargs=2, default=None, metavar=("ROW", "COL"),
                        help="paper-style pivot: rows one searched param, columns another, cells the best objective")
    report.set_defaults(func=_report)

    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on 127.0.0.1, live on the study's storage")
    dashboard.add_argument("--study", required=True)
    dashboard.add_argument("--storage", default=None, help="default: sqlite under the run root")
    dashboard.add_argument("--run-root", default="runs")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(func=_dashboard)

    repro = sub.add_parser("reproduce", help="rerun a run from its config hash and compare every metric")
    repro.add_argument("hash", help="config hash or a unique prefix of one")
    repro.add_argument("--run-root", default="runs")
    repro.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT",
                       help="find the config in W&B (config.config_hash == HASH) instead of the run store")
    repro.add_argument("--tolerance", type=float, default=None,
                       help="relative tolerance (default: bitwise on CPU, 1e-4 on GPU)")
    repro.set_defaults(func=_reproduce)
    _add_source_options(repro)

    runs = sub.add_parser("runs", help="a table of the runs in the run store")
    runs.add_argument("--run-root", default="runs")
    runs.add_argument("--study", default=None)
    runs.add_argument("--sort", default=None, metavar="COLUMN", help="e.g. eval/loss or rank")
    runs.set_defaults(func=_runs)

    compare = sub.add_parser("compare", help="config differences, metrics side by side, loss curves")
    compare.add_argument("hashes", nargs="*")
    compare.add_argument("--study", default=None)
    compare.add_argument("--run-root", default="runs")
    compare.add_argument("--out", default=None)
    compare.set_defaults(func=_compare)

    predict = sub.add_parser("predict", help="one pass over a batch whose lines each use their own adapter")
    predict.add_argument("--adapter", action="append", default=[], metavar="NAME=HASH_OR_DIR",
                         help="an adapter (a run hash, a run directory or an adapter directory); repeatable")
    predict.add_argument("--input", required=True, help='JSON lines: {"text": ..., "adapter": NAME or "base"}')
    predict.add_argument("--output", default=None, help="JSON lines out (default: stdout)")
    predict.add_argument("--base", default=None, help="base model: a model config name (minilm, tiny_gpt2, ...) or a "
                         "hub-format dir (default: the adapters' runs' model, else the packaged minilm)")
    predict.add_argument("--run-root", default="runs")
    predict.add_argument("--task", choices=["classification", "causal_lm"], default=None,
                         help="default: from the adapters' task_type")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--max-new-tokens", type=int, default=32)
    predict.set_defaults(func=_predict)

    demo = sub.add_parser("demo", help="LoRA vs full fine-tuning on the packaged MiniLM: parameters and memory")
    demo.add_argument("--rank", type=int, default=8)
    demo.add_argument("--alpha", type=float, default=16)
    demo.set_defaults(func=_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from optuna.exceptions import StorageInternalError

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


def _add_source_options(parser: argparse.ArgumentParser, run_root_override: bool = False) -> None:
    """--config-dir on every command that composes configs; --run-root as a synonym of run_root=DIR."""
    parser.add_argument("--config-dir", default=None, metavar="DIR",
                        help="config groups searched before ./conf and the packaged ones (model/my_llama.yaml ...)")
    if run_root_override:
        parser.add_argument("--run-root", default=None, metavar="DIR", help="the same as the override run_root=DIR")


def _one_run_root_spelling(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`run_root=DIR` also works where the option is `--run-root DIR` (runs, report, compare, ...)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in commands or "overrides" in {a.dest for a in commands[command]._actions}:
        return argv  # train/sweep: run_root=DIR is a Hydra override; --run-root is turned into one in main
    out = []
    for arg in argv:
        out += ["--run-root", arg.split("=", 1)[1]] if arg.startswith("run_root=") else [arg]
    return out


def _apply_source_options(args: argparse.Namespace) -> None:
    import os

    from .sources import CONFIG_DIR_ENV, find_spec, user_config_dirs

    if getattr(args, "config_dir", None):  # exported: local workers and SLURM jobs compose from it too
        os.environ[CONFIG_DIR_ENV] = str(user_config_dirs(args.config_dir)[0])
    if hasattr(args, "overrides") and getattr(args, "run_root", None):
        args.overrides = [*args.overrides, f"run_root={args.run_root}"]
    if getattr(args, "spec", None):
        args.spec = str(find_spec(args.spec))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _one_run_root_spelling(parser, list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    # Hydra overrides may come after flags (`sweep SPEC --slurm cluster=slurm`): argparse stops collecting
    # positionals at the first flag, so gather the key=value leftovers; anything else is still an error.
    strays = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if strays:
        parser.error(f"unrecognized arguments: {' '.join(strays)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    _quiet_libraries()
    try:
        _apply_source_options(args)
        return args.func(args)
    except _user_errors() as exc:
        message = " ".join(str(exc).split())  # one line, whatever the library put in it
        print(f"lorasweep: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
