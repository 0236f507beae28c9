"""What the processes of one run say to each other: every decision that must be the same on every rank goes
through here (accelerate's collectives; each a no-op on one process)."""

from __future__ import annotations

import torch


def broadcast_from_main(state, value):
    """The main rank's value on every rank (any picklable value)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def main_decides(accelerator, flag: bool) -> bool:
    """The main rank's flag on every rank (pruning, a stop signal: only the main rank is asked)."""
    return _any(accelerator, bool(flag) and accelerator.is_main_process)


def any_rank(accelerator, flag: bool) -> bool:
    """True on every rank when the flag is set on any rank (a non-finite loss anywhere stops all)."""
    return _any(accelerator, flag)


def _any(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def sum_across(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of every rank's tensor (on the CPU)."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor.to(accelerator.device), reduction="sum").cpu()


def gather_in_order(accelerator, local: torch.Tensor, n: int) -> torch.Tensor:
    """Rows i = rank, rank + world, ... of n, one tensor per rank -> all n rows in order i = 0..n-1, on every
    rank: what one process would have computed alone (the ranks' shares are padded to one length to gather)."""
    world = accelerator.num_processes
    if world == 1:
        return local
    width = -(-n // world)
    padded = torch.full((width, *local.shape[1:]), float("nan"), dtype=local.dtype)
    padded[: len(local)] = local
    gathered = accelerator.gather(padded.to(accelerator.device)).cpu()  # rank 0's rows, then rank 1's, ...
    return gathered.reshape(world, width, *local.shape[1:]).transpose(0, 1).reshape(world * width, *local.shape[1:])[:n]
