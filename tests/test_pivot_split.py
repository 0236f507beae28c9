"""`--table ROW COL SPLIT`: rank x variant with one column per variant and LoRA+ ratio (sweeps/variants.yaml)."""

from pathlib import Path

import pytest
import yaml

from lorasweep.errors import UserError
from lorasweep.sweep.report.collect import ReportData, TrialRow
from lorasweep.sweep.report.pivot import format_pivot, make_pivot, pivot_html
from lorasweep.sweep.spec import parse_spec

SPEC = parse_spec(yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "variants.yaml").read_text()), "variants")


def _row(number, rank, variant, ratio, accuracy):
    params = {"lora.rank": rank, "lora": variant, "optim.lora_plus_ratio": ratio}
    return TrialRow(number, "COMPLETE", "complete", params, {"eval/accuracy": accuracy}, {}, "", None)


def _data(rows):
    return ReportData("variants", SPEC, rows, ["maximize"], set())


def test_split_columns_show_every_searched_value():
    rows = [
        _row(0, 4, "qv", 1.0, 0.80),
        _row(1, 4, "qv", 16.0, 0.85),
        _row(2, 4, "qv_dora", 16.0, 0.90),
        _row(3, 64, "qv_rslora", 1.0, 0.70),
    ]
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


def test_split_through_the_cli(tmp_path, capsys):
    """`report --table ROW COL --split KEY`, as docs/variants.md runs it."""
    import optuna
    from test_report import SPEC as REPORT_SPEC
    from test_report import recorded_study

    from lorasweep.cli.main import main

    ratio = {"optim.lora_plus_ratio": {"type": "categorical", "choices": [1.0, 16.0]}}
    spec = {**REPORT_SPEC, "n_trials": 3, "params": {**REPORT_SPEC["params"], **ratio}}  # rank x targets x ratio
    done = optuna.trial.TrialState.COMPLETE
    trials = [
        (done, {"lora.rank": 2, "lora.targets": "qv", "optim.lora_plus_ratio": 1.0}, 0.5, {}, {}),
        (done, {"lora.rank": 2, "lora.targets": "qv", "optim.lora_plus_ratio": 16.0}, 0.4, {}, {}),
        (done, {"lora.rank": 8, "lora.targets": "all", "optim.lora_plus_ratio": 16.0}, 0.3, {}, {}),
    ]
    _, _, url = recorded_study(tmp_path, trials, spec)
    args = [
        "report",
        "--study",
        "rt",
        "--storage",
        url,
        "--run-root",
        str(tmp_path / "runs"),
        "--wandb",
        "none",
        "--out",
        str(tmp_path / "out"),
        "--table",
        "lora.rank",
        "lora.targets",
    ]
    assert main([*args, "--split", "optim.lora_plus_ratio"]) == 0
    text = capsys.readouterr().out
    assert "per lora.rank x lora.targets, optim.lora_plus_ratio" in text and "qv, 16" in text
    assert main(["report", "--study", "rt", "--storage", url, "--split", "optim.lora_plus_ratio"]) == 2
    assert "--split goes with --table" in capsys.readouterr().err
