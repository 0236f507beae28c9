"""A clean stop on a signal: INT (Ctrl-C), TERM (preemption, scancel, scontrol requeue) and USR1 (SLURM's
`--signal`, sent before the time limit). The handler only sets a flag; the trainer sees it at its next step,
checkpoints and returns, and the caller decides what follows (a sweep worker re-queues its trial, `lorasweep
train` exits). A second Ctrl-C stops at once (Python's own KeyboardInterrupt).

Not in lorasweep/slurm/: every local `lorasweep train` and sweep worker installs it for Ctrl-C, and it knows
nothing of SLURM. SLURM's side of a stop (USR1 -> scontrol requeue, TERM -> every process of the step) is the
batch shell's, in slurm/launch.sh."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    def __init__(self) -> None:
        self.received: str | None = None
        self.signum: int | None = None
        self._told = False

    def install(self) -> "StopOnSignal":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:  # a second Ctrl-C: do not wait
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name  # no I/O here: print() is not reentrant
        self.signum = self.signum or signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130 for Ctrl-C)."""
        return 128 + self.signum if self.signum else 0

    def __call__(self) -> bool:
        if self.received and not self._told:
            self._told = True
            print(f"received {self.received}: checkpointing and stopping", flush=True)
        return self.received is not None
