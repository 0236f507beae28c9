"""Read a W&B offline run file (wandb/offline-run-*/run-*.wandb) back, for tests.

wandb 0.31 writes only this binary log offline and ships no Python reader for it. Format: a 7-byte header
starting b":W&B", then 32 KiB blocks of LevelDB-style chunks `crc32c(4) length(2, LE) type(1) data`
(type 1 full, 2 first, 3 middle, 4 last); the joined payloads are wandb_internal_pb2.Record messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < 7:  # block trailer too small for a chunk header: padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


@dataclass
class OfflineRun:
    run_id: str = ""
    group: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def read_run(path: Path, wait_s: float = 20.0) -> OfflineRun:
    """The run as written so far. W&B's service appends the last records (exit) after run.finish() returns,
    so wait up to `wait_s` for the exit record before reading what is there."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        run = _read_once(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _read_once(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.tags = record.run.run_id, record.run.run_group, list(record.run.tags)
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in run.config.items()}
    return run


def find_runs(root: Path) -> list[Path]:
    return sorted(Path(root).glob("**/wandb/offline-run-*/run-*.wandb"))
