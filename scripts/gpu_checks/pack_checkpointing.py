"""Gradient checkpointing inside a pack equals solo (issue 26): two tiny-Llama causal-LM trials with
trainer.gradient_checkpointing=true and dropout on (the base's and LoRA's: each recomputation must draw its own
trial's masks again), different ranks and targets, trained as one pack on a shared base (lorasweep/pack/), then
each trained alone. Passes when the pack really batched the base's matmuls and every figure of each packed run
(metrics.json and every history.jsonl record, timings and peaks aside) is within 1e-4 relative of its solo run,
as tests/test_pack_isolation.py asks on CPU.

    python scripts/gpu_checks/pack_checkpointing.py [--device cpu|cuda] [--work DIR]
"""

from __future__ import annotations

import math
import sys

from common import parse, verdict

TOLERANCE = 1e-4  # what a packed run promises (benchmarks/packed.py, `lorasweep reproduce`)
COMMON = ["model=tiny_llama", "data=synth_sft", "trainer.gradient_checkpointing=true", "model.dropout=0.1"]
COMMON += ["tracking=none", "trainer.progress=false", "trainer.predict_memory=false", "optim.warmup_steps=0"]
COMMON += ["optim.lr=3e-3", "trainer.eval_at_start=true"]
SIZE = {  # CUDA: 20 steps of batch 16 x 64 tokens; CPU (CI): 4 steps of 8 x 24, small data
    "cuda": ["trainer.max_steps=20", "trainer.eval_every=10", "trainer.batch_size=16", "data.max_length=64"]
    + ["data.max_train_examples=512", "data.max_eval_examples=64"],
    "cpu": ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=8", "data.max_length=24"]
    + ["data.max_train_examples=32", "data.max_eval_examples=16"],
}
VARIANTS = [["lora.rank=2"], ["lora.rank=4", "lora.targets=all", "lora.dropout=0.1"]]


def _skipped(key: str) -> bool:
    return key.startswith("perf/") or "peak" in key or key in ("status", "packed_with")


def _worst(packed: dict, solo: dict, where: str) -> tuple[float, str]:
    """The largest relative difference between two records and its key; inf where they differ otherwise."""
    worst, at = 0.0, ""
    for key in sorted(set(packed) | set(solo)):
        if _skipped(key):
            continue
        a, b = packed.get(key), solo.get(key)
        if isinstance(a, float) and isinstance(b, float):
            d = 0.0 if math.isclose(a, b, rel_tol=0, abs_tol=1e-7) else abs(a - b) / max(abs(b), 1e-12)
        else:
            d = 0.0 if a == b else math.inf
        if d > worst:
            worst, at = d, f"{where} {key}"
    return worst, at


def main(argv=None) -> int:
    device, work = parse(__doc__, argv)
    from lorasweep.config.schema import compose, config_hash
    from lorasweep.pack.scheduler import Pack
    from lorasweep.runs.store import RunDir, RunStore
    from lorasweep.training.lifecycle import train
    from lorasweep.training.resources import Resources

    cfgs = [compose([*COMMON, *SIZE[device], f"run_root={work / 'packed'}", *v]) for v in VARIANTS]
    pack, results = Pack(), {}
    resources = Resources(pack=pack)
    for i, cfg in enumerate(cfgs):
        pack.start(str(i), train, cfg, resources=resources)
    pack.run(lambda slot: results.__setitem__(slot.label, slot.error or slot.result))
    errors = [f"{k}: {v!r}"[:160] for k, v in results.items() if isinstance(v, BaseException)]
    if errors or len(results) != len(cfgs):
        return verdict(False, f"packed trials failed: {'; '.join(errors) or f'{len(results)} of {len(cfgs)} ended'}")
    worst, at, records = 0.0, "", 0
    for cfg in cfgs:
        digest = config_hash(cfg)
        solo = train(cfg, resources=Resources(), run_dir=work / "solo" / digest)
        found = [_worst(results[digest], solo, "metrics")]
        history = RunStore(cfg.run_root).run(digest).history(), RunDir(work / "solo" / digest).history()
        if len(history[0]) != len(history[1]):
            found.append((math.inf, f"history length {len(history[0])} vs {len(history[1])}"))
        found += [_worst(p, s, f"history step {p.get('step')}") for p, s in zip(*history)]
        records += len(history[0])
        for d, key in found:
            if d > worst:
                worst, at = d, key
    ok = pack.batched_calls > 0 and worst <= TOLERANCE
    return verdict(
        ok,
        f"{len(cfgs)} checkpointed trials packed ({pack.batched_calls} batched base calls) vs solo, metrics and "
        f"{records} history records: max rel diff {worst:.2e}{f' ({at})' if at else ''} (tolerance {TOLERANCE:g})",
    )


if __name__ == "__main__":
    sys.exit(main())
