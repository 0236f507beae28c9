"""The pack: K trials' whole runs on one thread, their frozen-base matmuls batched, nothing else changed.

Each trial runs its ordinary lifecycle (`run.train`: lock, loop, checkpoints, tracker, record) in its own greenlet.
A trial gives way at two points only:
- a shared frozen layer's forward (`linear`): the hub gathers every trial waiting on the same weights (and the
  same grad mode), runs the base ONCE on their rows concatenated, and hands each trial its own rows back;
- its backward (`backward`): once no trial waits on a layer, one `torch.autograd.backward` over the losses of all
  trials waiting there. Trial i's parameters only ever touch trial i's rows, so each gets exactly its own
  gradient; no gradient crosses trials.

Everything else (data order, padding, dropout masks, LoRA's low-rank terms, the head, the loss, the optimizer,
evaluation, checkpoints) is trial i's own code on trial i's own tensors with trial i's own state: the hub swaps the
global RNGs, the grad mode and autocast in and out at every switch, so a trial draws exactly the dropout masks it
would draw alone. Only the base GEMM's row blocking differs from a solo run (float rounding, far below 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import greenlet
import torch

from ..memory import PeakMemory


@dataclass
class _ThreadState:
    """What a greenlet switch must carry: torch's thread-local modes (grad, autocast) and torch's generators,
    which draw all of a run's training randomness (dropout; the data order has its own seeded generator).
    Python's and NumPy's generators are not swapped: swapping them costs ~0.1 ms a switch (NumPy copies its
    whole state), and nothing in a training step draws from them."""

    grad: bool
    autocast: tuple
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None

    @classmethod
    def capture(cls) -> "_ThreadState":
        autocast = tuple((d, torch.is_autocast_enabled(d)) for d in _devices())
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        return cls(torch.is_grad_enabled(), autocast, torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_grad_enabled(self.grad)
        for device, enabled in self.autocast:
            torch.set_autocast_enabled(device, enabled)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)


def _devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@dataclass(eq=False)  # a slot is itself: kept in sets (partners)
class Slot:
    """One trial in the pack: its greenlet, what it waits on, and, once ended, its result or error."""

    label: str
    glet: Any
    state: _ThreadState | None = None
    waiting: tuple | None = None  # ("linear", module, x) | ("backward", loss)
    reply: Any = None
    started: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    partners: set = field(default_factory=set)  # the slots of the trials it shared a base matmul with


class Pack:
    """The hub: `start` trials, then `run(on_done)` until none is left; `on_done(slot)` may start more (refill)."""

    def __init__(self) -> None:
        self.slots: dict[Any, Slot] = {}
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.memory = PeakMemory(device).start()  # the pack's peak from here on: what its trials record
        self.batched_calls = 0  # base matmuls that served more than one trial (for the benchmark's record)

    def __len__(self) -> int:
        return len(self.slots)

    def start(self, label: str, fn: Callable, *args, **kwargs) -> Slot:
        glet = greenlet.greenlet(lambda: fn(*args, **kwargs))
        slot = Slot(label, glet)
        self.slots[glet] = slot
        return slot

    def claim(self, label: str) -> None:
        """Name the running trial (its config hash). Two trials of one run cannot share a pack: the second
        would wait forever on the first's run lock in the same thread."""
        slot = self.current()
        if slot is None:
            return
        if any(s.label == label for s in self.slots.values() if s is not slot):
            from ..errors import UserError

            raise UserError(f"run {label} is already training in this pack (the same config twice)")
        slot.label = label

    def current(self) -> Slot | None:
        """The slot whose code is running now, or None (the hub, or no pack at all)."""
        return self.slots.get(greenlet.getcurrent())

    # Called from a trial's code.

    def linear(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`module(x)` for a frozen layer whose weights the pack shares: batched with the other trials."""
        slot = self.current()
        if slot is None:  # outside the pack (e.g. a recomputation inside the combined backward): as usual
            return type(module).forward(module, x)
        return self._wait(slot, ("linear", module, x))

    def backward(self, loss: torch.Tensor) -> None:
        slot = self.current()
        if slot is None:
            loss.backward()
            return
        self._wait(slot, ("backward", loss))

    def _wait(self, slot: Slot, request: tuple):
        slot.waiting = request
        reply = greenlet.getcurrent().parent.switch()
        if isinstance(reply, _Failure):
            raise reply.error
        return reply

    # The hub.

    def run(self, on_done: Callable[[Slot], None]) -> None:
        """Advance every trial until each waits or ends; serve the waits; repeat until no trial is left. The
        caller's grad mode, autocast and generator are its own again afterwards."""
        caller = self._fresh = _ThreadState.capture()  # also what a new trial starts from
        try:
            self._rounds(on_done)
        finally:
            caller.restore()

    def _rounds(self, on_done: Callable[[Slot], None]) -> None:
        while self.slots:
            for slot in [s for s in self.slots.values() if s.waiting is None]:
                self._resume(slot)
                if slot.done:
                    del self.slots[slot.glet]
                    on_done(slot)  # may start a new trial: it runs in the next round
            waiting = [s for s in self.slots.values() if s.waiting is not None]
            layers = [s for s in waiting if s.waiting[0] == "linear"]
            if layers:
                for group in _groups(layers):
                    self._serve_linear(group)
            elif waiting:
                self._serve_backward(waiting)

    def _resume(self, slot: Slot) -> None:
        # The hub keeps no state of its own between switches (it draws nothing, and sets what a matmul needs):
        # one restore in, one capture out.
        (slot.state or self._fresh).restore()
        reply, slot.reply, slot.waiting = slot.reply, None, None
        try:
            if not slot.started:
                slot.started = True
                slot.result = slot.glet.switch()
            else:
                slot.result = slot.glet.switch(reply)
        except Exception as exc:  # noqa: BLE001 - the trial's own failure ends only that trial
            slot.error = exc
        finally:
            slot.state = _ThreadState.capture()
        slot.done = slot.glet.dead

    def _serve_linear(self, group: list[Slot]) -> None:
        module = group[0].waiting[1]
        xs = [s.waiting[2] for s in group]
        group[0].state.restore()  # the trials' grad mode and autocast (the same for the whole group)
        try:
            if len(group) == 1:
                outs = [type(module).forward(module, xs[0])]
            else:
                flat = [x.reshape(-1, x.shape[-1]) for x in xs]
                y = type(module).forward(module, torch.cat(flat))
                rows = y.split([f.shape[0] for f in flat])
                outs = [r.view(*x.shape[:-1], r.shape[-1]) for r, x in zip(rows, xs)]
                self.batched_calls += 1
                for s in group:
                    s.partners.update(other for other in group if other is not s)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: every trial of the group sees it
            outs = [_Failure(exc)] * len(group)
        for slot, out in zip(group, outs):
            slot.reply = out
            slot.waiting = None

    def _serve_backward(self, group: list[Slot]) -> None:
        losses = [s.waiting[1] for s in group]
        try:
            torch.autograd.backward(losses)
            replies = [None] * len(group)
        except Exception as exc:  # noqa: BLE001
            replies = [_Failure(exc)] * len(group)
        for slot, reply in zip(group, replies):
            slot.reply = reply
            slot.waiting = None


@dataclass
class _Failure:
    error: BaseException


def _groups(slots: list[Slot]) -> list[list[Slot]]:
    """Trials waiting on the same frozen weights in the same grad mode and autocast: one matmul each."""
    groups: dict[tuple, list[Slot]] = {}
    for s in slots:
        module = s.waiting[1]
        key = (id(module.weight), s.state.grad, s.state.autocast)
        groups.setdefault(key, []).append(s)
    return list(groups.values())
