"""`lorasweep runs` (a table of runs) and `lorasweep compare` (config differences, metrics side by side, loss
curves as PNG and HTML)."""

from __future__ import annotations

import html
from pathlib import Path

from .config import flatten
from .errors import UserError
from .fileio import atomic_write_text
from .lora.targets import targets_label
from .metrics import final_names
from .runstore import RunDir, RunStore
from .tables import format_rows

COLUMNS = ("hash", "model", "targets", "rank", "alpha", "trainable_fraction", "optimizer_bytes", "peak_bytes",
           "eval/loss", "eval/accuracy", "state", "step")


def run_row(run: RunDir) -> dict:
    cfg = run.config()
    metrics = run.record()  # pruned, failed and interrupted runs have their figures too
    targets = cfg.lora.targets
    return {
        "hash": run.hash,
        "model": cfg.model.name,
        "targets": targets_label(targets),
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "trainable_fraction": metrics.get("params/trainable_fraction"),
        "optimizer_bytes": metrics.get("memory/optimizer_state_bytes"),
        "eval/loss": metrics.get("eval/loss"),
        "eval/accuracy": metrics.get("eval/accuracy"),
        "peak_bytes": metrics.get("memory/peak_bytes"),
        "state": run.status(),
        "step": metrics.get("step"),
        "sweep": cfg.sweep,
    }


def list_runs(run_root: str | Path, study: str | None = None, sort: str | None = None) -> list[dict]:
    rows = [run_row(r) for r in RunStore(run_root).runs()]
    if study:
        rows = [r for r in rows if r["sweep"] == study]
    if sort:
        if rows and sort not in rows[0]:
            raise UserError(f"cannot sort by {sort!r}: choose one of {', '.join(COLUMNS)}")
        rows.sort(key=lambda r: (r[sort] is None, r[sort] if r[sort] is not None else 0))
    return rows


def format_runs(rows: list[dict]) -> str:
    return format_rows(rows, COLUMNS)


def config_differences(runs: list[RunDir]) -> dict[str, list]:
    """Only the keys whose value differs between the runs."""
    flats = [flatten(r.config()) for r in runs]
    keys = sorted(set().union(*flats))
    return {k: [f.get(k) for f in flats] for k in keys if len({repr(f.get(k)) for f in flats}) > 1}


def compare_runs(runs: list[RunDir], out_dir: Path) -> tuple[str, Path]:
    """A text summary (differences and metrics) and an HTML page with the overlaid loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(runs) < 2:
        raise UserError("compare needs at least two runs")
    diffs = config_differences(runs)
    metrics = [r.record() for r in runs]
    keys = [k for k in final_names() if any(k in m for m in metrics)]  # the registry's order
    names = [r.hash for r in runs]  # one column per run, separated however long the values (tables.py)
    diff_rows = [{"key": k, **{n: _num(v) for n, v in zip(names, values)}} for k, values in diffs.items()]
    metric_rows = [{"metric": "status", **{n: r.status() for n, r in zip(names, runs)}},
                   {"metric": "step", **{n: _num(m.get("step")) for n, m in zip(names, metrics)}},
                   *({"metric": k, **{n: _num(m.get(k)) for n, m in zip(names, metrics)}} for k in keys)]
    lines = ["config differences:", format_rows(diff_rows, ["key", *names]), "",
             "final metrics:", format_rows(metric_rows, ["metric", *names])]

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        history = run.history()
        train_points = [(h["step"], h["train/loss"]) for h in history if "train/loss" in h]
        eval_points = [(h["step"], h["eval/loss"]) for h in history if "eval/loss" in h]
        if train_points:
            axes[0].plot(*zip(*train_points), label=run.hash)
        if eval_points:
            axes[1].plot(*zip(*eval_points), "o-", label=run.hash)
    for ax, title in zip(axes, ("train/loss", "eval/loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.savefig(out_dir / "loss_curves.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    text = "\n".join(lines)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>compare</title></head><body>"
            f"<h1>Runs {html.escape(', '.join(r.hash for r in runs))}</h1><pre>{html.escape(text)}</pre>"
            f"<img src='loss_curves.png' alt='loss curves'></body></html>")
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return text, index


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
