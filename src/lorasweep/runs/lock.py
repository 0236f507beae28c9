"""At most one process trains a run directory at a time.

The lock is filelock's FileLock on runs/.locks/<hash>.lock, outside the run directory (which appears only once
training begins): an fcntl/flock lock that the kernel drops when its holder dies (killed, OOM, a requeued SLURM
job), so a lock can never be left stale; on NFS (v3 with lockd, v4) Linux carries such locks to the server, so
processes on different nodes exclude each other too. Beside it, runs/.locks/<hash>.holder says who holds it (host,
pid, SLURM job) for the messages of whoever waits; it is removed when the lock is released.

The empty .lock files stay in runs/.locks/ and are harmless: deleting a lock file on release would let a waiting
process hold a lock on a deleted file while a third locks a new one (the classic unlink race), so they are kept;
`rm -r runs/.locks` while nothing runs is safe.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import UserError
from ..fileio import atomic_write_json
from ..slurm.identity import job as slurm_job

LOCK_DIR = ".locks"  # in the run root, beside the run directories


class RunLockTimeout(UserError):
    """The run's lock could not be had in time (a user-facing, one-line error)."""


class RunLockStopped(Exception):
    """A stop signal arrived while waiting for another process's run: the caller treats it as interrupted."""


def holder_identity() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job()}


def describe_holder(identity: dict | None) -> str:
    if not identity:
        return "another process"
    job = f", SLURM job {identity['slurm_job']}" if identity.get("slurm_job") else ""
    return f"{identity.get('host')} pid {identity.get('pid')}{job}"


class RunLock:
    """`with RunLock(run_path, timeout) as lock:` — `lock.waited_for` names the holder it waited for, if any."""

    def __init__(self, run_path: Path, timeout: float | None = None, announce=print, should_stop=None):
        self.path = Path(run_path)
        self.timeout = timeout  # seconds; None: as long as it takes
        self.announce = announce
        self.should_stop = should_stop  # a signal while waiting: give up (RunLockStopped)
        self.waited_for: str | None = None
        self._lock = FileLock(str(self.path.parent / LOCK_DIR / f"{self.path.name}.lock"))

    @property
    def holder_file(self) -> Path:
        return self.path.parent / LOCK_DIR / f"{self.path.name}.holder"

    def holder(self) -> dict | None:
        try:
            return json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "RunLock":
        (self.path.parent / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            self.waited_for = describe_holder(self.holder())
            self.announce(f"run {self.path.name} is being trained by {self.waited_for}; waiting for it", flush=True)
            self._wait()
        try:
            atomic_write_json(self.holder_file, holder_identity())
        except BaseException:
            self._lock.release()
            raise
        return self

    def _wait(self) -> None:
        """Acquire in one-second slices, so that a stop signal (preemption, Ctrl-C) is seen while waiting."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if self.should_stop is not None and self.should_stop():
                raise RunLockStopped(
                    f"stopped while waiting for run directory {self.path} (locked by {describe_holder(self.holder())})"
                )
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            try:
                self._lock.acquire(timeout=max(left, 0))
                return
            except Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise RunLockTimeout(
                        f"run directory {self.path} is locked by "
                        f"{describe_holder(self.holder())}; gave up after {self.timeout:g} s "
                        "(trainer.lock_timeout_s)"
                    ) from None

    def __exit__(self, *exc) -> None:
        try:
            self.holder_file.unlink(missing_ok=True)  # while still held: no one else writes it now
        finally:
            self._lock.release()
