"""Every metric a run reports: its name, meaning, better direction and unit, in one place.

Spec validation (which metrics a sweep may optimise), the run store (which metrics `reproduce` must match
bitwise), `runs`/`compare`/`report` (labels, units) and W&B (the summary of each history metric) all read this.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import TASKS


@dataclass(frozen=True)
class Metric:
    name: str
    meaning: str
    direction: str = ""  # minimize | maximize: a sweep may optimise it; "": it describes, it is not a goal
    unit: str = ""  # bytes | s | fraction | count | tokens/s | "" (a loss or an accuracy)
    deterministic: bool = True  # the same config and seed give it bitwise on CPU (not times, not RSS)
    final: bool = True  # in the run's record (metrics.json, W&B summary); False: logged per step only
    tasks: tuple[str, ...] = TASKS

    @property
    def label(self) -> str:
        """A short column title: the name's last part, spaces for underscores."""
        return self.name.split("/")[-1].replace("_", " ")


_CLS, _REG, _LM = ("classification",), ("regression",), ("causal_lm",)
# (name, meaning, unit, tasks) of the figures evaluation reports; each also has an eval/initial_ variant for the
# untrained model (trainer.eval_at_start). Every one but the loss and MSE is better when larger.
_EVAL = (
    ("accuracy", "share of eval examples classified right", "fraction", _CLS),
    ("f1", "F1 of label 1 for two classes (as GLUE), the macro mean of per-class F1 otherwise", "fraction", _CLS),
    ("matthews", "Matthews correlation of predicted and true labels (multiclass form)", "", _CLS),
    ("mse", "mean squared error of the predicted scores", "", _REG),
    ("pearson", "Pearson correlation of predicted and true scores", "", _REG),
    ("spearman", "Spearman rank correlation of predicted and true scores", "", _REG),
    ("perplexity", "exp(eval/loss): perplexity on the trained tokens", "", _LM),
    ("token_accuracy", "share of eval trained tokens predicted right (greedy)", "fraction", _LM),
    (
        "exact_match",
        "share of trainer.eval_generate eval examples whose greedy generation equals the reference (whitespace "
        "stripped)",
        "fraction",
        _LM,
    ),
)
_LOWER_IS_BETTER = ("mse", "perplexity")
METRICS: tuple[Metric, ...] = (
    Metric("eval/loss", "mean loss on the eval split at the last evaluation (regression: MSE)", "minimize"),
    *(
        Metric(f"eval/{n}", meaning, "minimize" if n in _LOWER_IS_BETTER else "maximize", unit, tasks=tasks)
        for n, meaning, unit, tasks in _EVAL
    ),
    Metric("eval/initial_loss", "eval loss of the untrained model (trainer.eval_at_start)"),
    *(
        Metric(f"eval/initial_{n}", f"{n} of the untrained model", unit=unit, tasks=tasks)
        for n, _, unit, tasks in _EVAL
    ),
    *(
        Metric(f"data/{split}_{k}", f"{split} split: {meaning}", unit="count")
        for split in ("train", "eval")
        for k, meaning in (
            ("rows", "rows read (after data.max_*_examples)"),
            ("dropped", "rows dropped: no trained token within data.max_length"),
            ("truncated", "rows cut to data.max_length"),
        )
    ),
    Metric("train/loss", "mean training loss over the last log_every steps", "minimize"),
    Metric("train/lr", "learning rate after the step", final=False),
    Metric("params/trainable", "parameters that get gradients: LoRA A and B, and the task head", "minimize", "count"),
    Metric("params/total", "every parameter of the model, LoRA included", unit="count"),
    Metric("params/trainable_fraction", "params/trainable ÷ params/total", "minimize", "fraction"),
    Metric("params/lora", "parameters in the LoRA A and B matrices", "minimize", "count"),
    Metric(
        "memory/base_weights_bytes",
        "bytes of the frozen base weights (quantized where the base is), buffers included",
        "minimize",
        "bytes",
    ),
    Metric("memory/trainable_bytes", "bytes of the trainable parameters", "minimize", "bytes"),
    Metric("memory/gradient_bytes", "bytes of their gradients (one per trainable parameter)", "minimize", "bytes"),
    Metric(
        "memory/optimizer_state_bytes",
        "bytes the optimizer holds (moments, step counters, 8-bit quantization statistics)",
        "minimize",
        "bytes",
    ),
    Metric(
        "memory/peak_bytes",
        "the run's own peak: CUDA max allocated; on CPU the process's peak resident set (interpreter, libraries "
        "and data included; docs/memory.md)",
        "minimize",
        "bytes",
        deterministic=False,
    ),
    Metric(
        "memory/tensor_peak_bytes",
        "the most bytes the run's tensors held at once (weights, gradients, optimizer state, activations): what "
        "memory/predicted_peak_bytes predicts; CUDA max allocated, CPU a live-tensor counter (docs/memory.md)",
        "minimize",
        "bytes",
        deterministic=False,
    ),
    Metric(
        "memory/pack_peak_bytes",
        "a packed run's pack peak since the pack started (every trial in it, the frozen base once; "
        "lorasweep/pack/): in place of memory/peak_bytes, which a pack cannot split per run",
        "minimize",
        "bytes",
        deterministic=False,
    ),
    Metric(
        "memory/predicted_peak_bytes",
        "the peak of one training step predicted before the run (lorasweep "
        "estimate: live tensors; CUDA: what max allocated reports; docs/memory.md)",
        "minimize",
        "bytes",
    ),
    Metric(
        "memory/predicted_eval_peak_bytes",
        "the peak of one evaluation batch (trainer.eval_batch_size) predicted before the run",
        "minimize",
        "bytes",
    ),
    Metric(
        "trainer/micro_batch",
        "examples per forward pass when trainer.micro_batch is set (auto: chosen to fit)",
        unit="count",
    ),
    Metric(
        "memory/fit_limit_bytes",
        "what trainer.micro_batch=auto fitted the prediction into: a cap, the free memory less "
        "cluster.memory_margin, or a packed trial's share (docs/memory.md)",
        unit="bytes",
        deterministic=False,
    ),
    Metric("perf/loop_time_s", "seconds inside the training loop", "minimize", "s", deterministic=False),
    Metric(
        "perf/step_time_s",
        "seconds per optimizer step (evaluation and checkpoints excluded)",
        unit="s",
        deterministic=False,
        final=False,
    ),
    Metric(
        "perf/tokens_per_s",
        "input tokens per second of training, all processes",
        unit="tokens/s",
        deterministic=False,
        final=False,
    ),
)
BY_NAME = {m.name: m for m in METRICS}
# The figure each task is read by first (GLUE: accuracy; STS-B: Pearson; SFT: the eval loss): tables lead with it.
HEADLINE = {"classification": "eval/accuracy", "regression": "eval/pearson", "causal_lm": "eval/loss"}


def objective_names(task: str) -> set[str]:
    """Final metrics of `task` that a sweep may optimise."""
    return {m.name for m in METRICS if m.direction and m.final and task in m.tasks}


def deterministic_metrics(metrics: dict) -> dict:
    """The metrics that depend only on the config and seed (what `reproduce` compares bitwise on CPU)."""
    return {k: v for k, v in metrics.items() if k in BY_NAME and BY_NAME[k].deterministic}


def is_final_metric(name: str) -> bool:
    return name in BY_NAME and BY_NAME[name].final


def final_names() -> list[str]:
    return [m.name for m in METRICS if m.final]


def label(name: str) -> str:
    return BY_NAME[name].label if name in BY_NAME else name
