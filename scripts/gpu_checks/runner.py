"""Running one check (a subprocess with a time limit: a check that outruns it is a failed row, never a hung
call), and the one table the calls of scripts/gpu_check.py leave: rows of a later call replace the same checks'
rows and keep the others, each row saying which call ran it, each call its machine and versions.

The table file is markdown; its rows and calls are also kept, as JSON, in a comment at its end, which is what the
next call merges into (the only state: carry the file to the next machine and the next call adds to it).
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = re.compile(r"^<!-- gpu-check data: (.*) -->$", re.M)


class Check:
    def __init__(self, name, command, timeout, judge, env=None, verdict=False):
        self.name, self.command, self.timeout, self.judge, self.env = name, command, timeout, judge, env or {}
        self.verdict = verdict  # the script prints a verdict line and exits 1 on FAIL: judged, not a crash

    def run(self, log_dir: Path, device: str) -> dict:
        start, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "WANDB_MODE": "offline",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
            **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}),  # --device cpu: really the CPU
            **self.env,
        }
        # Its own process group: at the limit the check and everything it started (sweep workers, accelerate's
        # processes) are killed together, so no grandchild holds the pipes open and the call goes on.
        proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=self.timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output, code = (output or "") + f"\n[timed out after {self.timeout} s]", 124
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): take the check's processes along
                os.killpg(proc.pid, signal.SIGKILL)
        seconds = time.perf_counter() - start
        (log_dir / f"{self.name}.log").write_text(" ".join(map(str, self.command)) + "\n\n" + output)
        row = {"check": self.name, "seconds": seconds, "ran": started, "limit": self.timeout}
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        crashed = {**row, "ok": False, "figures": f"exit {code}: {last[0][:140]}"}
        if code != 0 and not (self.verdict and code == 1):
            return crashed
        try:
            ok, figures = self.judge(output)
        except Exception as exc:  # a judge that cannot read the output is a failure, with the reason
            if code != 0:
                return crashed  # a script that raised (exit 1 too) before its verdict: its last line says why
            ok, figures = False, f"unreadable output: {exc}"
        return {**row, "ok": ok and code == 0, "figures": figures}


def machine(device: str) -> dict:
    """What the table says about where a call ran: the GPU, torch and CUDA, the libraries the checks use."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    if device == "cuda":
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        where = f"{', '.join(names)} x {torch.cuda.device_count()}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), no CUDA"
    versions = []
    for package in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} missing")
    return {"device": device, "where": f"{where}; torch {torch.__version__}, {', '.join(versions)}"}


def read(path: Path) -> dict:
    """The rows and calls a table file holds ({} if there is none, or it is not one of ours)."""
    try:
        found = DATA.search(path.read_text())
        return json.loads(found.group(1)) if found else {}
    except (OSError, ValueError):
        return {}


def merge(old: dict, call: dict, rows: list[dict], order: list[str]) -> dict:
    """This call's rows over the old table's: a check run now replaces its old row; old rows of another device
    (a CPU table under a CUDA run) are dropped; calls no row refers to any more are dropped."""
    for row in rows:
        row["call"] = call["id"]
    calls = {c["id"]: c for c in old.get("calls", []) if c.get("device") == call["device"]}
    now = {r["check"] for r in rows}
    kept = [r for r in old.get("rows", []) if r.get("call") in calls and r["check"] not in now]
    merged = sorted(kept + rows, key=lambda r: order.index(r["check"]) if r["check"] in order else len(order))
    used = {r["call"] for r in merged}
    calls[call["id"]] = call
    return {"rows": merged, "calls": [c for c in calls.values() if c["id"] in used]}


def render(table: dict, expected: dict[str, str]) -> str:
    """Markdown: the rows, a summary (and which expected checks have no row yet), the calls, the data comment.
    `expected`: check name -> its group, every check this machine runs."""
    calls = {c["id"]: (n + 1, c) for n, c in enumerate(table["calls"])}
    lines = [
        f"# lorasweep gpu-check ({table['calls'][-1]['device']})",
        "",
        "| check | group | result | seconds (limit) | ran (UTC) | figures |",
        "|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        cells = [r["check"], expected.get(r["check"], "-"), "PASS" if r["ok"] else "FAIL"]
        cells += [
            f"{r['seconds']:.0f} ({r['limit']})",
            f"{r['ran']} (call {calls[r['call']][0]})",
            r["figures"].replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    passed = sum(r["ok"] for r in table["rows"])
    missing = [
        f"{name} (group {group})" for name, group in expected.items() if name not in {r["check"] for r in table["rows"]}
    ]
    lines += [
        "",
        f"{passed}/{len(table['rows'])} passed" + (f"; not run yet: {', '.join(missing)}" if missing else ""),
        "",
    ]
    for number, c in calls.values():
        lines.append(f"- call {number}: `{c['command']}` at {c['started']} UTC, {c['seconds']:.0f} s; {c['where']}")
    lines += ["", f"<!-- gpu-check data: {json.dumps(table)} -->"]
    return "\n".join(lines) + "\n"
