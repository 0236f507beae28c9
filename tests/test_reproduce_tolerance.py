"""`lorasweep reproduce HASH --tolerance T`: a rerun within a relative tolerance matches; bitwise it does not."""

import json

import pytest

from lorasweep.cli.main import main

TINY = [
    "model=tiny_gpt2",
    "data=synth_sft",
    "trainer=smoke",
    "trainer.max_steps=2",
    "tracking=none",
    "data.max_train_examples=16",
    "data.max_eval_examples=8",
    "data.max_length=32",
]


@pytest.mark.slow  # three tiny trainings (~25 s on 2 shared cores)
def test_tolerance_option_accepts_a_small_difference(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["train", *TINY, "--run-root", str(root)]) == 0
    (run,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    record = json.loads((run / "metrics.json").read_text())
    record["eval/loss"] *= 1 + 1e-5  # as if the original had summed in another order
    (run / "metrics.json").write_text(json.dumps(record))
    capsys.readouterr()

    assert main(["reproduce", run.name[:7], "--run-root", str(root), "--tolerance", "1e-3"]) == 0
    assert "all metrics within relative tolerance 0.001" in capsys.readouterr().out
    assert main(["reproduce", run.name, "--run-root", str(root), "--tolerance", "1e-7"]) == 1
    assert "metrics DIFFER" in capsys.readouterr().out
