"""Where a sweep's workers run (sweep/placement.py): `--workers auto` against `--pack auto`, each worker's GPU,
and the SLURM array's tasks per node.

CUDA cannot exist on the machines these tests run on (CPU-only CI): where a GPU count is needed,
torch.cuda.device_count is monkeypatched, and the workers' GPU is checked in the environment each one is given
(the subprocesses themselves then train on the CPU, ignoring CUDA_VISIBLE_DEVICES). The rule is tested on its
figures (no training, no estimate), then through the real memory estimate of a tiny model, then in one short
real sweep; SLURM as the rendered script (`--dry-run`) and the real slurm/launch.sh under a stand-in srun.
"""

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lorasweep.cli.main import main
from lorasweep.errors import UserError
from lorasweep.sweep import placement
from lorasweep.sweep.placement import (
    MOST_WORKERS_PER_GPU,
    PROCESS_BYTES,
    Need,
    decide,
    parse_workers,
    place_local,
    visible_gpus,
    worker_env,
)
from lorasweep.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
GiB, MiB = 2**30, 2**20
SPEC = """
study: placed
n_trials: {trials}
objectives: [{{metric: eval/loss, direction: minimize}}]
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
fixed: [model=tiny_llama, trainer=smoke, trainer.max_steps=1, trainer.eval_every=1, data.max_train_examples=16,
        data.max_eval_examples=8, data.max_length=16, tracking=none]
params:
  lora.rank: {{type: categorical, choices: [2, 4]}}
"""


def _spec(tmp_path, trials=12, pack=None) -> str:
    path = tmp_path / "placed.yaml"
    path.write_text(textwrap.dedent(SPEC.format(trials=trials)) + (f"pack: {pack}\n" if pack else ""))
    return str(path)


def _never():
    raise AssertionError("the estimate was asked for where it cannot change the choice")


def _decide(tmp_path, workers, gpus, cores, need=_never, pack=None, trials=12, pack_auto=_never):
    lines = []
    spec = replace(load_spec(_spec(tmp_path, trials)), pack=pack)
    return decide(spec, workers, gpus, cores, need, pack_auto, lines.append), lines


# ---------------------------------------------------------------- the rule, on its figures


def test_a_small_model_gets_several_workers_per_gpu_and_no_pack(tmp_path):
    small = Need(base=100 * MiB, own=50 * MiB, limit=16 * GiB, budget="the memory cap 16.0 GiB")
    chosen, lines = _decide(tmp_path, "auto", gpus=2, cores=32, need=lambda: small, pack="auto")
    assert (chosen.workers, chosen.per_device, chosen.pack) == (2 * MOST_WORKERS_PER_GPU, MOST_WORKERS_PER_GPU, 1)
    copies = 16 * GiB // (150 * MiB + PROCESS_BYTES)
    assert lines == [
        f"--workers auto: 8 (2 GPUs, 4 workers each: at most 4 per GPU; {copies} × 1.1 GiB fit the memory cap "
        "16.0 GiB)",
        "--pack auto: 1 (4 workers per GPU: separate processes, not a pack, give a small model its throughput; a pack "
        "saves memory, not dispatch)",
    ]


def test_a_base_that_fits_once_gets_one_worker_per_gpu_and_the_pack(tmp_path):
    large = Need(base=10 * GiB, own=1 * GiB, limit=16 * GiB, budget="the memory cap 16.0 GiB")
    chosen, lines = _decide(tmp_path, "auto", gpus=4, cores=64, need=lambda: large, pack="auto", pack_auto=lambda: 6)
    assert (chosen.workers, chosen.per_device, chosen.pack) == (4, 1, 6)
    assert lines == ["--workers auto: 4 (4 GPUs, one worker each: 1 × 12.0 GiB fit the memory cap 16.0 GiB)"]


def test_the_bounds_that_need_no_estimate_and_the_trials_left(tmp_path):
    # 2 cores: one worker (two processes on two cores ran slower than one: docs/packing.md), nothing estimated
    assert _decide(tmp_path, "auto", gpus=0, cores=2) == (
        placement.Placement(1, 1, None),
        ["--workers auto: 1 (2 CPU cores, 4 threads per worker)"],
    )
    chosen, lines = _decide(tmp_path, "auto", gpus=4, cores=4)  # a core per GPU: one worker each
    assert chosen.workers == 4 and lines == ["--workers auto: 4 (4 GPUs, one worker each: 4 CPU cores for 4 GPUs)"]
    chosen, lines = _decide(tmp_path, "auto", gpus=4, cores=4, trials=3)
    assert chosen.workers == 3 and lines[0].endswith("; only 3 trials)")
    roomy = Need(base=0, own=MiB, limit=64 * GiB, budget="the cpu memory available less the margin 64.0 GiB")
    chosen, lines = _decide(tmp_path, "auto", gpus=0, cores=16, need=lambda: roomy)
    assert chosen.workers == 16 // placement.CPU_THREADS_PER_WORKER
    tight = replace(roomy, limit=2 * (PROCESS_BYTES + MiB), budget="the memory cap 2.0 GiB")
    chosen, lines = _decide(tmp_path, "auto", gpus=0, cores=16, need=lambda: tight)
    assert chosen.workers == 2 and lines == ["--workers auto: 2 (2 × 1.0 GiB fit the memory cap 2.0 GiB)"]


