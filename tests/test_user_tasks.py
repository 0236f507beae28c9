"""The user's own task through the command line, as a user runs it: a chat model saved with its template
(ChatML, Llama-3), MNLI- and STS-B-shaped CSV files on MiniLM, a sweep on Matthews' correlation, and every bad
input refused in one line with nothing written."""

import csv
import json
from pathlib import Path

import pytest
import scipy.stats
from chat_models import conversations, expected_assistant_labels, save_chat_model
from transformers import AutoTokenizer

from lorasweep.cli.main import main

FAST = ["tracking=none", "trainer.eval_every=0", "optim.warmup_steps=0", "trainer.progress=false"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    write_jsonl(root / "data" / "train.jsonl", conversations(64, seed=1))
    write_jsonl(root / "data" / "validation.jsonl", conversations(8, seed=2))
    return root, {kind: save_chat_model(root / kind, kind) for kind in ("chatml", "llama3")}


def chat_overrides(root, model_dir, runs):
    return [
        "model.source=pretrained",
        f"model.name_or_path={model_dir}",
        f"model.name={model_dir.name}",
        "data=synth_sft",
        "data.style=chat",
        "data.source=local",
        f"data.path={root / 'data'}",
        "data.max_length=96",
        f"run_root={runs}",
    ]


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_chat_dataset_trains_with_exact_assistant_masks_and_serves_messages(capsys, chat_setup, tmp_path, kind):
    root, models = chat_setup
    runs, overrides = tmp_path / "runs", chat_overrides(root, models[kind], tmp_path / "runs")
    code, out, _ = run(capsys, "data", *overrides, "--show", "5", "--json")
    assert code == 0
    shown = json.loads(out)
    tokenizer = AutoTokenizer.from_pretrained(str(models[kind]))
    rows = conversations(64, seed=1)[:5]
    for row, example in zip(rows, shown):
        ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
        assert example["input_ids"] == list(ids["input_ids"] if not isinstance(ids, list) else ids)
        assert example["labels"] == expected_assistant_labels(example["input_ids"], tokenizer, kind)
    code, out, _ = run(capsys, "data", *overrides, "--show", "1")  # for a person: the trained part marked
    assert code == 0 and "«" in out and "64 of 64 rows kept" in out

    steps = ["trainer.max_steps=4", "trainer.batch_size=8", "optim.lr=1e-2", "trainer.eval_generate=3", *FAST]
    code, out, err = run(capsys, "train", *overrides, *steps)
    assert code == 0, out + err
    (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["eval/exact_match"] <= 1
    assert metrics["eval/perplexity"] == pytest.approx(2.718281828459045 ** metrics["eval/loss"])
    assert (run_dir / "adapter" / "chat_template.jinja").read_text() == tokenizer.chat_template

    requests = write_jsonl(
        tmp_path / "requests.jsonl",
        [{"messages": [{"role": "user", "content": "say cat twice"}], "adapter": "c"}, {"text": "hi", "adapter": "c"}],
    )
    code, out, _ = run(capsys, "predict", "--adapter", f"c={run_dir.name}", "--input", str(requests),
                       "--run-root", str(runs), "--max-new-tokens", "4")  # fmt: skip
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [a["adapter"] for a in answers] == ["c", "c"]
    assert all(isinstance(a["generation"], str) for a in answers)
    # The adapter alone, away from its run: its base comes from base_model_name_or_path, its template beside it.
    import shutil

    bare = shutil.copytree(run_dir / "adapter", tmp_path / "shipped_adapter")
    code, again, err = run(capsys, "predict", "--adapter", f"c={bare}", "--input", str(requests),
                           "--max-new-tokens", "4")  # fmt: skip
    assert code == 0, err
    assert again == out  # the same base model and template: the same greedy answers


def test_data_show_marks_the_trained_part_and_counts_rows(capsys, tmp_path):
    """docs/data.md's commands, on the shipped SFT set: the response (and EOS) marked, the prompt not."""
    common = ["model=tiny_llama", "data=synth_sft", f"run_root={tmp_path / 'runs'}"]
    code, out, _ = run(capsys, "data", *common, "--show", "3")
    assert code == 0 and out.count("--- train example") == 3
    first = out.splitlines()[1]
    assert first.index("response") < first.index("«") and first.endswith("[SEP]»")
    assert out.splitlines()[-1].startswith("data synth_sft (prompt_response): train: 1600 of 1600 rows kept")
    code, out, err = run(capsys, "data", *common, "--show", "5", "--json")
    shown = json.loads(out)
    assert code == 0 and len(shown) == 5 and "1600 of 1600 rows kept" in err
    for example in shown:
        trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
        assert trained and len(example["labels"]) == len(example["input_ids"])


def mnli_rows(n, seed):
    import random

    rng, names = random.Random(seed), ["entailment", "neutral", "contradiction"]
    rows = []
    for i in range(n):
        label = names[i % 3]
        a = rng.choice(["a man sleeps", "the dog runs", "two kids play"])
        b = {"entailment": a.replace("a man", "a person"), "neutral": a + " today", "contradiction": "nobody " + a}[
            label
        ]
        rows.append({"premise": a, "hypothesis": b, "label": label, "idx": i})
    return rows


def test_mnli_shaped_csv_with_string_labels_trains_and_predicts_names(capsys, tmp_path):
    write_csv(tmp_path / "mnli" / "train.csv", mnli_rows(48, 0))
    write_csv(tmp_path / "mnli" / "validation_matched.csv", mnli_rows(12, 1))
    runs = tmp_path / "runs"
    overrides = ["data=glue_mnli", "data.source=local", f"data.path={tmp_path / 'mnli'}", "data.max_length=32",
                 "trainer.max_steps=3", "trainer.batch_size=8", *FAST, f"run_root={runs}"]  # fmt: skip
    code, out, _ = run(capsys, "data", *overrides, "--show", "1")
    assert code == 0 and "label: entailment" in out and "[SEP]" in out.split("label:")[0].split("[SEP]", 1)[1]
    code, out, err = run(capsys, "train", *overrides)
    assert code == 0, out + err
    (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"eval/accuracy", "eval/f1", "eval/matthews"} <= set(metrics)
    labels = json.loads((run_dir / "adapter" / "labels.json").read_text())
    assert labels["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}  # sorted names
    requests = write_jsonl(
        tmp_path / "r.jsonl", [{"text": "a man sleeps", "text_pair": "nobody sleeps", "adapter": "nli"}]
    )
    code, out, _ = run(capsys, "predict", "--adapter", f"nli={run_dir.name}", "--input", str(requests),
                       "--run-root", str(runs))  # fmt: skip
    answer = json.loads(out)
    assert code == 0 and answer["label"] in labels["label2id"] and len(answer["probabilities"]) == 3


def test_stsb_shaped_csv_regression_records_scipy_pearson_and_spearman(capsys, tmp_path):
    import random

    rng = random.Random(0)
    words = ["cat", "dog", "sun", "car", "tree", "road", "rain", "book"]

    def rows(n):
        out = []
        for _ in range(n):
            a = " ".join(rng.sample(words, 4))
            shared = rng.randint(0, 4)
            b = " ".join(a.split()[:shared] + rng.sample(words, 4 - shared))
            out.append({"sentence1": a, "sentence2": b, "label": round(5 * shared / 4 + rng.random() * 0.3, 3)})
        return out

    write_csv(tmp_path / "stsb" / "train.csv", rows(64))
    write_csv(tmp_path / "stsb" / "validation.csv", rows(24))
    runs = tmp_path / "runs"
    overrides = ["data=glue_stsb", "data.source=local", f"data.path={tmp_path / 'stsb'}", "data.max_length=32",
                 "trainer.max_steps=6", "trainer.batch_size=16", "optim.lr=2e-3", *FAST,
                 f"run_root={runs}"]  # fmt: skip
    code, out, err = run(capsys, "train", *overrides)
    assert code == 0, out + err
    (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The run's own predictions, one by one through predict (scores), against scipy.
    evaluation = list(csv.DictReader((tmp_path / "stsb" / "validation.csv").open()))
    requests = write_jsonl(
        tmp_path / "r.jsonl",
        [{"text": r["sentence1"], "text_pair": r["sentence2"], "adapter": "s"} for r in evaluation],
    )
    code, out, _ = run(capsys, "predict", "--adapter", f"s={run_dir.name}", "--input", str(requests),
                       "--run-root", str(runs), "--batch-size", "1")  # fmt: skip
    assert code == 0
    scores = [json.loads(line)["score"] for line in out.splitlines()]
    gold = [float(r["label"]) for r in evaluation]
    assert metrics["eval/pearson"] == pytest.approx(scipy.stats.pearsonr(scores, gold).statistic, abs=1e-5)
    assert metrics["eval/spearman"] == pytest.approx(scipy.stats.spearmanr(scores, gold).statistic, abs=1e-5)
    assert metrics["eval/mse"] == pytest.approx(metrics["eval/loss"])


def test_a_sweep_maximises_matthews(capsys, tmp_path):
    rows = [{"sentence": f"it is {'good' if i % 2 else 'bad'}", "label": "yes" if i % 2 else "no"} for i in range(40)]
    write_csv(tmp_path / "cola" / "train.csv", rows)
    write_csv(tmp_path / "cola" / "validation.csv", rows[:10])
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "study: cola_mcc\nobjectives: [{metric: eval/matthews, direction: maximize}]\nsampler: {name: grid}\n"
        "pruner: {name: none}\nparams:\n  lora.rank: {type: categorical, choices: [1, 2]}\n"
        f"fixed: [data=glue_cola, data.source=local, 'data.path={tmp_path / 'cola'}', data.max_length=16,"
        " trainer.max_steps=2, trainer.batch_size=8, tracking=none, trainer.eval_every=0, trainer.progress=false]\n"
    )
    code, out, err = run(capsys, "sweep", str(spec), "--run-root", str(tmp_path / "runs"))
    assert code == 0, out + err
    import optuna

    study = optuna.load_study(study_name="cola_mcc", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all(-1 <= t.value <= 1 for t in done)
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "report", "--study", "cola_mcc", "--run-root", str(tmp_path / "runs"),
                         "--out", str(out_dir), "--wandb", "none")  # fmt: skip
    assert code == 0, err
    page = (out_dir / "index.html").read_text()
    assert "eval/accuracy" in page and "no, yes" in page  # the task's headline figure, the label names
