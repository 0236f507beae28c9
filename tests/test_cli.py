"""The command line: one clear line and a non-zero exit on bad input, nothing half-written."""

import pytest

from lorasweep.cli.main import main

FAST = ["trainer=smoke", "tracking=none", "data.max_train_examples=16", "data.max_eval_examples=8"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cfg_prints_config_and_hash(capsys):
    code, out, _ = _run(capsys, "train", "--cfg", "lora=all", "lora.rank=4")
    assert code == 0 and "rank: 4" in out and "targets: all" in out and "# config hash: " in out


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rnk=3", "Key 'rnk' not in 'LoraConfig'"),
        ("trainer.max_steps=-5", "trainer.max_steps must be > 0"),
        ("trainer.batch_size=0", "trainer.batch_size must be > 0"),
        ("data.source=local", "data path not found"),
        ("data.text_field=review", "review"),
        ("model.source=pretrained", "model.name_or_path is required"),
        ("model=roberta_base", "model path not found"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run_directory(capsys, tmp_path, override, message):
    extra = ["data.path=/no/such/dir"] if override == "data.source=local" else []
    if override == "model=roberta_base":
        extra = ["model.name_or_path=/no/such/model"]
    runs = tmp_path / "runs"
    code, _, err = _run(capsys, "train", *FAST, f"run_root={runs}", override, *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lorasweep: error: ") and message in err
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


@pytest.mark.slow
def test_demo_compares_lora_with_full_fine_tuning(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    full, qv, everything = [line.split() for line in out.splitlines()[1:4]]
    assert full[0] == "full" and qv[:2] == ["LoRA", "qv"] and everything[:2] == ["LoRA", "all"]
    assert float(qv[-1].rstrip("%")) < 1.0  # AdamW state shrinks with the trainable count: >99% saved


def test_a_bug_keeps_its_traceback_and_bad_input_is_one_line(capsys, monkeypatch, tmp_path):
    """Only UserError (and the config libraries' errors) become one line; a ValueError from a bug propagates."""
    import lorasweep.cli.compare
    from lorasweep.errors import UserError

    def buggy(*_args, **_kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(lorasweep.cli.compare, "list_runs", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["runs", "--run-root", str(tmp_path)])

    def refuse(*_args, **_kwargs):
        raise UserError("no such run root")

    monkeypatch.setattr(lorasweep.cli.compare, "list_runs", refuse)
    assert main(["runs", "--run-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "lorasweep: error: no such run root\n"
