"""What runs and sweeps do with a prediction: stay under a memory cap, choose a micro batch that fits.

The cap, first given first: `--memory-cap` (sweep / worker), the spec's `memory_cap`, then the config's
`cluster.memory_cap` (a cluster file says what one device of its nodes holds). `trainer.micro_batch=auto`
without any cap fits the device: CUDA's total memory, or the memory available on a CPU machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .byte_sizes import format_bytes, parse_memory_size
from .peak import default_device, estimate_config, micro_batch_of, processes, sequence_length

OVER_CAP_ATTR = "memory_over_cap"  # trial user attr: (predicted - cap) / cap; > 0 is infeasible (Optuna's rule)
PREDICTED_ATTR = "memory_predicted_peak_bytes"


def memory_cap(cfg, cap=None) -> int | None:
    """Bytes of the cap that applies to `cfg` (None: no cap)."""
    if cap is not None:
        return parse_memory_size(cap, "--memory-cap")
    value = cfg.cluster.get("memory_cap")
    return parse_memory_size(value, "cluster.memory_cap") if value is not None else None


def run_peak(estimate: dict) -> tuple[int, str]:
    """(the run's predicted peak, where it comes): a training step, or an evaluation batch when that is larger."""
    step, evaluation = estimate["memory/predicted_peak_bytes"], estimate.get("memory/predicted_eval_peak_bytes", 0)
    return (evaluation, " (evaluation; lower trainer.eval_batch_size)") if evaluation > step else (step, "")


def over_cap(estimate: dict, cap: int) -> str | None:
    """The reason a prediction does not fit, in words ("predicted 93.4 GiB > cap 80.0 GiB"), or None."""
    peak, where = run_peak(estimate)
    return f"predicted {format_bytes(peak)}{where} > cap {format_bytes(cap)}" if peak > cap else None


def constraint(trial) -> list[float]:
    """Optuna's constraints_func (TPE, NSGA-II): ≤ 0 feasible. Trials predicted over the cap carry how far."""
    return [float(trial.user_attrs.get(OVER_CAP_ATTR, 0.0))]


def device_memory(device: str) -> int:
    """What one device holds: CUDA's total memory, or MemAvailable on a CPU machine."""
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise UserError("cannot tell this machine's memory: give a cap (cluster.memory_cap or --memory-cap)")


def cached_estimate(
    cfg, device: str | None = None, micro_batch: int | None = None, num_processes: int | None = None
) -> dict:
    """estimate_config, remembered per shape in this process (estimate/shape_cache.py: the config without the keys
    that cannot change what a step holds, such as the learning rate or α): a sweep worker estimates a trial for
    the cap, then its run, and trials of one shape, once."""
    from .shape_cache import per_shape

    device = device or default_device(cfg)
    micro = micro_batch or micro_batch_of(cfg)
    n = num_processes or processes(cfg)
    return per_shape(cfg, device, micro, n, lambda: estimate_config(cfg, device, micro_batch=micro, num_processes=n))


def plan_run(cfg, device: str, num_processes: int = 1) -> tuple[int, dict]:
    """What training/lifecycle.py records beside what it measures: (the micro batch to train with, figures):
    the micro batch (trainer.micro_batch) and memory/predicted_peak_bytes for it. A prediction that fails does not
    stop the run (it is said, one line); a micro batch that cannot be chosen does (UserError)."""
    micro, figures = plan_micro_batch(cfg, device)
    if "memory/predicted_peak_bytes" not in figures and cfg.trainer.get("predict_memory", True):
        try:
            estimate = cached_estimate(cfg, device, micro_batch=micro, num_processes=num_processes)
            figures["memory/predicted_peak_bytes"] = estimate["memory/predicted_peak_bytes"]
            figures["memory/predicted_eval_peak_bytes"] = estimate["memory/predicted_eval_peak_bytes"]
        except Exception as exc:  # noqa: BLE001 - the estimate is advice; the run itself decides
            print(f"memory estimate unavailable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", flush=True)
    return micro, figures


def plan_micro_batch(cfg, device: str, cap=None) -> tuple[int, dict]:
    """(the global micro batch a run takes, figures for its record) from trainer.micro_batch:
    null: batch_size / grad_accum; a number: that (a divisor of batch_size); auto: the largest divisor of
    batch_size (a multiple of the processes) whose predicted peak fits the cap or the device. The global batch,
    and so the config hash and what the run means, stay the same."""
    setting = cfg.trainer.get("micro_batch")
    batch = int(cfg.trainer.batch_size)
    if setting is None:
        return micro_batch_of(cfg), {}
    if str(setting) != "auto":
        micro = _fixed_micro_batch(setting, batch)
        return micro, {"trainer/micro_batch": micro}
    limit = memory_cap(cfg, cap) or device_memory(device)
    candidates = [m for m in range(batch, 0, -1) if batch % m == 0 and m % processes(cfg) == 0]
    sequence = sequence_length(cfg)
    fitting, last = None, None
    low, high = 0, len(candidates) - 1  # peaks grow with the micro batch: binary search, largest first
    while low <= high:
        middle = (low + high) // 2
        last = estimate_config(cfg, device, micro_batch=candidates[middle], sequence=sequence)
        if over_cap(last, limit) is None:
            fitting, high = (candidates[middle], last), middle - 1
        else:
            low = middle + 1
    if fitting is None:
        raise UserError(
            f"trainer.micro_batch=auto: nothing fits in {format_bytes(limit)}, not even micro batch "
            f"{candidates[-1]} ({over_cap(last, limit)}); lower data.max_length, set "
            f"trainer.gradient_checkpointing=true or model.quantization=nf4, or raise the cap"
        )
    micro, estimate = fitting
    return micro, {
        "trainer/micro_batch": micro,
        "memory/predicted_peak_bytes": estimate["memory/predicted_peak_bytes"],
        "memory/predicted_eval_peak_bytes": estimate["memory/predicted_eval_peak_bytes"],
    }


def _fixed_micro_batch(setting, batch: int) -> int:
    try:
        micro = int(setting)
    except ValueError:
        micro = 0
    if micro <= 0 or batch % micro:
        raise UserError(
            f"trainer.micro_batch must be auto, null or a divisor of trainer.batch_size ({batch}); got {setting!r}"
        )
    return micro


def with_micro_batch(cfg, micro: int):
    """A copy of cfg whose grad_accum takes `micro` per forward pass (for the loop; the hash is the original's)."""
    from omegaconf import OmegaConf

    if int(cfg.trainer.batch_size) // micro == int(cfg.trainer.grad_accum):
        return cfg
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    copy.trainer.grad_accum = int(cfg.trainer.batch_size) // micro
    return copy


def check_trial_memory(trial, cfg, cap=None) -> str | None:
    """A sweep trial under a memory cap (`cap`, a worker's own, else the config's): its prediction recorded on
    the trial (user attrs), and the reason it must not be trained, or None. The sampler reads OVER_CAP_ATTR
    through `constraint`."""
    cap = memory_cap(cfg, cap)
    if cap is None:
        return None
    estimate = cached_estimate(cfg)
    peak, _ = run_peak(estimate)
    trial.set_user_attr(PREDICTED_ATTR, peak)
    trial.set_user_attr(OVER_CAP_ATTR, (peak - cap) / cap)
    reason = over_cap(estimate, cap)
    if reason:
        trial.set_user_attr("status", "over_memory_cap")
        trial.set_user_attr("skip_reason", reason)
    return reason
