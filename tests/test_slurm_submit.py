"""`--slurm` without a cluster: rendering, dry runs and bad input (the real SLURM runs are in test_slurm.py)."""

import os
import subprocess
import sys

import pytest

from lorasweep.cli import main
from lorasweep.submit import submit_sweep, submit_train

SPEC = "sweeps/rank_alpha_targets.yaml"
CLUSTER = ["cluster=slurm", "cluster.partition=gpu", "cluster.time=02:00:00", "cluster.gpus_per_node=4",
           "cluster.processes_per_node=4", "cluster.nodes=2", "cluster.account=proj42",
           "cluster.setup=[module load cuda,source /opt/venv/bin/activate]"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps").symlink_to(os.path.join(os.path.dirname(__file__), "..", "sweeps"))


def test_sweep_dry_run_renders_the_array_from_the_cluster_config(tmp_path):
    result = submit_sweep(SPEC, CLUSTER, array=3, storage="journal:///shared/study.log", dry_run=True)
    script = result["script"]
    for line in ["#SBATCH --array=0-2", "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --nodes=2",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --time=02:00:00", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@120", f"#SBATCH --chdir={tmp_path}", "export STUDY=rank_alpha_targets",
                 "export STORAGE=journal:///shared/study.log", "export PROCS_PER_NODE=4", "module load cuda",
                 "source /opt/venv/bin/activate", "export PYTHON=python3"]:
        assert line in script.splitlines(), line
    assert script.count("#SBATCH --array") == 1 and "# @setup" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (tmp_path / "runs").exists() and not (tmp_path / "slurm-logs").exists()  # nothing created


def test_train_dry_run_passes_the_overrides_to_the_script():
    result = submit_train([*CLUSTER[:3], "cluster.gpus_per_node=0", "lora.rank=16"], dry_run=True)
    lines = result["script"].splitlines()
    assert ("set -- cluster=slurm cluster.partition=gpu cluster.time=02:00:00 cluster.gpus_per_node=0 lora.rank=16"
            in lines)
    assert f"export PYTHON={sys.executable}" in lines  # no setup lines: the Python that rendered it
    assert "#SBATCH --array" not in lines and not any("gpus-per-node" in line for line in lines if "#SBATCH" in line)


def test_cli_takes_overrides_after_flags(capsys):
    assert main(["sweep", SPEC, "--slurm", "--dry-run", "--array", "2", *CLUSTER[:3],
                 "--storage", "journal:///x/study.log"]) == 0
    assert "#SBATCH --array=0-1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", SPEC, "--slurm", "--dry-run", "--bogus"])


@pytest.mark.parametrize(
    "overrides, extra, message",
    [
        (["cluster=local"], {}, "cluster=local has no SLURM settings"),
        (["cluster=slurm"], {}, "cluster.partition is required"),
        ([*CLUSTER[:2], "cluster.time=soon"], {}, "cluster.time must be SLURM time"),
        ([*CLUSTER[:2], "cluster.time=14400"], {}, "cluster.time must be SLURM time"),  # YAML's reading of 4:00:00
        ([*CLUSTER[:3], "cluster.nodes=0"], {}, "cluster.nodes must be >= 1"),
        (CLUSTER[:3], {"array": 0}, "--array must be > 0"),
        ([*CLUSTER[:3], "cluster.nodes=2"], {"storage": None}, "SQLite study storage is not safe"),
        (CLUSTER[:3], {"storage": "journal:///tmp/x.log", "path": ""}, "sbatch not found on PATH"),
    ],
)
def test_bad_cluster_input_is_one_error_and_nothing_is_created(tmp_path, monkeypatch, capsys, overrides, extra,
                                                                message):
    if "path" in extra:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    argv = ["sweep", SPEC, "--slurm", *overrides]
    if extra.get("array") is not None:
        argv += ["--array", str(extra["array"])]
    if extra.get("storage"):
        argv += ["--storage", extra["storage"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "slurm-logs").exists()
