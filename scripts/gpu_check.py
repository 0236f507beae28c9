"""One command that proves the GPU paths: `make gpu-check` (CUDA) or `make gpu-check-cpu` (CI: the same checks,
small, on CPU, so this script cannot rot).

    python scripts/gpu_check.py [--device cuda|cpu] [--out runs/gpu_check.md] [--work DIR] [--only CHECK ...]

Checks (each a subprocess with its own time limit; a failure does not stop the others):
  demo-bf16        `lorasweep train` with the demo's defaults in bf16 mixed precision: finite, better than untrained
  ddp-2proc        (≥ 2 GPUs) the same config under `accelerate launch --multi_gpu --num_processes 2`: same config
                   hash, eval loss within 2e-2 of the 1-process run
  qlora-nf4-llama  tiny Llama (causal LM) on a 4-bit nf4 base with double quantization and adamw8bit
  qlora-nf4-minilm MiniLM (classification) on a 4-bit nf4 base, bf16 compute
  bench-lora-step  benchmarks/lora_step.py --device D   (lorasweep vs peft vs the bound)
  bench-mixed      benchmarks/mixed_batch.py --device D (one batch, many adapters)
  bench-qlora      benchmarks/qlora.py step --device D  (QLoRA nf4, lorasweep vs peft)
  memory-estimate  benchmarks/memory_estimate.py --device D: `lorasweep estimate`'s predicted peak against the
                   measured one (CUDA: torch.cuda.max_memory_allocated of a real step; CPU: 3 configs), passes
                   at median |error| <= 5 % and worst <= 10 %
  bench-packed     benchmarks/packed.py --device D: the headline sweep packed (CUDA: 8 trials of 30 steps at pack 1
                   and 8; CPU: 3 trials of 2 steps at pack 1 and 2), each packed trial's eval/loss against its
                   config trained alone; passes when every sweep accounts for all its trials and the max relative
                   difference is <= 1e-4; figures: the speedup at the largest pack
One table of pass/fail and figures is printed and written to --out (markdown). Exit status 1 if any check failed.
On CUDA the full demo (200 steps) runs; on CPU every check is shrunk to seconds (about 2 minutes in all).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _lorasweep(*args):
    return [PY, "-m", "lorasweep.cli", "train", *args]


class Check:
    def __init__(self, name, command, timeout, judge, env=None):
        self.name, self.command, self.timeout, self.judge, self.env = name, command, timeout, judge, env or {}

    def run(self, log_dir: Path) -> dict:
        start = time.perf_counter()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "WANDB_MODE": "offline",
            **self.env,
        }
        try:
            proc = subprocess.run(self.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=self.timeout)
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            output = (
                (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            )
            output, code = output + f"\n[timed out after {self.timeout} s]", 124
        seconds = time.perf_counter() - start
        (log_dir / f"{self.name}.log").write_text(" ".join(map(str, self.command)) + "\n\n" + output)
        if code != 0:
            last = [l for l in output.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
            return {"check": self.name, "ok": False, "seconds": seconds, "figures": f"exit {code}: {last[0][:140]}"}
        try:
            ok, figures = self.judge(output)
        except Exception as exc:  # a judge that cannot read the output is a failure, with the reason
            ok, figures = False, f"unreadable output: {exc}"
        return {"check": self.name, "ok": ok, "seconds": seconds, "figures": figures}


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


# bench-packed on CPU: a small eval set and no per-run memory prediction, so two sweeps take well under a minute.
CPU_PACKED = ["data.max_eval_examples=32", "trainer.predict_memory=false"]


def _packed_judge(output):
    """packed.py's verdict: `packed: PASS|FAIL; ...; speedup at pack K: X.XXx; max rel diff vs solo: D (...)`."""
    found = re.search(
        r"^packed: (PASS|FAIL); .*speedup at pack (\d+): ([\d.]+)x; max rel diff vs solo: (.+?) \(tolerance",
        output,
        re.M,
    )
    if not found:
        raise ValueError("no verdict line")
    verdict, pack, speedup, diff = found.groups()
    return verdict == "PASS", f"pack {pack}: {float(speedup):.2f}× pack 1's trials/hour; max rel diff vs solo {diff}"


