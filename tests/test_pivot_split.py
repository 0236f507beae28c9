"""`--table ROW COL SPLIT`: rank x variant with one column per variant and LoRA+ ratio (sweeps/variants.yaml)."""

from pathlib import Path

import pytest
import yaml

from lorasweep.errors import UserError
from lorasweep.sweep.report.data import ReportData, TrialRow
from lorasweep.sweep.report.pivot import format_pivot, make_pivot, pivot_html
from lorasweep.sweep.spec import parse_spec

SPEC = parse_spec(yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "variants.yaml").read_text()), "variants")


def _row(number, rank, variant, ratio, accuracy):
    params = {"lora.rank": rank, "lora": variant, "optim.lora_plus_ratio": ratio}
    return TrialRow(number, "COMPLETE", "complete", params, {"eval/accuracy": accuracy}, {}, "", None)


def _data(rows):
    return ReportData("variants", SPEC, rows, ["maximize"], set())


def test_split_columns_show_every_searched_value():
    rows = [_row(0, 4, "qv", 1.0, 0.80), _row(1, 4, "qv", 16.0, 0.85), _row(2, 4, "qv_dora", 16.0, 0.90),
            _row(3, 64, "qv_rslora", 1.0, 0.70)]
    pivot = make_pivot(_data(rows), "lora.rank", "lora", "optim.lora_plus_ratio")
    assert pivot.col_values[:2] == [("qv", 1.0), ("qv", 16.0)] and len(pivot.col_values) == 6
    text = format_pivot(pivot).splitlines()
    assert text[0] == "best eval/accuracy (maximize) per lora.rank x lora, optim.lora_plus_ratio"
    for heading in ("qv, 1", "qv, 16", "qv_rslora, 1", "qv_dora, 16"):
        assert f"  {heading}" in text[1]
    assert text[2].split()[1:] == ["0.8000", "0.8500", "-", "-", "-", "0.9000"]
    assert text[4].split()[1:] == ["-", "-", "0.7000", "-", "-", "-"]
    assert "<th>qv_dora, 16</th>" in pivot_html(pivot)
    plain = make_pivot(_data(rows), "lora.rank", "lora")  # without the split: the best over the ratio
    assert plain.cells[(4, "qv")] == (0.85, 1)


def test_split_key_must_be_a_third_searched_parameter():
    with pytest.raises(UserError, match="two different searched parameters"):
        make_pivot(_data([]), "lora.rank", "lora", "lora")
    with pytest.raises(UserError, match="not a parameter study"):
        make_pivot(_data([]), "lora.rank", "lora", "optim.lr")
