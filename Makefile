# lorasweep: `make setup` once on a fresh machine, then `make demo` / `make test` / `make bench`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TORCH_CPU ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: lint setup demo test test-wheel test-slow test-slurm slurm-up slurm-down bench gpu-check gpu-check-cpu clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	# Without a GPU take the CPU wheel first, so the range in pyproject pulls no CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "$(TORCH_CPU)"; fi
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lorasweep train trainer.eval_at_start=true

# ruff: lint and format check (configured in pyproject.toml); `ruff format` and `ruff check --fix` repair most.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# The default run (what a developer runs), one pytest-xdist worker per core, each test module on one worker (its
# module fixtures built once); TEST_WORKERS=0 runs it in this process. Its time on 2 cores: docs/benchmarks.md.
# CI also runs test-wheel, test-slow, test-slurm.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -m "not slow and not slurm" -n $(TEST_WORKERS) --dist loadscope

# The wheel outside the repository: built, installed with its dependencies into a fresh virtualenv, then
# `lorasweep train --cfg`, a 3-step run and a SLURM dry run from an empty directory (~3 min).
test-wheel:
	bash scripts/ci/test_wheel.sh

# End-to-end checks: 2-process training, 4 workers x 10 trials per storage, killed workers (PostgreSQL when
# LORASWEEP_TEST_POSTGRES_URL is set: scripts/ci/start_postgres.sh prints one).
test-slow: setup
	$(PY) -m pytest -q -m "slow and not slurm"

# Sweeps on a real single-node SLURM (Debian's slurmctld/slurmd/munge, installed and started if needed).
slurm-up:
	bash scripts/ci/start_slurm.sh
slurm-down:
	bash scripts/ci/stop_slurm.sh
test-slurm: setup slurm-up
	LORASWEEP_TEST_SLURM=1 $(PY) -m pytest -q -m slurm

bench: setup
	$(PY) benchmarks/lora_step.py
	$(PY) benchmarks/sweep_overhead.py
	$(PY) benchmarks/pruning.py
	$(PY) benchmarks/mixed_batch.py
	$(PY) benchmarks/qlora.py step
	$(PY) benchmarks/qlora.py memory
	$(PY) benchmarks/packed.py

# On a CUDA machine, in two calls of at most 8 minutes each: `make gpu-check GROUP=1` (training runs, the new GPU
# paths), then GROUP=2 (benchmarks), which merges its rows into the same table, runs/gpu_check.md; no GROUP: every
# check in one call. PY=python3: that interpreter's packages, no venv (a machine with its own CUDA environment).
# gpu-check-cpu: the same checks shrunk, on CPU (CI, ~3 min).
GROUP ?=
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),setup)
	$(PY) scripts/gpu_check.py --device cuda --out runs/gpu_check.md $(if $(GROUP),--group $(GROUP))
gpu-check-cpu: setup
	$(PY) scripts/gpu_check.py --device cpu --out runs/gpu_check_cpu.md

clean:
	rm -rf $(VENV) .pytest_cache
