"""What a new user still hit (issue 20), through the CLI: one validation path before anything is written, lock
files that do not outlive their run, a spec that is not a mapping, a base-model difference named, a missing
`# @package _global_` hinted, a W&B summary only for tracked sweeps, tables that tell runs apart."""

import textwrap

import pytest
from omegaconf import OmegaConf

from lorasweep.cli.main import main
from lorasweep.config.schema import compose
from lorasweep.serve.predict import base_config

SMALL = [
    "trainer=smoke",
    "trainer.max_steps=2",
    "tracking=none",
    "data.max_train_examples=32",
    "data.max_eval_examples=16",
    "data.max_length=24",
]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lorasweep: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("cfg_only", [False, True])
@pytest.mark.parametrize(
    "override, message",
    [
        ("data=synth_sft", "minilm (bert) is an encoder and cannot be trained as a causal LM"),
        ("lora.targets=qvx", "unknown target preset 'qvx'"),
        ("lora.targets=[querry]", "target module 'querry' matches no linear module"),
        ("lora.rank=500", "LoRA rank 500 exceeds min(d_in, d_out) = 384"),
    ],
)
def test_train_and_cfg_refuse_the_same_configs_before_writing(tmp_path, capsys, override, message, cfg_only):
    root = tmp_path / "runs"
    args = ["train", *(["--cfg"] if cfg_only else []), override, f"run_root={root}"]
    assert main(args) == 2
    _one_line_error(capsys, message)
    assert not root.exists()  # no run directory, no lock, no holder file


def test_a_run_root_that_cannot_be_written_is_named(tmp_path, capsys):
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    assert main(["train", f"run_root={a_file / 'runs'}"]) == 2
    _one_line_error(capsys, f"run root {a_file / 'runs'}: {a_file} is a file, not a directory", "run_root=DIR")
    assert main(["train", "--cfg", "run_root=/proc/x/runs"]) == 2
    _one_line_error(capsys, "run root /proc/x/runs cannot be created or written", "run_root=DIR")


def test_a_finished_run_leaves_no_lock_files_beside_the_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["train", *SMALL, f"run_root={root}"]) == 0
    capsys.readouterr()
    top = sorted(p.name for p in root.iterdir())
    assert not [n for n in top if "lock" in n and n != ".locks"], top
    assert [p.suffix for p in (root / ".locks").iterdir()] == [".lock"]  # the flock file only; no holder


@pytest.mark.parametrize(
    "text, kind", [("hello world, this is not a spec\n", "plain string"), ("- lora.rank\n- lora.alpha\n", "list")]
)
def test_a_spec_that_is_not_a_mapping_says_so(tmp_path, capsys, text, kind):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main(["sweep", str(spec), f"run_root={tmp_path / 'runs'}"]) == 2
    _one_line_error(capsys, f"a sweep spec is a YAML mapping (study:, params:, ...), got a {kind}")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_choice_is_checked_like_a_train_config(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("params:\n  lora.targets: {type: categorical, choices: [qv, qvx]}\n")
    assert main(["sweep", str(spec), *SMALL, f"run_root={tmp_path / 'runs'}"]) == 2
    _one_line_error(capsys, "sweep param lora.targets, value 'qvx': unknown target preset 'qvx'")
    assert not (tmp_path / "runs").exists()


def test_adapters_on_bases_that_differ_in_quantization_name_it(tmp_path):
    dirs = {}
    for name, quantization in (("q", "nf4"), ("a", "none")):
        run = tmp_path / name
        (run / "adapter").mkdir(parents=True)
        OmegaConf.save(compose([f"model.quantization={quantization}"]), run / "config.yaml")
        dirs[name] = run / "adapter"
    with pytest.raises(
        ValueError,
        match=r"q: minilm \(model.quantization=nf4\), a: minilm "
        r"\(model.quantization=none\)",
    ):
        base_config(dirs, None, "classification", 2)


def test_a_local_file_without_its_package_line_gets_a_hint(tmp_path, monkeypatch, capsys):
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "conf" / "local" / "default.yaml").write_text("trainer:\n  max_steps: 3\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--cfg"]) == 2
    _one_line_error(capsys, "Key 'local' not in 'TrainConfig'", "first line must be `# @package _global_`")
    (tmp_path / "conf" / "local" / "default.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 3\n")
    assert main(["train", "--cfg"]) == 0
    assert "max_steps: 3" in capsys.readouterr().out


@pytest.fixture(scope="module")
def untracked_sweep(tmp_path_factory):
    """A two-point grid whose spec fixes tracking=none and α=16 (not searched), one adamw8bit run beside it."""
    root = tmp_path_factory.mktemp("sweep") / "runs"
    spec = root.parent / "spec.yaml"
    spec.write_text(
        textwrap.dedent("""
        study: quiet
        sampler: {name: grid}
        pruner: {name: none}
        fixed: [tracking=none, lora.alpha=16]
        params:
          lora.rank: {type: categorical, choices: [2, 4]}
        """)
    )
    assert main(["sweep", str(spec), *SMALL, f"run_root={root}"]) == 0
    assert main(["train", *SMALL, "optim.name=adamw8bit", "lora.rank=2", f"run_root={root}"]) == 0
    return root


def test_report_writes_no_wandb_run_for_an_untracked_sweep(untracked_sweep, capsys):
    root = untracked_sweep
    assert main(["report", "--study", "quiet", "--run-root", str(root)]) == 0
    assert "W&B summary" not in capsys.readouterr().out
    assert not (root / "wandb").exists()
    assert main(["report", "--study", "quiet", "--run-root", str(root), "--wandb", "offline"]) == 0  # asked
    assert "W&B summary run: quiet-summary (offline)" in capsys.readouterr().out
    assert (root / "wandb").is_dir()


def test_tables_show_alpha_quantization_and_optimizer(untracked_sweep, capsys):
    root = untracked_sweep
    assert main(["status", "--study", "quiet", "--run-root", str(root)]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()[2:]
    alpha = header.split().index("alpha")
    assert [r.split()[alpha] for r in rows] == ["16", "16"]  # fixed α, not searched: still shown
    assert "every trial: quant none, optim adamw" in out
    assert main(["runs", "--run-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    columns = lines[0].split()
    assert "quant" in columns and "optim" in columns
    optims = sorted(line.split()[columns.index("optim")] for line in lines[1:])
    assert optims == ["adamw", "adamw", "adamw8bit"]


def test_eight_bit_run_says_its_small_matrices_kept_32_bit_state(tmp_path, capsys):
    assert main(["train", *SMALL, "optim.name=adamw8bit", "lora.rank=2", f"run_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "all the trainable parameters are in tensors under optim.min_8bit_size=4096 elements and keep 32-bit" in out
    assert (
        main(["train", *SMALL, "optim.name=adamw8bit", "lora.rank=2", "optim.min_8bit_size=0", f"run_root={tmp_path}"])
        == 0
    )
    assert "32-bit" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "variant",
    [
        ["lora.dora=true"],
        ["lora.init=pissa"],
        ["lora.init=olora", "lora=all"],
        ["model=tiny_gpt2", "data=synth_sft", "lora.dora=true"],
    ],
)
def test_variants_pass_the_skeleton_check(capsys, variant):
    """DoRA and the weight-derived inits run on the meta skeleton too (no autocast, no SVD of real weights)."""
    assert main(["train", "--cfg", *variant]) == 0
    assert "# config hash: " in capsys.readouterr().out
