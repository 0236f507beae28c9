"""scripts/gpu_check.py's machinery, without running its checks (CI runs those: `make gpu-check-cpu`): each group
fits one call of 8 minutes on one GPU, a check that outruns its limit is a failed row and not a hung call, a
script's verdict is read whether it passed or failed, and the second call's rows merge into the first's table."""

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402
from gpu_checks.catalog import BUDGET_S, DDP_S, GROUPS, checks, group_of  # noqa: E402
from gpu_checks.common import VERDICT  # noqa: E402
from gpu_checks.runner import Check, merge, read, render  # noqa: E402

PY = sys.executable


@pytest.mark.parametrize("gpus", [1, 2])
def test_each_group_fits_one_call_on_cuda(tmp_path, gpus):
    all_checks = checks("cuda", tmp_path, gpus)
    names = [c.name for c in all_checks]
    assert len(names) == len(set(names)) and set(names) <= set(GROUPS["1"] + GROUPS["2"])
    assert ("ddp-2proc" in names) == (gpus >= 2)
    for group in GROUPS:
        limits = sum(c.timeout for c in all_checks if group_of(c.name) == group)
        assert limits <= BUDGET_S + (DDP_S if gpus >= 2 and group == "1" else 0), (group, limits)
    new = {"bf16-fp32-adapters", "pack-checkpointing", "mixed-serving", "chunked-loss"}
    assert new <= set(names) and all((ROOT / c.command[1]).is_file() for c in all_checks if c.name in new)


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    for _ in range(50):
        if not status.exists() or "State:\tZ" in status.read_text():  # ended (a zombie until someone reaps it)
            return True
        time.sleep(0.1)
    return False


def test_a_check_past_its_limit_is_a_failed_row_and_takes_its_processes_along(tmp_path):
    """Killed with what it started: a grandchild (a sweep's worker, holding GPU memory) must not outlive its check."""
    pid_file = tmp_path / "grandchild.pid"
    grandchild = f"import subprocess, time; p = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])"
    code = (
        grandchild + f"; open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    row = Check("sleeper", [PY, "-c", code], 3, None).run(tmp_path, "cpu")
    assert not row["ok"] and row["seconds"] < 30 and row["figures"] == "exit 124: [timed out after 3 s]"
    assert "started" in (tmp_path / "sleeper.log").read_text()
    assert _gone(int(pid_file.read_text()))


@pytest.mark.parametrize("ok", [True, False])
def test_a_scripts_verdict_is_its_row_passed_or_failed(tmp_path, ok):
    from gpu_checks.catalog import verdict_judge

    line = VERDICT + '{"ok": %s, "figures": "max rel diff 3e-07"}' % ("true" if ok else "false")
    code = f"print({line!r}); raise SystemExit({0 if ok else 1})"
    row = Check("v", [PY, "-c", code], 30, verdict_judge, verdict=True).run(tmp_path, "cpu")
    assert row["ok"] is ok and row["figures"] == "max rel diff 3e-07"
    for code, last in (("raise SystemExit(3)", "exit 3: (no output)"), ("1 / 0", "exit 1: ZeroDivisionError")):
        crash = Check("c", [PY, "-c", code], 30, verdict_judge, verdict=True).run(tmp_path, "cpu")
        assert not crash["ok"] and crash["figures"].startswith(last), crash  # a crash, not a verdict


def _call(n, device="cuda"):
    return {"id": str(n), "device": device, "started": f"2026-12-0{n} 10:00", "seconds": 100.0 * n}


def _row(check, ok=True, figures="fine"):
    return {"check": check, "ok": ok, "seconds": 12.0, "ran": "2026-12-01 10:01", "limit": 60, "figures": figures}


def test_the_second_call_merges_into_the_first_calls_table(tmp_path):
    order, expected = ["a", "b", "c"], {"a": "1", "b": "1", "c": "2"}
    out = tmp_path / "gpu_check.md"
    first = {**_call(1), "command": "--group 1", "where": "NVIDIA H200 x 1, CUDA 13.0; torch 2.11.0"}
    out.write_text(render(merge({}, first, [_row("b", ok=False), _row("a")], order), expected))
    assert "not run yet: c (group 2)" in out.read_text()
    second = {**_call(2), "command": "--group 2", "where": "NVIDIA H200 x 1, CUDA 13.0; torch 2.11.0"}
    table = merge(read(out), second, [_row("c", figures="x | y")], order)
    third = {**_call(3), "command": "--only b", "where": "NVIDIA H200 x 1"}
    table = merge(table, third, [_row("b")], order)  # a rerun replaces its old row
    text = render(table, expected)
    assert [r["check"] for r in table["rows"]] == order and all(r["ok"] for r in table["rows"])
    assert [r["call"] for r in table["rows"]] == ["1", "3", "2"]
    assert "3/3 passed\n" in text and "not run yet" not in text and "x \\| y" in text  # a | kept inside its cell
    assert "NVIDIA H200 x 1, CUDA 13.0; torch 2.11.0" in text and text.count("- call ") == 3
    out.write_text(text)
    cpu = merge(read(out), {**_call(4, "cpu"), "command": "", "where": "CPU"}, [_row("a")], order)
    assert [r["check"] for r in cpu["rows"]] == ["a"] and [c["id"] for c in cpu["calls"]] == ["4"]  # no mixing


def test_unknown_checks_are_refused(capsys):
    assert gpu_check.main(["--device", "cpu", "--only", "demo-bf16", "nope"]) == 2
    assert "unknown check nope" in capsys.readouterr().err
