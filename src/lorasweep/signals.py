"""A clean stop on SLURM's signals: TERM (preemption, scancel, scontrol requeue) and USR1 (`--signal`, sent
before the time limit). The handler only sets a flag; the trainer sees it at its next step, checkpoints and
returns, and the caller decides what follows (a sweep worker re-queues its trial, `lorasweep train` exits)."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    def __init__(self) -> None:
        self.received: str | None = None
        self._told = False

    def install(self) -> "StopOnSignal":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.received = self.received or signal.Signals(signum).name  # no I/O here: print() is not reentrant

    def __call__(self) -> bool:
        if self.received and not self._told:
            self._told = True
            print(f"received {self.received}: checkpointing and stopping", flush=True)
        return self.received is not None
