"""One command that proves the GPU paths: `make gpu-check` (CUDA) or `make gpu-check-cpu` (CI: the same checks,
small, on CPU, so this script cannot rot).

    python scripts/gpu_check.py [--device cuda|cpu] [--group 1|2] [--only CHECK ...] [--out runs/gpu_check.md]
                                [--work DIR] [--list]

On one H200 it runs in two calls of at most 8 minutes each: `--group 1`, then `--group 2` (`make gpu-check
GROUP=1`, `GROUP=2`); each group's time limits add up to at most 8 minutes, and a check that outruns its limit is
killed and is a failed row. The second call merges its rows into the first's table (--out): one table in the end,
each row saying which call ran it, each call its GPU, torch/CUDA and library versions and when. With no --group
and no --only every check runs and the table starts afresh.

Group 1, training runs and the new GPU paths (each a subprocess with its own time limit; a failure does not stop
the others):
  demo-bf16          `lorasweep train` with the demo's defaults in bf16 mixed precision: finite, better than untrained
  ddp-1proc/-2proc   (>= 2 GPUs) 60 steps under `accelerate launch --multi_gpu --num_processes 2` against one process:
                     same config hash, eval loss within 2e-2 (adds 150 s of limits to the group)
  qlora-nf4-llama    tiny Llama (causal LM) on a 4-bit nf4 base with double quantization and adamw8bit
  qlora-nf4-minilm   MiniLM (classification) on a 4-bit nf4 base, bf16 compute
  bf16-fp32-adapters scripts/gpu_checks/bf16_adapters.py: a tiny Llama saved in bf16 trained with bf16 autocast:
                     memory/trainable_bytes = 4 x params/trainable (fp32 LoRA), the base bf16, the losses finite
  pack-checkpointing scripts/gpu_checks/pack_checkpointing.py: gradient checkpointing inside a pack (2 trials,
                     dropout on) equals each trial trained alone within 1e-4, every metric and history record
  mixed-serving      scripts/gpu_checks/mixed_serving.py: one batch mixing 2 adapters and the base on bf16, nf4+bf16
                     and int8 bases: finite, each row its adapter served alone within bf16 rounding
  chunked-loss       scripts/gpu_checks/chunked_loss.py: step/lm_loss.py's chunked LM loss against the full-
                     vocabulary one on 4 architectures, training and evaluation: within 1e-6 relative
  bench-lora-step    benchmarks/lora_step.py --device D   (lorasweep vs peft vs the bound)
Group 2, the benchmarks:
  bench-qlora        benchmarks/qlora.py step --device D  (QLoRA nf4, lorasweep vs peft)
  bench-mixed        benchmarks/mixed_batch.py --device D (one batch, many adapters)
  memory-estimate    benchmarks/memory_estimate.py --device D: `lorasweep estimate`'s predicted peak against the
                     measured one (CUDA: torch.cuda.max_memory_allocated of a real step, 28 configs; CPU: 3),
                     passes at median |error| <= 5 % and worst <= 10 %
  bench-packed       benchmarks/packed.py --device D: the headline sweep packed (CUDA: 8 trials of 30 steps at pack 1
                     and 8; CPU: 2 trials of 2 steps at pack 2), each packed trial's eval/loss against its
                     config trained alone; passes when every sweep accounts for all its trials and the max relative
                     difference is <= 1e-4; figures: the speedup at the largest pack
The table is printed and written to --out (markdown); logs go to --work/logs. Exit status 1 if a check of this
call failed, 2 on bad arguments. On CPU every check is shrunk to seconds (about 3 minutes in all on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from gpu_checks.catalog import BUDGET_S, GROUPS, checks, group_of
from gpu_checks.runner import machine, merge, read, render


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    parser.add_argument("--group", choices=sorted(GROUPS), default=None, help="run one group (one call)")
    parser.add_argument("--only", nargs="+", default=None, metavar="CHECK", help="run only these checks")
    parser.add_argument("--out", default="runs/gpu_check.md", help="the table (merged into with --group/--only)")
    parser.add_argument("--work", default=None, help="run directories and logs (default: a temporary folder)")
    parser.add_argument("--list", action="store_true", help="print the checks, groups and time limits, run nothing")
    return parser.parse_args(argv)


def select(all_checks, group: str | None, only: list[str] | None):
    """The checks of this call; unknown --only names are an error (a typo must not pass as 'nothing failed')."""
    names = {c.name for c in all_checks}
    unknown = sorted(set(only or []) - names - set(GROUPS["1"] + GROUPS["2"]))
    if unknown:
        raise ValueError(f"unknown check {', '.join(unknown)}; known: {', '.join(c.name for c in all_checks)}")
    chosen = [c for c in all_checks if (group is None or group_of(c.name) == group) and (not only or c.name in only)]
    if not chosen:
        raise ValueError("no check selected (--group and --only leave none here; the DDP pair needs two GPUs)")
    return chosen


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available() and not args.list:
        print("gpu-check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    gpus = (torch.cuda.device_count() or 1) if device == "cuda" else 0  # --list without a GPU: as on one
    work = Path(args.work or ("WORK" if args.list else tempfile.mkdtemp(prefix="gpu_check_")))
    all_checks = checks(device, work, gpus)
    try:
        chosen = select(all_checks, args.group, args.only)
    except ValueError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for c in all_checks:
            print(f"group {group_of(c.name)}  {c.name:<20} limit {c.timeout:>4} s  {' '.join(map(str, c.command[1:]))}")
        for g in GROUPS:
            print(f"group {g}: limits sum to {sum(c.timeout for c in all_checks if group_of(c.name) == g)} s")
        return 0
    limits = sum(c.timeout for c in chosen)
    budget = f" (a group's budget: {BUDGET_S} s)" if device == "cuda" else ""
    print(f"gpu-check on {device}: {len(chosen)} checks, time limits {limits} s{budget}")
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    call = {"id": f"{time.time():.3f}", "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), **machine(device)}
    call["command"] = "scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start, results = time.perf_counter(), []
    for check in chosen:
        result = check.run(logs, device)
        print(
            f"{'PASS' if result['ok'] else 'FAIL'} {check.name} ({result['seconds']:.0f} s): {result['figures']}",
            flush=True,
        )
        results.append(result)
    call["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    partial = args.group is not None or args.only is not None
    table = merge(read(out) if partial else {}, call, results, [c.name for c in all_checks])
    text = render(table, {c.name: group_of(c.name) for c in all_checks})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text.split("<!--")[0] + f"table: {out}; logs: {logs}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
