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
global RNGs, the grad mode, autocast and the saved-tensor hooks in and out at every switch (state.py), so a trial
draws exactly the dropout masks it would draw alone and its gradient checkpoints hold only its own tensors. Only
the base GEMM's row blocking differs from a solo run (float rounding, far below 1e-4).

Gradient checkpointing (non-reentrant): the hub runs a batched matmul inside no trial's checkpoint, so a trial's
checkpoint never saves the frozen matmul's tensors, and its recomputation (in the combined backward, outside any
trial) must not either: `linear` outside a trial runs the layer under pass-through hooks, which keep its saved
tensors from the checkpoint being recomputed. They are not needed there: the backward goes through the original
(batched) matmul's own saved tensors.

Out of memory in an op the hub serves while it holds more than one trial (a batched matmul, a combined
backward) is the pack's doing, not any trial's: every trial of the pack is stopped with `PackRetry` (its run ends
interrupted and resumes from its checkpoint) and the worker goes on with half as many trials (sweep/packed.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import greenlet
import torch

from ..training.memory import PeakMemory
from .state import ThreadState


@dataclass(eq=False)  # a slot is itself: kept in sets (partners)
class Slot:
    """One trial in the pack: its greenlet, what it waits on, and, once ended, its result or error."""

    label: str
    glet: Any
    state: ThreadState | None = None
    waiting: tuple | None = None  # ("linear", module, x) | ("backward", loss)
    reply: Any = None
    started: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    partners: set = field(default_factory=set)  # the slots of the trials it shared a base matmul with


class Pack:
    """The hub: `start` trials, then `run(on_done)` until none is left; `on_done(slot)` may start more (refill)."""

    def __init__(self, size: int | None = None) -> None:
        self.slots: dict[Any, Slot] = {}
        # The trials it was planned for (sweep/pack_plan.py): each trial's micro_batch=auto fits its share of the
        # memory (estimate/headroom.py). Kept when an out of memory halves the pack, so the trials left do not
        # grow into the memory freed. None: as many as are started.
        self.size = size
        self.free_memory: tuple | None = None  # (bytes, what): the device measured at its first trial's plan
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.memory = PeakMemory(device).start()  # the pack's peak from here on: what its trials record
        self.batched_calls = 0  # base matmuls that served more than one trial (for the benchmark's record)

    def __len__(self) -> int:
        return len(self.slots)

    def most_trials(self) -> int:
        return max(self.size or 0, len(self.slots), 1)

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
        if slot is None:  # outside a trial: a checkpoint's recomputation inside the combined backward (see above)
            with torch.autograd.graph.saved_tensors_hooks(_same, _same):
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
        caller = self._fresh = ThreadState.take()  # also what a new trial starts from
        try:
            self._rounds(on_done)
        finally:
            ThreadState.take()  # whatever a failure left on the thread
            caller.put()

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
                    if group[0].waiting is not None:  # (not stopped by an earlier group's out of memory)
                        self._serve_linear(group)
            elif waiting:
                self._serve_backward(waiting)

    def _resume(self, slot: Slot) -> None:
        # The hub keeps no state of its own between switches (it draws nothing, and sets what a matmul needs):
        # one put in, one take out.
        (slot.state or self._fresh).put()
        reply, slot.reply, slot.waiting = slot.reply, None, None
        try:
            if not slot.started:
                slot.started = True
                slot.result = slot.glet.switch()
            else:
                slot.result = slot.glet.switch(reply)
        except (Exception, PackRetry) as exc:  # noqa: BLE001 - the trial's own failure ends only that trial
            slot.error = exc
        finally:
            slot.state = ThreadState.take()
        slot.done = slot.glet.dead

    def _serve_linear(self, group: list[Slot]) -> None:
        module = group[0].waiting[1]
        xs = [s.waiting[2] for s in group]
        group[0].state.modes()  # the trials' grad mode and autocast (the same for the whole group)
        try:
            if len(group) == 1:
                outs = [self._shared_forward(module, xs[0])]
            else:
                flat = [x.reshape(-1, x.shape[-1]) for x in xs]
                y = self._shared_forward(module, torch.cat(flat))
                rows = y.split([f.shape[0] for f in flat])
                outs = [r.view(*x.shape[:-1], r.shape[-1]) for r, x in zip(rows, xs)]
                self.batched_calls += 1
                for s in group:
                    s.partners.update(other for other in group if other is not s)
        except Exception as exc:  # noqa: BLE001 - every trial of the group sees it
            self._failed(group, exc, "batched matmul" if len(group) > 1 else "frozen matmul")
            return
        self._reply(group, outs)

    @staticmethod
    def _shared_forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer on its waiting trials' rows (all at once): the one place the hub runs a layer, which
        tests/test_pack_isolation.py makes run out of memory."""
        return type(module).forward(module, x)

    def _serve_backward(self, group: list[Slot]) -> None:
        try:
            torch.autograd.backward([s.waiting[1] for s in group])
        except Exception as exc:  # noqa: BLE001
            self._failed(group, exc, "combined backward")
            return
        self._reply(group, [None] * len(group))

    def _failed(self, group: list[Slot], error: Exception, op: str) -> None:
        """The group's op raised: the group's trials see the error, or, out of memory with more than one trial in
        the pack, every started trial of the pack is stopped for a retry in a smaller pack."""
        if not (isinstance(error, torch.OutOfMemoryError) and len(self.slots) > 1):
            self._reply(group, [_Failure(error)] * len(group))
            return
        started = [s for s in self.slots.values() if s.started]
        retry = PackRetry(f"out of memory in the {op} of a pack of {len(started)}", max(1, len(started) // 2))
        self._reply(started, [_Failure(retry)] * len(started))

    @staticmethod
    def _reply(group: list[Slot], replies: list) -> None:
        for slot, reply in zip(group, replies):
            slot.reply = reply
            slot.waiting = None


class PackRetry(KeyboardInterrupt):
    """Raised in every trial of a pack whose shared op ran out of memory. A KeyboardInterrupt to the trial's code,
    because like a stop it is no failure of the trial's: run.train records the run as interrupted (it resumes
    from its last checkpoint) and the worker's handler of trial failures does not catch it; the hub does, and the
    worker re-queues the trial and packs at most `size` trials from then on."""

    def __init__(self, message: str, size: int):
        super().__init__(f"{message}: retried in packs of at most {size}")
        self.size = size


@dataclass
class _Failure:
    error: BaseException


def _same(tensor):
    return tensor


def _groups(slots: list[Slot]) -> list[list[Slot]]:
    """Trials waiting on the same frozen weights in the same grad mode and autocast: one matmul each."""
    groups: dict[tuple, list[Slot]] = {}
    for s in slots:
        module = s.waiting[1]
        key = (id(module.weight), s.state.grad, s.state.autocast)
        groups.setdefault(key, []).append(s)
    return list(groups.values())
