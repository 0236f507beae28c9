"""The checks of scripts/gpu_check.py: each one command (a subprocess), its time limit on CUDA and on CPU, its
group, and the judge that reads its output. On CUDA the checks do their real work; on CPU (CI) the same paths,
shrunk to seconds, so a check cannot rot.

Time limits: each group's CUDA limits add up to at most BUDGET_S (one call of at most 8 minutes on one H200),
sized at two to three times what each check's work should take there; a check that outruns its limit is killed
and is a failed row. With two or more GPUs the DDP pair adds DDP_S to group 1.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .common import VERDICT
from .runner import Check

PY = sys.executable
BUDGET_S = 480
# Group 1: training runs and the new GPU paths of issue 26; group 2: the benchmarks.
GROUPS = {
    "1": ["demo-bf16", "ddp-1proc", "ddp-2proc", "qlora-nf4-llama", "qlora-nf4-minilm", "bf16-fp32-adapters"]
    + ["pack-checkpointing", "mixed-serving", "chunked-loss", "bench-lora-step"],
    "2": ["bench-qlora", "bench-mixed", "memory-estimate", "bench-packed"],
}
ORDER = [name for names in GROUPS.values() for name in names]
DDP_S = 60 + 90


def group_of(name: str) -> str:
    return next(g for g, names in GROUPS.items() if name in names)


def _lorasweep(*args):
    return [PY, "-m", "lorasweep.cli", "train", *args]


def _metrics(run_root: Path) -> dict:
    files = sorted(run_root.glob("*/metrics.json"))
    if len(files) != 1:
        raise ValueError(f"expected one run under {run_root}, found {len(files)}")
    return {**json.loads(files[0].read_text()), "config_hash": files[0].parent.name}


def _train_judge(run_root: Path, need_accuracy_gain: bool):
    def judge(output):
        m = _metrics(run_root)
        loss = m["eval/loss"]
        ok = m.get("status") == "completed" and loss == loss and loss != float("inf")
        figures = f"hash {m['config_hash']}, eval/loss {loss:.4f}"
        if "eval/accuracy" in m:
            figures += f", acc {m['eval/accuracy']:.3f}"
            if need_accuracy_gain and "eval/initial_accuracy" in m:
                ok = ok and m["eval/accuracy"] > m["eval/initial_accuracy"]
                figures += f" (untrained {m['eval/initial_accuracy']:.3f})"
        for key, label in (
            ("memory/peak_bytes", "peak"),
            ("memory/base_weights_bytes", "base"),
            ("memory/optimizer_state_bytes", "optim"),
        ):
            if key in m:
                figures += f", {label} {m[key] / 2**20:.1f} MiB"
        return ok, figures

    return judge


def _ratio_judge(pattern: str, label: str):
    def judge(output):
        found = re.findall(pattern, output, flags=re.M)
        if not found:
            raise ValueError(f"no line matching {pattern!r}")
        return True, ", ".join(f"{label} {name}: {float(r):.2f}×" for name, r in found)

    return judge


def _mixed_judge(output):
    """mixed_batch.py's ratio rows: `model r distinct ours_s vs_peft vs_split vs_merged` (>1: lorasweep faster)."""
    rows = re.findall(r"^(\S+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", output, flags=re.M)
    if not rows:
        raise ValueError("no throughput-ratio rows")
    return True, "; ".join(f"{m} r={r} {d} adapters: {p}× peft's speed" for m, r, d, p, _, _ in rows)


def _estimate_judge(output):
    """memory_estimate.py's summary: `N configs on D: median |error| X%, worst Y%`."""
    found = re.search(r"^(\d+) configs on \S+: median \|error\| ([\d.]+)%, worst ([\d.]+)%", output, flags=re.M)
    if not found:
        raise ValueError("no summary line")
    n, median, worst = int(found.group(1)), float(found.group(2)), float(found.group(3))
    return (
        median <= 5 and worst <= 10,
        f"predicted vs measured peak, {n} configs: median abs error {median:.2f}%, worst {worst:.2f}%",
    )


def _packed_judge(speed: bool):
    """packed.py's verdict: `packed: PASS|FAIL; ...; speedup at pack K: X.XXx; max rel diff vs solo: D (...)`;
    `speed`: the sweeps at pack 1 and K are comparable figures (on CUDA; the CPU check runs one sweep only)."""

    def judge(output):
        found = re.search(
            r"^packed: (PASS|FAIL); .*speedup at pack (\d+): ([\d.]+)x; max rel diff vs solo: (.+?) \(tolerance",
            output,
            re.M,
        )
        if not found:
            raise ValueError("no verdict line")
        verdict, pack, speedup, diff = found.groups()
        figures = f"pack {pack}: {float(speedup):.2f}× pack 1's trials/hour; " if speed else f"pack {pack}: "
        return verdict == "PASS", figures + f"max rel diff vs solo {diff}, every trial accounted for"

    return judge


def verdict_judge(output):
    """The last `gpu-check verdict: {...}` line of a scripts/gpu_checks script (common.verdict)."""
    lines = [line for line in output.splitlines() if line.startswith(VERDICT)]
    if not lines:
        raise ValueError("no verdict line")
    found = json.loads(lines[-1][len(VERDICT) :])
    return bool(found["ok"]), str(found["figures"])


def _script(name: str, script: str, device: str, work: Path, timeout: int) -> Check:
    command = [PY, f"scripts/gpu_checks/{script}.py", "--device", device, "--work", str(work / name)]
    return Check(name, command, timeout, verdict_judge, verdict=True)