def checks(device: str, work: Path, gpus: int) -> list[Check]:
    cuda = device == "cuda"
    small = (
        []
        if cuda
        else ["trainer=smoke", "data.max_train_examples=64", "data.max_eval_examples=32", "data.max_length=32"]
    )
    common = ["tracking=none", "trainer.progress=false"]
    out: list[Check] = []

    root = work / "demo-bf16"
    out.append(
        Check(
            "demo-bf16",
            _lorasweep(
                *small, *common, "trainer.mixed_precision=bf16", "trainer.eval_at_start=true", f"run_root={root}"
            ),
            600 if cuda else 120,
            _train_judge(root, need_accuracy_gain=cuda),
        )
    )
    if cuda and gpus >= 2:
        root1, root2 = work / "ddp-1proc", work / "ddp-2proc"
        args = ["model.dropout=0.0", "trainer.max_steps=60", "trainer.eval_every=30", *common]
        one = Check("ddp-1proc", _lorasweep(*args, f"run_root={root1}"), 300, _train_judge(root1, False))
        out.append(one)

        def ddp_judge(output):
            m1, m2 = _metrics(root1), _metrics(root2)
            same = m1["config_hash"] == m2["config_hash"]
            close = abs(m1["eval/loss"] - m2["eval/loss"]) < 2e-2
            return same and close, (
                f"hash {m2['config_hash']} ({'same' if same else 'DIFFERENT'}), eval/loss "
                f"{m2['eval/loss']:.4f} vs 1-process {m1['eval/loss']:.4f}"
            )

        out.append(
            Check(
                "ddp-2proc",
                [
                    "accelerate",
                    "launch",
                    "--multi_gpu",
                    "--num_processes",
                    "2",
                    "-m",
                    "lorasweep.cli",
                    "train",
                    *args,
                    f"run_root={root2}",
                ],
                300,
                ddp_judge,
            )
        )
    root = work / "qlora-llama"
    out.append(
        Check(
            "qlora-nf4-llama",
            _lorasweep(
                "model=tiny_llama",
                "data=synth_sft",
                "lora=all",
                "model.quantization=nf4",
                "model.double_quant=true",
                "optim.name=adamw8bit",
                *small,
                *common,
                f"run_root={root}",
                *([] if not cuda else ["trainer.max_steps=60"]),
            ),
            300 if cuda else 120,
            _train_judge(root, False),
        )
    )
    root = work / "qlora-minilm"
    out.append(
        Check(
            "qlora-nf4-minilm",
            _lorasweep(
                "model.quantization=nf4",
                "model.compute_dtype=bfloat16",
                *small,
                *common,
                f"run_root={root}",
                *([] if not cuda else ["trainer.max_steps=100"]),
            ),
            300 if cuda else 120,
            _train_judge(root, False),
        )
    )
    tiny = [] if cuda else ["--repeats", "1", "--batch", "4", "--seq", "16"]
    out.append(
        Check(
            "bench-lora-step",
            [PY, "benchmarks/lora_step.py", "--device", device, *tiny],
            300 if cuda else 120,
            _ratio_judge(r"^lorasweep (\S+)\s.*\s(\d+\.\d+)\s*$", "/peft"),
        )
    )
    mixed = (
        []
        if cuda
        else ["--repeats", "1", "--batch", "8", "--seq", "16", "--models", "minilm", "--ranks", "8", "--distinct", "4"]
    )
    out.append(
        Check(
            "bench-mixed",
            [PY, "benchmarks/mixed_batch.py", "--device", device, *mixed],
            300 if cuda else 120,
            _mixed_judge,
        )
    )
    out.append(
        Check(
            "bench-qlora",
            [PY, "benchmarks/qlora.py", "step", "--device", device, *tiny],
            300 if cuda else 120,
            _ratio_judge(r"^lorasweep (\S+)\s.*\s(\d+\.\d+)\s*$", "/peft"),
        )
    )
    out.append(
        Check(
            "memory-estimate",
            [PY, "benchmarks/memory_estimate.py", "--device", device, *([] if cuda else ["--quick"])],
            600 if cuda else 180,
            _estimate_judge,
        )
    )
    # CUDA: pack 1 against pack 8, 8 trials of 30 steps (sized for the device's 10-minute calls); CPU: seconds.
    packed = (
        ["--trials", "8", "--packs", "1", "8", "--steps", "30"]
        if cuda
        else ["--trials", "3", "--packs", "1", "2", "--steps", "2", "--eval-every", "1", *CPU_PACKED]
    )
    out.append(
        Check(
            "bench-packed",
            [PY, "benchmarks/packed.py", "--device", device, *packed],
            420 if cuda else 180,
            _packed_judge,
        )
    )
    return out


def table(results: list[dict], device: str, gpus: int) -> str:
    lines = [
        f"# lorasweep gpu-check ({device}, {gpus} GPU(s))",
        "",
        "| check | result | seconds | figures |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['check']} | {'PASS' if r['ok'] else 'FAIL'} | {r['seconds']:.0f} | {r['figures']} |")
    passed = sum(r["ok"] for r in results)
    lines += ["", f"{passed}/{len(results)} passed"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    parser.add_argument("--out", default="runs/gpu_check.md", help="where the table is written")
    parser.add_argument("--work", default=None, help="run directories and logs (default: a temporary folder)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks")
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    results = []
    for check in checks(device, work, gpus):
        if args.only and check.name not in args.only:
            continue
        result = check.run(logs)
        print(
            f"{'PASS' if result['ok'] else 'FAIL'} {check.name} ({result['seconds']:.0f} s): {result['figures']}",
            flush=True,
        )
        results.append(result)
    text = table(results, device, gpus)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text + f"\ntable: {args.out}; logs: {logs}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
