"""fp32 adapters on a bf16 base (issue 26): `lorasweep train` of a tiny Llama saved in bf16, with bf16 autocast
(trainer.mixed_precision=bf16). Passes when the run completed, its LoRA weights and their gradients are float32
(memory/trainable_bytes = memory/gradient_bytes = 4 x params/trainable), the base stayed bf16 (about 2 bytes per
frozen parameter) and train/loss and eval/loss are finite.

    python scripts/gpu_checks/bf16_adapters.py [--device cpu|cuda] [--work DIR]
"""

from __future__ import annotations

import sys

from common import finite, parse, saved_bf16_llama, verdict

# CUDA: 40 steps on 256 examples of 64 tokens (seconds); CPU (CI): the smoke trainer's 4 steps on 32 of 32.
SIZE = {
    "cuda": ["trainer.max_steps=40", "trainer.eval_every=20", "data.max_train_examples=256", "data.max_length=64"]
    + ["data.max_eval_examples=64"],
    "cpu": ["trainer=smoke", "data.max_train_examples=32", "data.max_length=32", "trainer.predict_memory=false"]
    + ["data.max_eval_examples=16"],
}


def main(argv=None) -> int:
    device, work = parse(__doc__, argv)
    from lorasweep.cli.main import main as lorasweep
    from lorasweep.config.schema import compose, config_hash
    from lorasweep.runs.store import RunStore

    model_dir, runs = saved_bf16_llama(work / "model"), work / "runs"
    overrides = [
        "model.source=pretrained",
        f"model.name_or_path={model_dir}",
        "model.name=bf16_chat",
        "data=synth_sft",
        "lora=all",
        "lora.rank=8",
        "trainer.mixed_precision=bf16",
        "tracking=none",
        "trainer.progress=false",
        *SIZE[device],
        f"run_root={runs}",
    ]
    code = lorasweep(["train", *overrides])
    if code != 0:
        return verdict(False, f"lorasweep train exited {code}")
    m = RunStore(runs).run(config_hash(compose(overrides))).metrics()
    trainable, frozen = m["params/trainable"], m["params/total"] - m["params/trainable"]
    fp32 = m["memory/trainable_bytes"] == m["memory/gradient_bytes"] == 4 * trainable
    base_bytes = m["memory/base_weights_bytes"] / frozen
    ok = m["status"] == "completed" and fp32 and base_bytes < 2.1 and finite(m["train/loss"]) and finite(m["eval/loss"])
    return verdict(
        ok,
        f"{m['step']} steps: trainable {m['memory/trainable_bytes']} B = "
        f"{m['memory/trainable_bytes'] / trainable:g} x {trainable} params (fp32: 4), gradients "
        f"{m['memory/gradient_bytes']} B; base {base_bytes:.2f} B/param (bf16: 2); "
        f"train/loss {m['train/loss']:.4f}, eval/loss {m['eval/loss']:.4f}",
    )


if __name__ == "__main__":
    sys.exit(main())
