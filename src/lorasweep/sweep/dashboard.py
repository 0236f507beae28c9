"""`lorasweep dashboard --study NAME`: optuna-dashboard (the optional extra `lorasweep[dashboard]`) on
127.0.0.1, live on the study's own storage. It gets the storage object lorasweep itself opens (sweep/storage.py:
SQLite with its busy timeout and transaction settings, a journal file with its lock, PostgreSQL), not a URL,
so it reads the study exactly the way the workers write it."""

from __future__ import annotations

from .. import internals
from ..errors import UserError

HOST = "127.0.0.1"


def serve(study_name: str, storage_url: str, port: int = 8080, host: str = HOST) -> None:
    """Blocks until interrupted; ValueError (one line) when the extra is missing or the study is not there."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("optuna-dashboard is not installed: pip install 'lorasweep[dashboard]'") from None
    from .study import load_study

    study, _, _ = load_study(study_name, storage_url)  # a missing study fails here, listing the ones there
    if not 0 < port < 65536:
        raise UserError(f"--port must be 1-65535, got {port}")
    url = f"http://{host}:{port}/dashboard/studies/{internals.study_id(study)}"
    print(f"optuna-dashboard for study {study_name}: {url} (Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(internals.study_storage(study), host=host, port=port)
    except OSError as exc:  # the port is taken
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
