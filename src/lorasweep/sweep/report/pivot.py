"""The paper-style table: rows one searched parameter, columns another, each cell the best objective of the
finished trials there (`lorasweep report --table lora.rank lora.targets`). An optional third parameter splits
every column by its values (`--table lora.rank lora optim.lora_plus_ratio`: rank x variant, one column per
variant and LoRA+ ratio), so no searched value is hidden inside a best-of."""

from __future__ import annotations

import html
from dataclasses import dataclass

from ...errors import UserError
from ...tables import cell
from ..spec import SweepSpec
from .collect import ReportData


@dataclass
class Pivot:
    row_key: str
    col_key: str
    metric: str
    direction: str
    row_values: list
    col_values: list
    cells: dict  # (row value, column value) -> (best value, trial number); a split column's value is a tuple
    split_key: str | None = None

    def best_cell(self):
        if not self.cells:
            return None
        pick = min if self.direction == "minimize" else max
        return pick(self.cells, key=lambda k: self.cells[k][0])

    def as_rows(self) -> list[dict]:
        """One dict per row value: {row_key: value, <column value>: best, ...} (the W&B table)."""
        out = []
        for r in self.row_values:
            row = {self.row_key: r}
            for c in self.col_values:
                row[column_label(c)] = self.cells.get((r, c), (None, None))[0]
            out.append(row)
        return out

    @property
    def col_title(self) -> str:
        return self.col_key if self.split_key is None else f"{self.col_key}, {self.split_key}"


def column_label(value) -> str:
    """A column's heading: its value, or for a split column both values ("qv_dora, 16")."""
    return ", ".join(cell(v) for v in value) if isinstance(value, tuple) else cell(value)


def check_table_keys(spec: SweepSpec, keys) -> None:
    """`--table ROW COL [SPLIT]`: two or three different parameters the study searched."""
    names = [p.key for p in spec.params]
    for key in keys:
        if key not in names:
            raise UserError(
                f"--table: {key!r} is not a parameter study {spec.study!r} searched; searched: {', '.join(names)}"
            )
    if len(keys) not in (2, 3) or len(set(keys)) != len(keys):
        raise UserError(
            f"--table needs two different searched parameters (rows, columns) and optionally a third "
            f"that splits the columns, got {' '.join(keys)}"
        )


def make_pivot(data: ReportData, row_key: str, col_key: str, split_key: str | None = None) -> Pivot:
    check_table_keys(data.spec, [row_key, col_key] + ([split_key] if split_key else []))
    objective = data.spec.objectives[0]
    better = (lambda a, b: a < b) if objective.direction == "minimize" else (lambda a, b: a > b)
    cells: dict = {}
    for row in data.finished:
        value = row.objectives.get(objective.metric)
        col = row.params.get(col_key)
        if split_key is not None:
            col = None if row.params.get(split_key) is None else (col, row.params.get(split_key))
        key = (row.params.get(row_key), col)
        if value is None or None in key or (isinstance(col, tuple) and None in col):
            continue
        if key not in cells or better(value, cells[key][0]):
            cells[key] = (value, row.number)
    columns = _values(data.spec, col_key, [k[1][0] if split_key else k[1] for k in cells])
    if split_key is not None:
        splits = _values(data.spec, split_key, [k[1][1] for k in cells])
        columns = [(c, v) for c in columns for v in splits]
    return Pivot(
        row_key,
        col_key,
        objective.metric,
        objective.direction,
        _values(data.spec, row_key, [k[0] for k in cells]),
        columns,
        cells,
        split_key,
    )


def _values(spec: SweepSpec, key: str, seen: list) -> list:
    """Categorical params in their spec order; ranges as the sorted values the trials took."""
    param = next(p for p in spec.params if p.key == key)
    if param.type == "categorical":
        return list(param.choices)
    return sorted(set(seen))


def format_pivot(pivot: Pivot) -> str:
    corner = f"{pivot.row_key} \\ {pivot.col_title}"
    header = [corner, *[column_label(c) for c in pivot.col_values]]
    body = [[str(r), *[_cell(pivot, r, c) for c in pivot.col_values]] for r in pivot.row_values]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [f"best {pivot.metric} ({pivot.direction}) per {pivot.row_key} x {pivot.col_title}"]
    lines += [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths)))
        for line in [header, *body]
    ]
    return "\n".join(lines)


def _cell(pivot: Pivot, r, c) -> str:
    value = pivot.cells.get((r, c), (None, None))[0]
    return "-" if value is None else f"{value:.4f}"


def pivot_html(pivot: Pivot) -> str:
    best = pivot.best_cell()
    head = "".join(f"<th>{html.escape(column_label(c))}</th>" for c in pivot.col_values)
    body = []
    for r in pivot.row_values:
        cells = []
        for c in pivot.col_values:
            value, trial = pivot.cells.get((r, c), (None, None))
            text = html.escape(_cell(pivot, r, c))
            title = f" title='trial {trial}'" if trial is not None else ""
            cells.append(f"<td class='num{' best' if (r, c) == best else ''}'{title}>{text}</td>")
        body.append(f"<tr><th>{html.escape(cell(r))}</th>{''.join(cells)}</tr>")
    caption = (
        f"best {html.escape(pivot.metric)} ({pivot.direction}); rows {html.escape(pivot.row_key)}, "
        f"columns {html.escape(pivot.col_title)}; the best cell in bold"
    )
    return (
        f"<table class='pivot' id='pivot'><caption>{caption}</caption><tr><th>{html.escape(pivot.row_key)} \\ "
        f"{html.escape(pivot.col_title)}</th>{head}</tr>{''.join(body)}</table>"
    )
