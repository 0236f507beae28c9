"""The documented commands: `lorasweep estimate [--json] [--device]`, `sweep SPEC --estimate --memory-cap`, and
their bad input (one line, exit 2, nothing written)."""

import json
import textwrap

import pytest

from lorasweep.cli.main import main

LLAMA = ["model=tiny_llama", "data=synth_sft", "lora=all"]


def test_estimate_prints_the_account_as_text_and_json(tmp_path, capsys):
    assert main(["estimate", *LLAMA, "--json", "--run-root", str(tmp_path)]) == 0
    account = json.loads(capsys.readouterr().out)
    assert account["params/lora"] > 0 and account["device"] in ("cpu", "cuda")
    assert account["memory/predicted_peak_bytes"] > account["memory/base_weights_bytes"]
    assert main(["estimate", *LLAMA, "--device", "cpu", "--run-root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "predicted peak of a step" in text and "on cpu" in text
    assert not list(tmp_path.rglob("metrics.json"))  # nothing trained


@pytest.mark.slow
def test_estimate_of_llama3_8b_runs_offline_from_the_command_line(tmp_path, capsys):
    assert (
        main(
            [
                "estimate",
                "model=llama3_8b",
                "data=synth_sft",
                "lora=all",
                "lora.rank=16",
                "model.quantization=nf4",
                "trainer.gradient_checkpointing=true",
                "--json",
                "--run-root",
                str(tmp_path),
            ]
        )
        == 0
    )
    account = json.loads(capsys.readouterr().out)
    assert account["params/lora"] == 41_943_040 and account["memory/trainable_bytes"] == 167_772_160


def _spec(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        textwrap.dedent("""
        study: grid
        sampler: {name: grid}
        params:
          trainer.batch_size: {type: categorical, choices: [2, 64]}
          optim.lr: {type: categorical, choices: [0.001, 0.01]}
    """)
    )
    return str(path)


def test_sweep_estimate_prints_every_memory_point_and_the_cap(tmp_path, capsys):
    assert (
        main(
            [
                "sweep",
                _spec(tmp_path),
                *LLAMA,
                "trainer.eval_batch_size=4",
                "--estimate",
                "--memory-cap",
                "150MiB",
                "--device",
                "cpu",
                "--run-root",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("trainer.batch_size=2") == 2 and out.count("trainer.batch_size=64") == 2  # the grid's 4 points
    assert "OVER: predicted" in out and "> cap 150.0 MiB" in out and "fits" in out
    runs = tmp_path / "runs"  # at most the tokenised data's cache (the runs reuse it): nothing queued or trained
    assert not runs.exists() or [p.name for p in runs.iterdir()] == [".cache"]
    assert not list(tmp_path.rglob("*.db"))


@pytest.mark.parametrize(
    "args",
    [["sweep", "SPEC", "--memory-cap", "lots"], ["estimate", "model=llama3_8b", "model.name_or_path=nobody/nothing"]],
)
def test_bad_cap_or_unknown_architecture_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [_spec(tmp_path) if a == "SPEC" else a for a in args]
    before = sorted(tmp_path.iterdir())
    assert main([*args, "--run-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("--memory-cap: cannot read" in err or "config.json" in err)
    assert sorted(tmp_path.iterdir()) == before
