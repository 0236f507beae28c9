"""The package outside the repository: the wheel ships conf/, sweeps/ and slurm/ from their one copy; a user's
own conf/ (in the working directory, or --config-dir) is searched before the packaged configs."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lorasweep.cli.main import main
from lorasweep.config.schema import compose, config_hash
from lorasweep.sources import CONFIG_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
_ANYWHERE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache")
# Only at the repository's root (or conf/local): src/lorasweep/runs/ is a package, not a run root.
_AT = {REPO: {"runs", "wandb", "build", "dist", "slurm-logs", "tests", "benchmarks"}, REPO / "conf": {"local"}}


def SKIP(folder, names):
    return set(_ANYWHERE(folder, names)) | (_AT.get(Path(folder), set()) & set(names))


@pytest.fixture(autouse=True)
def no_config_dir(monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, "")  # --config-dir exports it: restored after each test


@pytest.mark.slow
def test_wheel_ships_configs_specs_and_templates_and_runs_outside_the_repository(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=SKIP)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("lorasweep-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"lorasweep/{p.relative_to(REPO / 'src' / 'lorasweep').as_posix()}"
        for p in (REPO / "src" / "lorasweep").rglob("*.py")
        if (p.parent / "__init__.py").exists()
    }
    expected |= {
        f"lorasweep/conf/{p.relative_to(REPO / 'conf').as_posix()}"
        for p in (REPO / "conf").rglob("*.yaml")
        if "local" not in p.parts
    }
    expected |= {f"lorasweep/sweeps/{p.name}" for p in (REPO / "sweeps").glob("*.yaml")}
    expected |= {f"lorasweep/slurm_templates/{p.name}" for p in (REPO / "slurm").glob("*.sbatch")}
    expected.add("lorasweep/slurm_templates/launch.sh")  # the launcher both templates share
    expected |= {
        f"lorasweep/model/known_configs/{p.name}"  # the shipped big-model shapes (lorasweep estimate offline)
        for p in (REPO / "src" / "lorasweep" / "architectures").glob("*.json")
    }
    assert expected - names == set()
    assert not [n for n in names if n.startswith("lorasweep/conf/local/")]

    target, user = tmp_path / "installed", tmp_path / "user"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    user.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", CONFIG_DIR_ENV: ""}
    code = "import lorasweep, sys; from lorasweep.cli import main; print(lorasweep.__file__); sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "train", "--cfg"], cwd=user, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(str(target))  # the installed copy, not the repository
    assert done.stdout.strip().endswith(f"# config hash: {config_hash(compose())}")  # same hash, any source


def _user_conf(root: Path) -> Path:
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "model" / "my_tiny.yaml").write_text("name: my_tiny\nsource: tiny\narch: llama\n")
    return root / "conf"


def test_a_conf_folder_in_the_working_directory_is_searched_first(tmp_path, monkeypatch):
    packaged = config_hash(compose(["model=tiny_gpt2"]))
    conf = _user_conf(tmp_path)
    shutil.copy(REPO / "conf" / "model" / "tiny_gpt2.yaml", conf / "model")  # the same file, found first
    (conf / "lora").mkdir()
    (conf / "lora" / "qv.yaml").write_text("rank: 4\n")  # shadows the packaged lora/qv
    monkeypatch.chdir(tmp_path)
    assert compose(["model=my_tiny"]).model.arch == "llama"
    assert compose().lora.rank == 4
    assert config_hash(compose(["model=tiny_gpt2", "lora.rank=8"])) == packaged  # where it came from: no matter


def test_a_typo_in_the_users_conf_is_the_same_schema_error(tmp_path, monkeypatch, capsys):
    conf = _user_conf(tmp_path)
    (conf / "lora").mkdir()
    (conf / "lora" / "mine.yaml").write_text("rnk: 4\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="Key 'rnk' not in 'LoraConfig'"):
        compose(["lora=mine"])
    assert main(["train", "--cfg", "lora=mine"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Key 'rnk' not in 'LoraConfig'" in err


def test_config_dir_option_is_searched_first_and_exported_to_workers(tmp_path, monkeypatch, capsys):
    conf = _user_conf(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--cfg", "--config-dir", str(conf), "model=my_tiny"]) == 0
    assert "name: my_tiny" in capsys.readouterr().out
    assert os.environ[CONFIG_DIR_ENV] == str(conf.resolve())  # what `sweep --workers K` children inherit
    assert main(["train", "--cfg", "--config-dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_a_packaged_sweep_spec_is_found_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no sweeps/ here
    for spec in ("rank_alpha_targets", "rank_alpha_targets.yaml", "sweeps/rank_alpha_targets.yaml"):
        assert (
            main(
                [
                    "sweep",
                    spec,
                    "--slurm",
                    "--dry-run",
                    "--storage",
                    f"journal://{tmp_path}/s.log",
                    "cluster=slurm",
                    "cluster.partition=x",
                ]
            )
            == 0
        )
        assert "#SBATCH --partition=x" in capsys.readouterr().out
    assert main(["sweep", "nope.yaml", "--workers", "0"]) == 2
    assert "packaged specs: " in capsys.readouterr().err


def test_a_slurm_job_composes_from_the_same_config_dir(tmp_path, monkeypatch):
    from lorasweep.slurm.submit import submit_train

    conf = _user_conf(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(conf))  # what `lorasweep train --config-dir conf --slurm` exports
    script = submit_train(["cluster=slurm", "cluster.partition=x", "model=my_tiny"], dry_run=True)["script"]
    assert f"export {CONFIG_DIR_ENV}={conf.resolve()}" in script.splitlines()
