"""Each task's figures as a run records them: exact match against the model's own greedy output, and every
figure on two processes equal to one process (the eval split's size odd, so the shares differ in length)."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny
from transformers import AutoTokenizer

from lorasweep.config.schema import compose
from lorasweep.step.tasks import exact_matches
from lorasweep.training.lifecycle import train


def test_exact_match_counts_generations_equal_to_the_reference(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = tiny("llama", vocab_size=len(tokenizer), eos_token_id=tokenizer.sep_token_id)
    prompts = [tokenizer("add two numbers", add_special_tokens=False)["input_ids"], [101, 2000, 2001]]
    generated = []
    for prompt in prompts:  # what greedy decoding gives, independently of exact_matches
        ids = torch.tensor([prompt])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=28 - len(prompt),
            do_sample=False,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        out = out[: out.index(tokenizer.sep_token_id)] if tokenizer.sep_token_id in out else out
        generated.append(tokenizer.decode(out, skip_special_tokens=True))
    examples = [
        {"prompt_ids": prompts[0], "reference": f"  {generated[0]} \n"},  # whitespace around it does not count
        {"prompt_ids": prompts[1], "reference": generated[1] + " not this"},
    ]
    assert exact_matches(model, examples, tokenizer, max_length=28) == (1, 2)


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def two_processes(overrides, run_root, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "lorasweep.cli", "train", *overrides, f"run_root={run_root}"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [p for p in run_root.iterdir() if not p.name.startswith(".")]
    assert json.loads((run / "env.json").read_text())["num_processes"] == 2
    return json.loads((run / "metrics.json").read_text())


COMMON = ["trainer=smoke", "trainer.max_steps=3", "trainer.batch_size=8", "tracking=none", "lora.dropout=0.0",
          "model.dropout=0.0", "data.max_length=24"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, figures",
    [
        ("classification", ("eval/accuracy", "eval/f1", "eval/matthews")),
        ("regression", ("eval/mse", "eval/pearson", "eval/spearman")),
        ("causal_lm", ("eval/token_accuracy", "eval/exact_match")),
    ],
)
def test_two_processes_report_what_one_process_does(tmp_path, task, figures):
    names = ["good", "bad", "fine"]
    rows = [{"text": f"a {'very ' * (i % 4)}{names[i % 3]} film {i}", "label": names[i % 3]} for i in range(48)]
    if task == "regression":
        rows = [{**r, "label": (i % 7) / 2} for i, r in enumerate(rows)]
    write_csv(tmp_path / "data" / "train.csv", rows[:32])
    write_csv(tmp_path / "data" / "validation.csv", rows[32:47])  # 15 rows: shares of 8 and 7
    if task == "causal_lm":
        overrides = [*COMMON, "model=tiny_llama", "data=synth_sft", "data.max_eval_examples=15",
                     "trainer.eval_generate=5"]  # fmt: skip
    else:
        overrides = [*COMMON, f"data.task={task}", "data.source=local", f"data.path={tmp_path / 'data'}",
                     *(["data.num_labels=3"] if task == "classification" else [])]  # fmt: skip
    one = train(compose([*overrides, f"run_root={tmp_path / 'one'}"]))
    two = two_processes(overrides, tmp_path / "two", 29541 + ["classification", "regression", "causal_lm"].index(task))
    for name in figures:
        assert two[name] == pytest.approx(one[name], abs=1e-6), name
