"""Study storages from one URL:

    sqlite:///runs/optuna.db          one machine (the default, under the run root)
    journal:///shared/fs/study.log    clusters with only a shared filesystem (file journal, NFS-safe open lock)
    postgresql://user@host/db         large clusters: heartbeats mark a killed worker's trial failed and retry it
                                      (a WAITING copy with its intermediate values: sweep/retry.py)

optuna-dashboard opens the same URLs: `optuna-dashboard sqlite:///runs/optuna.db`, `optuna-dashboard
postgresql://...`, and for a journal file `optuna-dashboard runs/study.log`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError, one_line

# A worker writes a heartbeat every interval; a RUNNING trial silent for the grace period is failed and re-queued.
# The grace is long on purpose: a heartbeat can wait behind SQLite's write lock (timeout 60 s) on a busy machine,
# and a live trial wrongly failed costs a whole retry. Killed workers are rare; a late retry is cheap.
HEARTBEAT_INTERVAL_S = int(os.environ.get("LORASWEEP_HEARTBEAT_INTERVAL", "20"))
GRACE_PERIOD_S = int(os.environ.get("LORASWEEP_GRACE_PERIOD", "180"))


def default_storage_url(run_root: str | Path) -> str:
    return f"sqlite:///{Path(run_root).resolve() / 'optuna.db'}"


def open_storage(
    url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S, create: bool = True
):
    """An Optuna storage for `url`; ValueError (one line) when it cannot be reached or parsed. `create=False`
    (status, report: reading an existing study) refuses a file storage that does not exist rather than create it."""
    import warnings

    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    from .retry import retry_stale

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats and retries are "experimental"

    file = (
        url[len("journal://") :]
        if url.startswith("journal://")
        else url[len("sqlite:///") :]
        if url.startswith("sqlite:///")
        else None
    )
    if not create and file is not None and not Path(file).is_file():
        raise UserError(f"no study storage at {file} (give --storage URL or the --run-root the sweep used)")
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = url[len("journal://") :]
        if not Path(path).parent.is_dir():
            raise UserError(f"journal storage folder does not exist: {Path(path).parent}")
        backend = JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise UserError(f"unsupported storage URL {url!r}: use sqlite:///FILE, journal:///FILE or postgresql://...")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry_stale,
        )
    except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use this storage"
        raise UserError(f"cannot open study storage {url}: {one_line(exc, 300)}") from None
    if url.startswith("sqlite"):
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _serialize_sqlite_transactions(engine) -> None:
    """Make Optuna's read-then-write steps atomic on SQLite. Python's sqlite3 opens a transaction only at the
    first write, so two workers can both read a trial as WAITING and both take it (Optuna's row lock, SELECT ...
    FOR UPDATE, does not exist in SQLite). BEGIN IMMEDIATE takes the write lock when a transaction starts
    (SQLAlchemy's recipe for pysqlite); the 60 s busy timeout makes the others wait, not fail."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN below opens every transaction

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the listeners
