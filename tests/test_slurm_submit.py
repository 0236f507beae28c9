"""`--slurm` without a cluster: rendering, dry runs and bad input (the real SLURM runs are in test_slurm.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorasweep.cli.main import main
from lorasweep.slurm.submit import submit_train
from lorasweep.sweep.slurm_array import submit_sweep

REPO = Path(__file__).resolve().parents[1]
SPEC = "sweeps/rank_alpha_targets.yaml"
CLUSTER = [
    "cluster=slurm",
    "cluster.partition=gpu",
    "cluster.time=02:00:00",
    "cluster.gpus_per_node=4",
    "cluster.processes_per_node=4",
    "cluster.nodes=2",
    "cluster.account=proj42",
    "cluster.setup=[module load cuda,source /opt/venv/bin/activate]",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps").symlink_to(os.path.join(os.path.dirname(__file__), "..", "sweeps"))


def test_sweep_dry_run_renders_the_array_from_the_cluster_config(tmp_path):
    result = submit_sweep(SPEC, CLUSTER, array=3, storage="journal:///shared/study.log", dry_run=True)
    script = result["script"]
    for line in [
        "#SBATCH --array=0-2",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=02:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        f"#SBATCH --chdir={tmp_path}",
        "export STUDY=rank_alpha_targets",
        "export STORAGE=journal:///shared/study.log",
        "export PROCS_PER_NODE=4",
        "module load cuda",
        "source /opt/venv/bin/activate",
        "export PYTHON=python3",
    ]:
        assert line in script.splitlines(), line
    assert script.count("#SBATCH --array") == 1 and "# @setup" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (tmp_path / "runs").exists() and not (tmp_path / "slurm-logs").exists()  # nothing created


def test_train_dry_run_passes_the_overrides_to_the_script():
    result = submit_train([*CLUSTER[:3], "cluster.gpus_per_node=0", "lora.rank=16"], dry_run=True)
    lines = result["script"].splitlines()
    assert (
        "set -- cluster=slurm cluster.partition=gpu cluster.time=02:00:00 cluster.gpus_per_node=0 lora.rank=16" in lines
    )
    assert f"export PYTHON={sys.executable}" in lines  # no setup lines: the Python that rendered it
    assert "#SBATCH --array" not in lines and not any("gpus-per-node" in line for line in lines if "#SBATCH" in line)


def test_rendered_scripts_carry_the_shared_launcher_inline():
    launcher = (REPO / "slurm" / "launch.sh").read_text()
    for result, call in (
        (submit_train(CLUSTER[:3], dry_run=True), 'launch_step train "$@"'),
        (
            submit_sweep(SPEC, CLUSTER, storage="journal:///s.log", dry_run=True),
            'launch_step worker --study "$STUDY" --storage "$STORAGE"',
        ),
    ):
        script = result["script"]
        assert launcher in script and script.count("launch_step() {") == 1 and "# @launch" not in script
        assert script.splitlines()[-1] == call  # defined above, called last


def test_a_template_submitted_by_hand_finds_the_launcher_through_python():
    for template in ("train", "sweep_array"):
        line = next(
            x for x in (REPO / "slurm" / f"{template}.sbatch").read_text().splitlines() if x.endswith("# @launch")
        )
        done = subprocess.run(
            ["bash", "-c", f"{line}\ntype launch_step"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
            cwd="/",
        )
        assert done.returncode == 0 and "launch_step is a function" in done.stdout, done.stderr


def test_the_jobs_identity_comes_from_slurms_environment(monkeypatch):
    from lorasweep.runs.lock import holder_identity
    from lorasweep.slurm import identity
    from lorasweep.sweep.worker import worker_index, worker_label

    for name in (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "LORASWEEP_WORKER_INDEX",
    ):
        monkeypatch.delenv(name, raising=False)
    assert (identity.job(), identity.array_task(), identity.restart_count(), worker_index()) == (None, None, 0, 0)
    monkeypatch.setenv("SLURM_JOB_ID", "80")
    assert holder_identity()["slurm_job"] == "80" and ":" in worker_label()  # not an array: host:pid
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert holder_identity()["slurm_job"] == worker_label() == "77_3"
    assert (worker_index(), identity.restart_count()) == (3, 2)
    monkeypatch.setenv("LORASWEEP_WORKER_INDEX", "1")  # a local worker inside the array task
    assert (worker_label(), worker_index()) == ("77_3/1", 1)


def test_cli_takes_overrides_after_flags(capsys):
    assert (
        main(
            ["sweep", SPEC, "--slurm", "--dry-run", "--array", "2", *CLUSTER[:3], "--storage", "journal:///x/study.log"]
        )
        == 0
    )
    assert "#SBATCH --array=0-1" in capsys.readouterr().out
    assert main(["sweep", SPEC, "--slurm", "--dry-run", "--bogus"]) == 2  # a usage error, not an override
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


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
def test_bad_cluster_input_is_one_error_and_nothing_is_created(
    tmp_path, monkeypatch, capsys, overrides, extra, message
):
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