def test_explicit_workers_stay_as_given(tmp_path):
    assert _decide(tmp_path, 3, gpus=0, cores=2) == (placement.Placement(3, 3, None), [])
    assert _decide(tmp_path, "5", gpus=2, cores=2, pack=2)[0] == placement.Placement(5, 3, 2)
    # several workers on one device: a pack of auto is 1 there, whoever chose the workers
    chosen, lines = _decide(tmp_path, 2, gpus=1, cores=2, pack="auto")
    assert chosen.pack == 1 and lines[0].startswith("--pack auto: 1 (2 workers per GPU")
    assert _decide(tmp_path, 0, gpus=1, cores=2, pack="auto")[0].pack == "auto"  # queue only: left to the workers
    for bad in ("-1", "two", "1.5", True):
        with pytest.raises(UserError, match="--workers must be >= 0 or auto"):
            parse_workers(bad)


def test_the_rule_through_the_memory_estimate(tmp_path):
    """The real estimate of a tiny Llama (a few MiB: its footprint is about PROCESS_BYTES) under a cap."""
    spec = load_spec(_spec(tmp_path, pack="auto"))
    lines = []
    roomy = [f"run_root={tmp_path / 'runs'}", "cluster.memory_cap=3GiB"]
    chosen = place_local(spec, roomy, "auto", gpus=["0"], cores=16, say=lines.append)
    assert (chosen.workers, chosen.pack) == (2, 1), lines
    assert lines[0].startswith("--workers auto: 2 (1 GPU, 2 workers each: 2 × 1.0 GiB fit the memory cap 3.0 GiB)")
    tight = [f"run_root={tmp_path / 'runs'}", "cluster.memory_cap=1500MiB"]
    chosen = place_local(spec, tight, "auto", gpus=["0"], cores=16, say=lines.append)
    assert (chosen.workers, chosen.pack) == (1, 8)  # one worker; pack_plan fills the GPU (at most 8)


# ---------------------------------------------------------------- each local worker's GPU


