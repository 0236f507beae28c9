"""Labels of classification and regression rows: integer ids, string names in a fixed recorded order, or floats.

String labels map to ids in the order of `data.label_names`, or else of the train split's names sorted (as
run_glue.py does); a hub dataset's ClassLabel feature gives its own names. The names travel with the tokenised
data and the adapter (labels.json), so `predict`, `runs` and the report show them.
"""

from __future__ import annotations

import math

import datasets

from ..errors import UserError


def label_names(cfg, train: datasets.Dataset) -> list[str] | None:
    """The names of the label ids (index = id), or None where labels are plain integers without names."""
    if cfg.task != "classification":
        return None
    feature = train.features.get(cfg.label_field)
    values = unique_values(train, cfg.label_field)
    strings = [v for v in values if isinstance(v, str)]
    if cfg.label_names is not None:
        names = [str(n) for n in cfg.label_names]
        if len(set(names)) != len(names):
            raise UserError(f"data.label_names has duplicates: {', '.join(names)}")
    elif strings:
        names = sorted(strings)
    elif isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:
        return None
    if len(names) != cfg.num_labels:
        raise UserError(
            f"{len(names)} label names ({', '.join(names)}) but data.num_labels={cfg.num_labels}; "
            f"set data.num_labels={len(names)}"
        )
    return names


def check_labels(ds: datasets.Dataset, cfg, split: str, names: list[str] | None) -> None:
    """Every label of the split fits the task: ids in [0, num_labels), names known to train, or numbers."""
    values = unique_values(ds, cfg.label_field)
    where = f"split {split!r} (data.label_field={cfg.label_field!r})"
    if cfg.task == "regression":
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise UserError(f"data.task=regression needs numeric labels; {where} has {_shown(bad)}")
        return
    floats = [v for v in values if isinstance(v, float)]
    if floats:
        raise UserError(
            f"float labels in {where} ({_shown(floats)}) for data.task=classification; "
            "for scores set data.task=regression"
        )
    if names is not None and any(isinstance(v, str) for v in values):
        unknown = [v for v in values if v not in names]
        if unknown:
            raise UserError(f"label {_shown(unknown)} in {where} is not among the train labels: {', '.join(names)}")
        return
    n = cfg.num_labels
    bad = [v for v in values if type(v) is not int or not 0 <= v < n]
    if bad:
        raise UserError(f"labels outside [0, {n}) in {where} (data.num_labels={n}): {_shown(bad)}")


def encode_labels(values: list, cfg, names: list[str] | None) -> list:
    """The training targets: ids for classification (names looked up), floats for regression."""
    if cfg.task == "regression":
        return [float(v) for v in values]
    if names is None:
        return list(values)
    index = {n: i for i, n in enumerate(names)}
    return [index[v] if isinstance(v, str) else v for v in values]


def unique_values(ds: datasets.Dataset, column: str) -> list:
    """A column's distinct values; also where Arrow cannot (a JSON column of mixed types)."""
    try:
        return ds.unique(column)
    except Exception:  # pyarrow's ArrowNotImplementedError for extension types, and the like
        seen = {}
        for value in ds[column]:
            seen.setdefault(repr(value), value)
        return list(seen.values())


def _shown(values: list) -> str:
    return ", ".join(repr(v) for v in sorted(values, key=repr)[:5])
