"""What a new user hit following the README (issue 10, items 6 and 7): `+key` on a typed group, two spellings
of the run root, predict without --base, reproduce --wandb without a key, compare's float columns."""

import json

import pytest
from omegaconf import OmegaConf

from lorasweep.cli.main import main
from lorasweep.config.schema import compose
from lorasweep.serve.predict import base_config

TINY = [
    "model=tiny_gpt2",
    "data=synth_sft",
    "trainer=smoke",
    "trainer.max_steps=2",
    "tracking=none",
    "data.max_train_examples=32",
    "data.max_eval_examples=16",
    "data.max_length=32",
    "sweep=newuser",
]
LRS = ("0.00021213559644391776", "0.0014936120510359183")  # what a log-uniform sampler draws


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two 2-step tiny GPT-2 SFT runs that differ only in a long float (optim.lr), in study `newuser`."""
    root = tmp_path_factory.mktemp("store") / "runs"
    for lr in LRS:
        assert main(["train", *TINY, f"optim.lr={lr}", "--run-root", str(root)]) == 0
    hashes = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert len(hashes) == 2
    return root, hashes


@pytest.mark.parametrize("override", ["+lora.rnk=4", "++lora.rnk=4", "+trainer.max_stpes=3", "+foo=1"])
def test_adding_a_key_is_an_error(override, capsys):
    assert main(["train", "--cfg", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key" in err
    with pytest.raises(ValueError, match="unknown config key"):
        compose([override])


def test_a_typo_is_not_answered_with_a_plus_hint(capsys):
    assert main(["train", "--cfg", "lora.rnk=4"]) == 2
    err = capsys.readouterr().err
    assert "Key 'rnk' not in 'LoraConfig'" in err and "+lora.rnk" not in err


def test_the_run_root_has_both_spellings_everywhere(tiny_runs, tmp_path, capsys):
    root, (a, b) = tiny_runs
    assert main(["train", "--cfg", "--run-root", str(tmp_path / "x")]) == 0
    assert f"run_root: {tmp_path / 'x'}" in capsys.readouterr().out
    assert main(["train", "--cfg", f"--run-root={tmp_path / 'y'}"]) == 0
    assert f"run_root: {tmp_path / 'y'}" in capsys.readouterr().out
    for command in (["runs"], ["compare", a, b, "--out", str(tmp_path / "cmp")]):
        assert main([*command, f"run_root={root}"]) == 0
        out = capsys.readouterr().out
        assert a in out and b in out
    assert main(["runs", "run_root=/nowhere/at/all"]) == 0
    assert a not in capsys.readouterr().out


def test_compare_by_study_separates_long_float_columns(tiny_runs, tmp_path, capsys):
    root, (a, b) = tiny_runs
    assert main(["compare", "--study", "newuser", "--run-root", str(root), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("optim.lr"))
    assert sorted(line.split()[1:]) == sorted(f"{float(lr):.6g}" for lr in LRS)  # two cells, not one run-on
    header = out.splitlines()[1].split()
    assert header[0] == "key" and sorted(header[1:]) == [a, b]


def test_predict_takes_the_base_model_from_the_run(tiny_runs, tmp_path, capsys):
    root, (a, b) = tiny_runs
    infile = tmp_path / "in.jsonl"
    infile.write_text(
        "".join(
            json.dumps({"text": t, "adapter": n}) + "\n"
            for t, n in (("Name a colour.", "a"), ("Say hi.", "b"), ("Count.", "base"))
        )
    )
    args = [
        "predict",
        "--adapter",
        f"a={a}",
        "--adapter",
        f"b={root / b}",
        "--input",
        str(infile),
        "--run-root",
        str(root),
        "--max-new-tokens",
        "3",
    ]
    assert main(args) == 0  # no --base: tiny_gpt2 rebuilt from the runs' config and seed
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["adapter"] for r in rows] == ["a", "b", "base"] and all("generation" in r for r in rows)
    assert main([*args, "--base", "tiny_gpt2"]) == 0  # --base overrides (here with the same model)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
    for base, message in (("minilm", "different base model"), (str(tmp_path / "no-model"), "model path not found")):
        assert main([*args, "--base", base]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_adapters_from_runs_on_different_bases_need_a_choice(tmp_path):
    dirs = {}
    for name, model in (("g", "tiny_gpt2"), ("l", "tiny_llama")):
        run = tmp_path / name
        (run / "adapter").mkdir(parents=True)
        OmegaConf.save(compose([f"model={model}", "data=synth_sft"]), run / "config.yaml")
        dirs[name] = run / "adapter"
    with pytest.raises(ValueError, match="different base models .*pass --base"):
        base_config(dirs, None, "causal_lm", None)
    assert base_config(dirs, "tiny_llama", "causal_lm", None).model.arch == "llama"
    assert base_config({"g": dirs["g"]}, None, "causal_lm", None).model.arch == "gpt2"
    assert base_config({}, None, "classification", 2).model.source == "packaged"


def test_reproduce_from_wandb_without_an_api_key_is_one_line(tiny_runs, tmp_path, monkeypatch, capsys):
    """No mock: without a key, wandb.Api() refuses before it contacts any server (none is reachable here)."""
    root, (a, _) = tiny_runs
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert main(["reproduce", a, "--wandb", "team/proj", "--run-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lorasweep: error: W&B (team/proj): ") and "API key" in err


def test_reproduce_on_fewer_processes_than_recorded_states_its_tolerance(tiny_runs, monkeypatch, capsys):
    from lorasweep.training import reproduce

    root, (a, _) = tiny_runs
    env_file = root / a / "env.json"
    original = env_file.read_text()
    env_file.write_text(json.dumps({**json.loads(original), "num_processes": 2}))
    monkeypatch.setattr(reproduce, "can_launch", lambda n: n == 1)  # as on a machine with one GPU
    try:
        assert main(["reproduce", a, "--run-root", str(root)]) == 0
    finally:
        env_file.write_text(original)
    out = capsys.readouterr().out
    assert "trained with 2 processes, rerun with 1" in out
    assert f"all metrics within relative tolerance {reproduce.CROSS_COUNT_TOLERANCE:g}" in out


@pytest.mark.slow
def test_reproduce_reruns_a_two_process_run_with_two_processes(tmp_path, capsys):
    import os
    import subprocess
    import sys

    from lorasweep.runs.store import RunStore

    overrides = [
        "trainer=smoke",
        "trainer.max_steps=3",
        "trainer.batch_size=8",
        "data.max_train_examples=48",
        "data.max_eval_examples=32",
        "data.max_length=32",
        "tracking=none",
        f"run_root={tmp_path}",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29537",
        "-m",
        "lorasweep.cli",
        "train",
        *overrides,
    ]
    done = subprocess.run(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = RunStore(tmp_path).runs()
    assert run.env()["num_processes"] == 2
    assert main(["reproduce", run.hash, "--run-root", str(tmp_path)]) == 0  # one process: it differed
    out = capsys.readouterr().out
    assert "all metrics bitwise equal" in out and "num_processes" not in out  # no drift in the count


def test_docs_list_every_key_left_out_of_the_hash_and_gitignore_has_slurm_logs():
    import re
    from pathlib import Path

    from lorasweep.config.schema import NON_SEMANTIC_KEYS

    repo = Path(__file__).resolve().parents[1]
    configs_doc = repo / "docs" / "configs.md"
    section = re.search(r"left out:(.*?)name the run", configs_doc.read_text(), re.S).group(1)
    listed = {k.removesuffix(".*") for k in re.findall(r"`([\w.*]+)`", section)} - {"config.NON_SEMANTIC_KEYS"}
    assert listed == set(NON_SEMANTIC_KEYS)
    assert "slurm-logs/" in (repo / ".gitignore").read_text().split()