def test_each_local_worker_is_given_its_gpu(monkeypatch):
    assert [worker_env(i, 4, ["0", "1"], cores=8)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "0", "1"]
    assert worker_env(3, 4, ["0", "1"], cores=8) == {
        "LORASWEEP_WORKER_INDEX": "3",
        "OMP_NUM_THREADS": "2",
        "CUDA_VISIBLE_DEVICES": "1",
    }
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 2, [], cores=2)  # a CPU: the environment as it was
    # CUDA cannot exist here: the GPU count is monkeypatched
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # the user's list: workers map within it
    assert visible_gpus() == ["5", "7"]
    assert [worker_env(i, 3, visible_gpus(), cores=6)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["5", "7", "5"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_a_sweep_on_workers_auto_starts_one_worker_per_gpu(tmp_path, monkeypatch, capsys):
    """The one real sweep: two GPUs seen (monkeypatched: no CUDA here) within the user's CUDA_VISIBLE_DEVICES,
    two trials, --workers auto: two `lorasweep worker` processes, each started with its own GPU; both trials run
    (on the CPU: the workers' torch finds no CUDA)."""
    import optuna

    from lorasweep.sweep import launch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    started = []
    real_popen = subprocess.Popen

    def spy(command, env=None, **kwargs):  # records what each worker is given, then starts it for real
        started.append({k: env[k] for k in ("LORASWEEP_WORKER_INDEX", "CUDA_VISIBLE_DEVICES")})
        return real_popen(command, env=env, **kwargs)

    monkeypatch.setattr(launch.subprocess, "Popen", spy)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    code = main(["sweep", _spec(tmp_path, trials=2), "--workers", "auto", "--storage", storage, f"run_root={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert next(line for line in out.splitlines() if line.startswith("--workers auto:")).startswith(
        "--workers auto: 2 (2 GPUs,"
    )
    assert sorted(started, key=lambda e: e["LORASWEEP_WORKER_INDEX"]) == [
        {"LORASWEEP_WORKER_INDEX": "0", "CUDA_VISIBLE_DEVICES": "3"},
        {"LORASWEEP_WORKER_INDEX": "1", "CUDA_VISIBLE_DEVICES": "5"},
    ]
    trials = optuna.load_study(study_name="placed", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]


# ---------------------------------------------------------------- SLURM: tasks per node


CLUSTER = ["cluster=slurm", "cluster.partition=gpu", "cluster.gpus_per_node=4", "cluster.cpus_per_task=8"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _dry_run(tmp_path, capsys, *args) -> tuple[list[str], list[str]]:
    """(the rendered script's lines, the lines said on stderr) of `sweep --slurm --dry-run`."""
    spec = _spec(tmp_path)
    code = main(["sweep", spec, "--slurm", "--dry-run", "--storage", "journal:///s.log", *args, *CLUSTER])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.splitlines(), err.splitlines()


def test_slurm_one_worker_per_gpu_is_gpus_per_task(in_tmp, capsys):
    script, said = _dry_run(in_tmp, capsys, "--workers", "auto")
    sbatch = [line for line in script if line.startswith("#SBATCH")]
    for line in ("--ntasks-per-node=4", "--gpus-per-task=1", "--cpus-per-task=2", "--array=0-2"):
        assert f"#SBATCH {line}" in sbatch, sbatch
    assert not any("gpus-per-node" in line for line in sbatch) and "export TASKS_PER_NODE=4" in script
    assert said == [
        "--workers auto: 4 (4 GPUs, one worker each: a node's GPU memory is not known here: a memory cap "
        "(--memory-cap, cluster.memory_cap) fits more)"
    ]
    assert subprocess.run(["bash", "-n"], input="\n".join(script), text=True).returncode == 0


def test_slurm_several_workers_share_a_gpu_under_a_cap(in_tmp, capsys):
    script, said = _dry_run(in_tmp, capsys, "--workers", "auto", "--memory-cap", "5GiB")
    sbatch = [line for line in script if line.startswith("#SBATCH")]
    # the cap fits four workers on a GPU, but 8 CPUs for 4 GPUs give two each; 12 trials over 8: two array tasks
    for line in ("--ntasks-per-node=8", "--gpus-per-node=4", "--cpus-per-task=1", "--array=0-1"):
        assert f"#SBATCH {line}" in sbatch, sbatch
    assert not any("gpus-per-task" in line for line in sbatch)
    assert said[0].startswith("--workers auto: 8 (4 GPUs, 2 workers each: 8 CPU cores for 4 GPUs; 4 × 1.0 GiB fit")


def test_slurm_default_and_bad_worker_counts(in_tmp, capsys):
    script, said = _dry_run(in_tmp, capsys)  # --workers 1: the array as before
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=4" in script and said == []
    assert "#SBATCH --cpus-per-task=8" in script
    spec = _spec(in_tmp)
    for args, message in (
        (["--workers", "2"], "--workers 2 with cluster.gpus_per_node=4: a worker uses one GPU, so 2 would idle"),
        (["--workers", "0"], "--workers 0 queues only, without --slurm"),
        (["--workers", "4", "cluster.processes_per_node=4"], "takes the whole allocation"),
    ):
        code = main(["sweep", spec, "--slurm", "--dry-run", "--storage", "journal:///s.log", *args, *CLUSTER])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    script, said = _dry_run(in_tmp, capsys, "--workers", "auto", "cluster.processes_per_node=4")
    assert "#SBATCH --ntasks-per-node=1" in script and said[0].startswith("--workers auto: 1 (a trial runs on")


def test_the_launcher_gives_each_task_its_index_and_gpu(tmp_path):
    """slurm/launch.sh as written, with stand-ins for srun (starts the tasks with their SLURM_LOCALID) and scontrol,
    and for the Python it launches (prints what each task was given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nn=1\nwhile [[ $1 == --* ]]; do [[ $1 == --ntasks-per-node=* ]] && n=${1#*=}; shift; done\n"
        'for ((i = 0; i < n; i++)); do SLURM_LOCALID=$i "$@"; done\n'
    )
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node1\n")
    (bin_dir / "python").write_text(
        '#!/bin/bash\necho "task $SLURM_LOCALID index $LORASWEEP_WORKER_INDEX gpu ${CUDA_VISIBLE_DEVICES:-none} $*"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)

    def launch(tasks: int, gpus: str) -> list[str]:
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHON": str(bin_dir / "python"),
            "PROCS_PER_NODE": "1",
            "TASKS_PER_NODE": str(tasks),
            "SLURM_JOB_ID": "7",
            "SLURM_ARRAY_TASK_ID": "3",
            "CUDA_VISIBLE_DEVICES": gpus,
        }
        script = f'. {REPO / "slurm" / "launch.sh"}\nlaunch_step worker --study S --storage "journal:///a b.log"'
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    args = "-m lorasweep.cli worker --study S --storage journal:///a b.log"
    assert launch(4, "0,1") == [  # 4 tasks sharing a node's 2 GPUs (--gpus-per-node)
        f"task 0 index 12 gpu 0 {args}",
        f"task 1 index 13 gpu 1 {args}",
        f"task 2 index 14 gpu 0 {args}",
        f"task 3 index 15 gpu 1 {args}",
    ]
    assert launch(2, "") == [f"task 0 index 6 gpu none {args}", f"task 1 index 7 gpu none {args}"]  # CPU nodes
    assert launch(1, "0,1,2,3") == [f"task 0 index  gpu 0,1,2,3 {args}"]  # one task: the step as before


def test_cli_workers_is_one_line_on_bad_input(tmp_path, capsys):
    assert main(["sweep", _spec(tmp_path), "--workers", "many", f"run_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "lorasweep: error: --workers must be >= 0 or auto, got 'many'"
    assert not (tmp_path / "optuna.db").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
