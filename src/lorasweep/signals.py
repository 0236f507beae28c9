"""A clean stop on SLURM's signals: TERM (preemption, scancel, scontrol requeue) and USR1 (`--signal`, sent
before the time limit). The handler only sets a flag; the trainer sees it at its next step, checkpoints and
returns, and the caller decides what follows (a sweep worker re-queues its trial, `lorasweep train` exits)."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    def __init__(self) -> None:
        self.received: str | None = None

    def install(self) -> "StopOnSignal":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            print(f"received {signal.Signals(signum).name}: checkpointing at the next step", flush=True)
        self.received = signal.Signals(signum).name

    def __call__(self) -> bool:
        return self.received is not None
