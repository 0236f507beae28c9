"""`lorasweep sweep SPEC`: validate the spec, create (or continue) the study, run K local workers on it (K, or
auto: sweep/placement.py chooses between K processes and a pack, and gives each worker its GPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

from ..errors import UserError
from ..pack.size import parse_pack
from .pack_plan import plan_pack
from .placement import parse_workers, place_local, visible_gpus, worker_env
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
    check_pack: bool = True,
) -> tuple[SweepSpec, str]:
    """The validated spec (with command-line choices applied) and the storage URL; nothing runs yet. A pack
    (--pack, else the spec's) is stored with the spec, so every worker of the study packs alike. `check_pack`
    False: the caller checks (and sizes) the pack itself (sweep/placement.py)."""
    spec = load_spec(spec_path)
    pack = spec.pack if pack is None else parse_pack(pack)
    spec = replace(spec, n_trials=n_trials or spec.n_trials, study=study or spec.study, pack=pack)
    if spec.n_trials <= 0:
        raise UserError(f"--n-trials must be > 0, got {spec.n_trials}")
    cfg = validate_against_config(spec, overrides)
    make_pruner(spec)  # a pruner option Optuna does not take fails here, not in the first worker
    if check_pack and spec.pack not in (None, 1):  # a pack that cannot fit the cap fails here, before any queueing
        plan_pack(spec, overrides, spec.pack)
    url = storage or spec.storage or default_storage_url(cfg.run_root)
    return spec, url


def run_sweep(
    spec_path: str,
    overrides: list[str],
    workers: int | str = 1,
    n_trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    should_stop=None,
    pack=None,
    retry_failed: int = DEFAULT_RETRY_FAILED,
):
    """Run the sweep to its budget with `workers` local processes (or auto); returns (study, spec). `should_stop` (a
    StopOnSignal) ends it cleanly: the workers checkpoint and re-queue their trials. On an existing study each
    failed trial is re-queued first, up to `retry_failed` times in all (sweep/retry.py). Worker i of K gets GPU
    i mod n of the n this process sees (within CUDA_VISIBLE_DEVICES); `--workers auto` and `--pack auto` say
    what they chose, one line each."""
    workers = parse_workers(workers)
    check_retry_failed(retry_failed)
    # queue only (0): whoever starts the workers sizes a pack of auto; else placement checks and sizes it here
    spec, url = prepare(spec_path, overrides, n_trials, storage, study, pack, check_pack=workers == 0)
    if workers != 0:
        placement = place_local(spec, overrides, workers, say=lambda line: print(line, flush=True))
        # the pack chosen here is stored with the study: every worker packs alike, none estimates again
        spec, workers = replace(spec, pack=placement.pack), placement.workers
    optuna_study = create_study(spec, url, overrides, retry_failed)  # an unreachable storage fails here
    if workers == 0:  # queue only: workers are started elsewhere (`lorasweep worker`, a SLURM array)
        return optuna_study, spec
    if workers == 1:
        from .worker import run_worker

        run_worker(spec.study, url, should_stop=should_stop)
        return optuna_study, spec
    gpus = visible_gpus()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lorasweep.cli", "worker", "--study", spec.study, "--storage", url],
            env={**os.environ, **worker_env(i, workers, gpus)},
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
