"""What the commands print: results, submissions and the one-line error, formatted for a terminal. The CLI
(cli/main.py) parses and calls; the library computes; this module words it."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import one_line

# Printed after the loss where a run has them: classification, regression, causal LM.
TASK_FIGURES = (
    "eval/accuracy",
    "eval/f1",
    "eval/matthews",
    "eval/pearson",
    "eval/spearman",
    "eval/perplexity",
    "eval/exact_match",
)


def print_result(cfg, metrics: dict) -> None:
    """`lorasweep train`'s summary of a finished (or reused) run."""
    run_dir = Path(cfg.run_root) / metrics["config_hash"]
    if metrics["status"] == "reused":
        print(f"config {metrics['config_hash']} already has a complete run in {run_dir} (use --force to rerun)")
    lines = [
        ("config hash", metrics["config_hash"]),
        ("status", metrics["status"]),
        (
            "trainable",
            f"{metrics['params/trainable']:,} / {metrics['params/total']:,} "
            f"({100 * metrics['params/trainable_fraction']:.3f}%)",
        ),
        ("optimizer state", f"{metrics['memory/optimizer_state_bytes'] / 2**20:.2f} MiB{eight_bit_note(cfg)}"),
        ("eval loss", f"{metrics.get('eval/loss', float('nan')):.4f}"),
    ]
    for name in TASK_FIGURES:  # the figures the run's task is judged by (docs/data.md)
        if name in metrics:
            initial = metrics.get(name.replace("eval/", "eval/initial_"))
            baseline = f"  (untrained: {initial:.4f})" if initial is not None else ""
            lines.append((name.replace("/", " ").replace("_", " "), f"{metrics[name]:.4f}{baseline}"))
    from ..runs.store import RunDir

    lines += memory_lines(metrics, RunDir(run_dir).env().get("device", ""))
    lines.append(("run directory", str(run_dir)))
    width = max(17, *(len(key) + 2 for key, _ in lines))  # the README's demo block: 17
    for key, value in lines:
        print(f"{key + ':':<{width}}{value}")


def memory_lines(metrics: dict, device: str) -> list[tuple[str, str]]:
    """The peak of the run's tensors, measured beside predicted (the same quantity: docs/memory.md), then on CPU
    the process's peak resident set, which is another: the interpreter, libraries and data are in it too."""
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    lines, measured = [], metrics.get("memory/tensor_peak_bytes")
    predicted = None
    if metrics.get("memory/predicted_peak_bytes"):
        from ..estimate.fit import run_peak  # a step's or an evaluation batch's, whichever is larger

        predicted = run_peak(metrics)[0]
    figures = [f"{mib(measured)} measured"] if measured else []
    figures += [f"{mib(predicted)} predicted"] if predicted else []
    if figures:
        lines.append(("peak tensors", ", ".join(figures)))
    if metrics.get("memory/peak_bytes") and not device.startswith("cuda"):  # on CUDA the same figure as above
        lines.append(("peak RSS", f"{mib(metrics['memory/peak_bytes'])} (the process: interpreter, libraries, data)"))
    return lines


def eight_bit_note(cfg) -> str:
    """adamw8bit keeps 32-bit state for tensors under optim.min_8bit_size elements: say so where that applies."""
    from ..choices import EIGHT_BIT_OPTIMIZERS
    from ..training.preflight import lora_skeleton

    model = lora_skeleton(cfg) if cfg.optim.name in EIGHT_BIT_OPTIMIZERS else None
    if model is None:
        return ""
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    small = sum(n for n in sizes if n < cfg.optim.min_8bit_size)
    if not small:
        return ""
    share = "all" if small == sum(sizes) else f"{100 * small / sum(sizes):.0f}% of"
    return (
        f" ({share} the trainable parameters are in tensors under optim.min_8bit_size="
        f"{cfg.optim.min_8bit_size} elements and keep 32-bit state; lower it to make them 8-bit)"
    )


def print_interrupted(metrics: dict, signal_name: str) -> None:
    print(
        f"lorasweep: {signal_name}: run {metrics['config_hash']} stopped at step {metrics['step']} "
        "(checkpointed); the same command resumes it",
        file=sys.stderr,
    )


def print_submission(result: dict, dry_run: bool) -> None:
    if dry_run:
        print(result["script"], end="")
        return
    what = (
        f"array job {result['job_id']} ({result['array']} workers) for study {result['study']}"
        if "study" in result
        else f"job {result['job_id']} for config {result['config_hash']}"
    )
    print(f"submitted {what}; script: {result['path']}")
    if "study" in result:
        print(f"follow it: lorasweep status --study {result['study']} --storage {result['storage']}")


def print_error(exc: BaseException) -> None:
    """Bad input as one line, whatever the library put in its message."""
    print(f"lorasweep: error: {one_line(exc)}", file=sys.stderr)
