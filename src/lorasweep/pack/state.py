"""What a greenlet switch carries: the thread-local state a trial's code sets, which the other trials of its pack
(running on the same thread) must not see.

- the grad mode and autocast (enabled per device, and its nesting depth: torch clears its cache of cast weights
  when the outermost autocast exits, so a trial whose depth were shared with trials still inside theirs would
  keep reading the casts of its head's weights from before its last optimizer step);
- torch's generators, which draw all of a run's training randomness (dropout; the data order has its own seeded
  generator);
- the saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks), a stack non-reentrant gradient
  checkpointing pushes while a checkpointed layer runs: a trial that gives way inside one must take its hooks
  with it, or the next trial's activations would be saved into its checkpoint (and popped by it).

Python's and NumPy's generators are not swapped: swapping them costs ~0.1 ms a switch (NumPy copies its whole
state), and nothing in a training step draws from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# torch has no public way to read the hook stack, only to push and pop within a `with`; these three are what its
# own saved_tensors_hooks and AOTAutograd call.
from torch._C._autograd import (
    _pop_saved_tensors_default_hooks,
    _push_saved_tensors_default_hooks,
    _top_saved_tensors_default_hooks,
)


@dataclass
class ThreadState:
    grad: bool
    autocast: tuple  # ((device, enabled), ...)
    autocast_depth: int
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    hooks: tuple  # the saved-tensor hook stack, bottom first: ((pack, unpack), ...)

    @classmethod
    def take(cls) -> "ThreadState":
        """The thread's state, taken off it: the hook stack and autocast's depth are left empty (for the hub,
        which must run the shared matmuls inside no trial's checkpoint)."""
        autocast = tuple((d, torch.is_autocast_enabled(d)) for d in devices())
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        return cls(torch.is_grad_enabled(), autocast, _take_depth(), torch.get_rng_state(), cuda, take_hooks())

    def put(self) -> None:
        """Make this the thread's state (after `take`: onto an empty hook stack and depth)."""
        self.modes()
        for _ in range(self.autocast_depth):
            torch.autocast_increment_nesting()
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)
        put_hooks(self.hooks)

    def modes(self) -> None:
        """Only the grad mode and autocast: what the hub sets to run a matmul as its trials would."""
        torch.set_grad_enabled(self.grad)
        for device, enabled in self.autocast:
            torch.set_autocast_enabled(device, enabled)


def devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def take_hooks() -> tuple:
    """Pop the thread's whole saved-tensor hook stack; returns it bottom first."""
    stack = []
    while (top := _top_saved_tensors_default_hooks(True)) is not None:
        stack.append(top)
        _pop_saved_tensors_default_hooks()
    return tuple(reversed(stack))


def put_hooks(stack: tuple) -> None:
    for pack, unpack in stack:
        _push_saved_tensors_default_hooks(pack, unpack)


def _take_depth() -> int:
    """autocast's nesting depth, left at 0. torch only counts it up or down (each returns the new depth)."""
    depth = 0
    while torch.autocast_decrement_nesting() >= 0:
        depth += 1
    torch.autocast_increment_nesting()  # from -1 back to 0
    return depth
