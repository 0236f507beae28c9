"""Atomic writes of files and folders: a reader sees the old one or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_directory(final: str | os.PathLike, replace: bool = True):
    """Yields a temporary folder beside `final` to fill; on success it becomes `final` (publish_directory), on
    failure it is removed. Readers see the old folder or the new one, never half of one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        publish_directory(tmp, final, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once published


def publish_directory(tmp: str | os.PathLike, final: str | os.PathLike, replace: bool = True) -> None:
    """Rename a fully written folder to `final`. An existing `final` is swapped out and removed (replace), or
    kept (not replace: another process published the same content first). Between the two renames of a
    replace `final` is briefly absent (never half-written); a crash there leaves the old one as .NAME.old-PID."""
    tmp, final = Path(tmp), Path(final)
    if final.exists() and replace:
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if replace or not final.is_dir():
            raise
