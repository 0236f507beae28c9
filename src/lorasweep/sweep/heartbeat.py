"""A trial's heartbeat that survives storage hiccups. Optuna's own heartbeat thread ends at the first error (a
SQLite lock held past its timeout, a dropped PostgreSQL connection) while the trial trains on; other workers
then fail the live trial as stale and its retry runs in the same run directory at the same time."""

from __future__ import annotations

import threading

from ..internals import heartbeat_storage


class Heartbeat:
    def __init__(self, storage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        if heartbeat_storage(self.storage) is not None:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        failures = 0
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep beating; say so once per run of failures
                failures += 1
                if failures == 1:
                    print(f"heartbeat of trial id {self.trial_id} failed ({type(exc).__name__}); retrying", flush=True)
            if self._stop.wait(timeout=interval if not failures else min(interval, 5)):
                return
