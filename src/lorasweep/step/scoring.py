"""The figures each task is judged by, from what evaluation collected: pure functions, float64, no sampling.

Classification works from the confusion matrix (summed over processes, so exact on any number of them);
regression from every prediction in eval order (gathered). GLUE's conventions: F1 is the F1 of label 1 for two
classes and the macro mean otherwise; Matthews' correlation is the multiclass form (Gorodkin), as scikit-learn's.
"""

from __future__ import annotations

import math

import numpy as np


def classification_scores(confusion: np.ndarray) -> dict[str, float]:
    """confusion[true, predicted] counts -> eval/accuracy, eval/f1, eval/matthews."""
    c = np.asarray(confusion, dtype=np.float64)
    total = c.sum()
    true, predicted, hits = c.sum(axis=1), c.sum(axis=0), np.diag(c)
    if len(c) == 2:
        f1 = _f1(hits[1], predicted[1], true[1])
    else:
        present = (true + predicted) > 0
        f1 = float(np.mean([_f1(hits[k], predicted[k], true[k]) for k in np.flatnonzero(present)]))
    cov_tp = hits.sum() * total - true @ predicted
    denominator = math.sqrt((total**2 - predicted @ predicted) * (total**2 - true @ true))
    return {
        "eval/accuracy": float(hits.sum() / max(total, 1)),
        "eval/f1": f1,
        "eval/matthews": float(cov_tp / denominator) if denominator else 0.0,
    }


def _f1(hits: float, predicted: float, true: float) -> float:
    return float(2 * hits / (predicted + true)) if predicted + true else 0.0


def regression_scores(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """eval/mse, eval/pearson, eval/spearman (Pearson on average ranks; NaN where either side is constant)."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    return {
        "eval/mse": float(np.mean((x - y) ** 2)),
        "eval/pearson": pearson(x, y),
        "eval/spearman": pearson(average_ranks(x), average_ranks(y)),
    }


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denominator) if denominator else float("nan")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (scipy.stats.rankdata's "average")."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # ranks start+1 .. end, averaged
            start = end
    return ranks
