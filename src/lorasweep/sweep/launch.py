"""`lorasweep sweep SPEC`: validate the spec, create (or continue) the study, run K local workers on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

from ..errors import UserError
from ..pack.size import parse_pack
from .pack_plan import plan_pack
from .samplers import make_pruner
from .spec import SweepSpec, load_spec, validate_against_config
from .storage import default_storage_url
from .study import DEFAULT_RETRY_FAILED, check_retry_failed, create_study


def prepare(
    spec_path: str,
    overrides: list[str],
    n_trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    pack=None,
) -> tuple[SweepSpec, str]:
    """The validated spec (with command-line choices applied) and the storage URL; nothing runs yet. A pack
    (--pack, else the spec's) is stored with the spec, so every worker of the study packs alike."""
    spec = load_spec(spec_path)
    pack = spec.pack if pack is None else parse_pack(pack)
    spec = replace(spec, n_trials=n_trials or spec.n_trials, study=study or spec.study, pack=pack)
    if spec.n_trials <= 0:
        raise UserError(f"--n-trials must be > 0, got {spec.n_trials}")
    cfg = validate_against_config(spec, overrides)
    make_pruner(spec)  # a pruner option Optuna does not take fails here, not in the first worker
    if spec.pack not in (None, 1):  # a pack that cannot fit the cap fails here, before anything is queued
        plan_pack(spec, overrides, spec.pack)
    url = storage or spec.storage or default_storage_url(cfg.run_root)
    return spec, url


def run_sweep(
    spec_path: str,
    overrides: list[str],
    workers: int = 1,
    n_trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    should_stop=None,
    pack=None,
    retry_failed: int = DEFAULT_RETRY_FAILED,
):
    """Run the sweep to its budget with `workers` local processes; returns (study, spec). `should_stop` (a
    StopOnSignal) ends it cleanly: the workers checkpoint and re-queue their trials. On an existing study each
    failed trial is re-queued first, up to `retry_failed` times in all (sweep/retry.py)."""
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    check_retry_failed(retry_failed)
    spec, url = prepare(spec_path, overrides, n_trials, storage, study, pack)
    optuna_study = create_study(spec, url, overrides, retry_failed)  # an unreachable storage fails here
    if workers == 0:  # queue only: workers are started elsewhere (`lorasweep worker`, a SLURM array)
        return optuna_study, spec
    if workers == 1:
        from .worker import run_worker

        run_worker(spec.study, url, should_stop=should_stop)
        return optuna_study, spec
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lorasweep.cli", "worker", "--study", spec.study, "--storage", url],
            env={**os.environ, "LORASWEEP_WORKER_INDEX": str(i), "OMP_NUM_THREADS": str(threads)},
        )
        for i in range(workers)
    ]
    codes = [_wait(p, procs, should_stop) for p in procs]
    if should_stop is not None and should_stop():
        return optuna_study, spec
    if any(codes):
        raise RuntimeError(f"worker exit codes {codes}: see their output above")
    return optuna_study, spec


def _wait(proc: subprocess.Popen, procs: list[subprocess.Popen], should_stop) -> int:
    """Wait for a worker; once this process got a stop signal, pass it on as TERM (a Ctrl-C from the terminal
    reached the workers already, and a second INT would stop them without a checkpoint)."""
    forwarded = False
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if should_stop is not None and should_stop.received and not forwarded:
                for other in procs:
                    if other.poll() is None:
                        other.send_signal(signal.SIGTERM)
                forwarded = True