# bench-packed on CPU: small train and eval sets and no per-run memory prediction.
CPU_PACKED = ["data.max_train_examples=32", "data.max_eval_examples=16", "data.max_length=32"]
CPU_PACKED += ["trainer.predict_memory=false"]


def checks(device: str, work: Path, gpus: int) -> list[Check]:
    """Every check for this device, in ORDER; the DDP pair only with two or more GPUs."""
    cuda = device == "cuda"

    def limit(on_cuda: int, on_cpu: int) -> int:
        return on_cuda if cuda else on_cpu

    # CPU: the smoke trainer (4 steps, evaluations at 2 and 4) on a few short examples, no memory prediction
    small = [] if cuda else ["trainer=smoke", "data.max_train_examples=32", "data.max_eval_examples=16"]
    small += [] if cuda else ["data.max_length=32", "trainer.predict_memory=false"]
    common = ["tracking=none", "trainer.progress=false"]
    out: list[Check] = []

    root = work / "demo-bf16"
    demo = _lorasweep(*small, *common, "trainer.mixed_precision=bf16", "trainer.eval_at_start=true", f"run_root={root}")
    out.append(Check("demo-bf16", demo, limit(90, 120), _train_judge(root, need_accuracy_gain=cuda)))
    if cuda and gpus >= 2:
        root1, root2 = work / "ddp-1proc", work / "ddp-2proc"
        args = ["model.dropout=0.0", "trainer.max_steps=60", "trainer.eval_every=30", *common]
        out.append(Check("ddp-1proc", _lorasweep(*args, f"run_root={root1}"), 60, _train_judge(root1, False)))

        def ddp_judge(output):
            m1, m2 = _metrics(root1), _metrics(root2)
            same = m1["config_hash"] == m2["config_hash"]
            close = abs(m1["eval/loss"] - m2["eval/loss"]) < 2e-2
            return same and close, (
                f"hash {m2['config_hash']} ({'same' if same else 'DIFFERENT'}), eval/loss "
                f"{m2['eval/loss']:.4f} vs 1-process {m1['eval/loss']:.4f}"
            )

        # `accelerate launch` of this interpreter (the PATH's `accelerate` may be another environment's)
        launch = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        launch += ["-m", "lorasweep.cli", "train"]
        out.append(Check("ddp-2proc", [*launch, *args, f"run_root={root2}"], 90, ddp_judge))
    root = work / "qlora-llama"
    llama = ["model=tiny_llama", "data=synth_sft", "lora=all", "model.quantization=nf4", "model.double_quant=true"]
    llama += ["optim.name=adamw8bit", *small, *common, f"run_root={root}", *(["trainer.max_steps=60"] if cuda else [])]
    out.append(Check("qlora-nf4-llama", _lorasweep(*llama), limit(60, 120), _train_judge(root, False)))
    root = work / "qlora-minilm"
    minilm = ["model.quantization=nf4", "model.compute_dtype=bfloat16", *small, *common, f"run_root={root}"]
    minilm += ["trainer.max_steps=100"] if cuda else []
    out.append(Check("qlora-nf4-minilm", _lorasweep(*minilm), limit(60, 120), _train_judge(root, False)))
    out.append(_script("bf16-fp32-adapters", "bf16_adapters", device, work, limit(60, 120)))
    out.append(_script("pack-checkpointing", "pack_checkpointing", device, work, limit(60, 120)))
    out.append(_script("mixed-serving", "mixed_serving", device, work, limit(45, 90)))
    out.append(_script("chunked-loss", "chunked_loss", device, work, limit(45, 90)))
    tiny = [] if cuda else ["--repeats", "1", "--batch", "4", "--seq", "16", "--presets", "all"]
    peft_ratio = _ratio_judge(r"^lorasweep (\S+)\s.*\s(\d+\.\d+)\s*$", "/peft")
    lora_step = [PY, "benchmarks/lora_step.py", "--device", device, *tiny]
    out.append(Check("bench-lora-step", lora_step, limit(60, 120), peft_ratio))
    qlora = [PY, "benchmarks/qlora.py", "step", "--device", device, *tiny]
    out.append(Check("bench-qlora", qlora, limit(60, 120), peft_ratio))
    mixed = [] if cuda else ["--repeats", "1", "--batch", "8", "--seq", "16", "--models", "minilm", "--ranks", "8"]
    mixed += [] if cuda else ["--distinct", "4"]
    mixed_cmd = [PY, "benchmarks/mixed_batch.py", "--device", device, *mixed]
    out.append(Check("bench-mixed", mixed_cmd, limit(120, 120), _mixed_judge))
    estimate = [PY, "benchmarks/memory_estimate.py", "--device", device, *([] if cuda else ["--quick"])]
    out.append(Check("memory-estimate", estimate, limit(150, 180), _estimate_judge))
    # CUDA: pack 1 against pack 8, 8 trials of 30 steps, each packed trial against its solo run; CPU: one sweep
    # at pack 2, 2 trials of 2 steps, against their solo runs (a CPU speedup means nothing: the sweep is the path).
    packed = (
        ["--trials", "8", "--packs", "1", "8", "--steps", "30"]
        if cuda
        else ["--trials", "2", "--packs", "2", "--steps", "2", "--eval-every", "2", *CPU_PACKED]
    )
    out.append(
        Check(
            "bench-packed",
            [PY, "benchmarks/packed.py", "--device", device, *packed],
            limit(150, 180),
            _packed_judge(cuda),
        )
    )
    return sorted(out, key=lambda c: ORDER.index(c.name))
