#!/usr/bin/env bash
# The package outside the repository (`make test-wheel`, run by .ci/run): build the wheel, install it with its
# dependencies into a fresh virtualenv, and from an empty directory run what a new user runs first. ~2-3 min.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error WANDB_MODE=disabled

python3 -m venv "$work/venv"
pip="$work/venv/bin/pip"
# As `make setup`: without a GPU take the CPU wheel first, so the torch range pulls no CUDA build.
if ! command -v nvidia-smi >/dev/null 2>&1; then "$pip" install -q "${TORCH_CPU:-torch==2.13.0}"; fi
"$pip" wheel -q --no-deps -w "$work/dist" "$repo"
"$pip" install -q "$work"/dist/lorasweep-*.whl

mkdir "$work/user" && cd "$work/user"  # no conf/, sweeps/ or slurm/ here: everything comes from the wheel
lorasweep="$work/venv/bin/lorasweep"
# Outputs go to files before grep reads them (grep -q on a pipe would close it early: BrokenPipeError).
"$lorasweep" train --cfg > cfg.txt
grep -q "^# config hash: " cfg.txt
"$lorasweep" train trainer=smoke trainer.max_steps=3 tracking=none data.max_train_examples=64 \
    data.max_eval_examples=32 data.max_length=32
test -f runs/*/metrics.json
"$lorasweep" sweep rank_alpha_targets.yaml --slurm --dry-run --storage "journal://$PWD/study.log" \
    cluster=slurm cluster.partition=x > sweep.sbatch
grep -q "^#SBATCH --partition=x" sweep.sbatch
grep -q "^launch_step() {" sweep.sbatch  # slurm/launch.sh, shipped in the wheel and written in
# A user's own config group file, found before the packaged ones.
mkdir -p conf/model && printf 'name: my_tiny\nsource: tiny\narch: llama\n' > conf/model/my_tiny.yaml
"$lorasweep" train --cfg model=my_tiny > my.txt
grep -q "name: my_tiny" my.txt
echo "wheel outside the repository: ok"
