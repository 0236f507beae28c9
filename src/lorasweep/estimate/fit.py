"""What runs and sweeps do with a prediction: stay under a memory cap, choose a micro batch that fits.

The cap, first given first: `--memory-cap` (sweep / worker), the spec's `memory_cap`, then the config's
`cluster.memory_cap` (what a run may use on one device of a cluster's nodes). `trainer.micro_batch=auto` fits
the cap as given, or without one the device's free memory less `cluster.memory_margin`; a packed trial fits
its share of that (headroom.py).
"""

from __future__ import annotations

from ..errors import UserError
from .byte_sizes import format_bytes
from .headroom import (
    CAP_NOTE,
    free_memory,
    margin_setting,
    memory_budget,
    memory_cap,
    pack_share,
    same_on_every_rank,
)
from .peak import default_device, estimate_config, micro_batch_of, processes, sequence_length

OVER_CAP_ATTR = "memory_over_cap"  # trial user attr: (predicted - cap) / cap; > 0 is infeasible (Optuna's rule)
PREDICTED_ATTR = "memory_predicted_peak_bytes"


def run_peak(estimate: dict) -> tuple[int, str]:
    """(the run's predicted peak, where it comes): a training step, or an evaluation batch when that is larger."""
    step, evaluation = estimate["memory/predicted_peak_bytes"], estimate.get("memory/predicted_eval_peak_bytes", 0)
    return (evaluation, " (evaluation; lower trainer.eval_batch_size)") if evaluation > step else (step, "")


def over_cap(estimate: dict, cap: int) -> str | None:
    """The reason a prediction does not fit, in words ("predicted 93.4 GiB > cap 80.0 GiB"), or None."""
    peak, where = run_peak(estimate)
    return f"predicted {format_bytes(peak)}{where} > cap {format_bytes(cap)}" if peak > cap else None


def fit_summary(cfg, budget, estimate: dict) -> dict:
    """What `lorasweep estimate` adds to the account: the budget (headroom.memory_budget) micro_batch=auto and
    --pack auto would fit it into here (limit_bytes None: not measurable on this machine), the margin, and the
    line it prints."""
    line = f"fits (trainer.micro_batch=auto, --pack auto) use {budget.describe()}"
    if budget.limit is not None:
        line += f": {over_cap(estimate, budget.limit) or 'the predicted peak fits'}"
    if memory_cap(cfg) is not None:
        line += f" ({CAP_NOTE})"
    return {
        "limit_bytes": budget.limit,
        "margin_bytes": budget.margin,
        "margin": margin_setting(cfg),
        "against": budget.name,
        "line": line,
    }


def constraint(trial) -> list[float]:
    """Optuna's constraints_func (TPE, NSGA-II): ≤ 0 feasible. Trials predicted over the cap carry how far."""
    return [float(trial.user_attrs.get(OVER_CAP_ATTR, 0.0))]


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


def plan_run(cfg, device: str, num_processes: int = 1, pack=None) -> tuple[int, dict]:
    """What training/lifecycle.py records beside what it measures: (the micro batch to train with, figures):
    the micro batch (trainer.micro_batch) and memory/predicted_peak_bytes for it. A prediction that fails does not
    stop the run (it is said, one line); a micro batch that cannot be chosen does (UserError). `pack`: the
    pack.Pack the run trains in (micro_batch=auto fits its share)."""
    micro, figures = plan_micro_batch(cfg, device, pack=pack)
    if "memory/predicted_peak_bytes" not in figures and cfg.trainer.get("predict_memory", True):
        try:
            estimate = cached_estimate(cfg, device, micro_batch=micro, num_processes=num_processes)
            figures["memory/predicted_peak_bytes"] = estimate["memory/predicted_peak_bytes"]
            figures["memory/predicted_eval_peak_bytes"] = estimate["memory/predicted_eval_peak_bytes"]
        except Exception as exc:  # noqa: BLE001 - the estimate is advice; the run itself decides
            print(f"memory estimate unavailable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", flush=True)
    return micro, figures


def plan_micro_batch(cfg, device: str, cap=None, pack=None) -> tuple[int, dict]:
    """(the global micro batch a run takes, figures for its record) from trainer.micro_batch:
    null: batch_size / grad_accum; a number: that (a divisor of batch_size); auto: the largest divisor of
    batch_size (a multiple of the processes) whose predicted peak fits the cap, or the device's free memory less
    cluster.memory_margin; in a pack, this trial's share of it. The global batch, and so the config hash and what
    the run means, stay the same."""
    setting = cfg.trainer.get("micro_batch")
    batch = int(cfg.trainer.batch_size)
    if setting is None:
        return micro_batch_of(cfg), {}
    if str(setting) != "auto":
        micro = _fixed_micro_batch(setting, batch)
        return micro, {"trainer/micro_batch": micro}
    budget = _budget(cfg, device, cap, pack)
    limit, trials = same_on_every_rank(budget.limit, pack.most_trials() if pack is not None else 1)
    share = lambda estimate: pack_share(limit, trials, int(estimate["memory/base_weights_bytes"]))  # noqa: E731
    candidates = [m for m in range(batch, 0, -1) if batch % m == 0 and m % processes(cfg) == 0]
    sequence = sequence_length(cfg)
    fitting, last = None, None
    low, high = 0, len(candidates) - 1  # peaks grow with the micro batch: binary search, largest first
    while low <= high:
        middle = (low + high) // 2
        last = estimate_config(cfg, device, micro_batch=candidates[middle], sequence=sequence)
        if over_cap(last, share(last)) is None:
            fitting, high = (candidates[middle], last), middle - 1
        else:
            low = middle + 1
    of_pack = f"this trial's share of a pack of {trials} in " if trials > 1 else ""
    if fitting is None:
        raise UserError(
            f"trainer.micro_batch=auto: nothing fits in {format_bytes(share(last))}, not even micro batch "
            f"{candidates[-1]} ({over_cap(last, share(last))}); that is {of_pack}{budget.describe()}; lower "
            f"data.max_length, set trainer.gradient_checkpointing=true or model.quantization=nf4, or raise the cap"
        )
    micro, estimate = fitting
    return micro, {
        "trainer/micro_batch": micro,
        "memory/fit_limit_bytes": share(estimate),  # what it was fitted into: a cap, free less margin, a share
        "memory/predicted_peak_bytes": estimate["memory/predicted_peak_bytes"],
        "memory/predicted_eval_peak_bytes": estimate["memory/predicted_eval_peak_bytes"],
    }


def _budget(cfg, device: str, cap, pack):
    """The budget of a run; in a pack, the device measured once, at its first trial, before any of its trials
    held memory (the share model divides what the whole pack may take)."""
    if pack is None:
        return memory_budget(cfg, device, cap)
    if pack.free_memory is None and memory_cap(cfg, cap) is None:
        pack.free_memory = free_memory(device)
    return memory_budget(cfg, device, cap, measured=pack.free_memory)


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
