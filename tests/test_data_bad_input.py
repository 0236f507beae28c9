"""Bad data through the command line: one line, exit 2, and nothing written (no run directory, no lock, no
tokenised cache entry). `train --cfg` answers exactly as `train`, and `sweep` answers before any trial is queued."""

import csv
import json
import shutil

import pytest
from chat_models import conversations, save_chat_model

from lorasweep.cli.main import main

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    chatml = save_chat_model(root / "chatml", "chatml")
    bare = save_chat_model(root / "bare", "chatml", with_template=False)
    untokenized = root / "untokenized"
    shutil.copytree(chatml, untokenized)
    for f in untokenized.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    return {"chatml": chatml, "bare": bare, "untokenized": untokenized}


def jsonl(directory, train, validation=None):
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation if validation is not None else train)):
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def csv_dir(directory, train, validation):
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation)):
        with (directory / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return directory


def chat(models, directory, model="chatml"):
    return ["model.source=pretrained", f"model.name_or_path={models[model]}", "model.name=m", "data=synth_sft",
            "data.style=chat", "data.source=local", f"data.path={directory}", "data.max_length=64"]  # fmt: skip


def sequence(directory, task="classification"):
    return [f"data.task={task}", "data.source=local", f"data.path={directory}", "data.max_length=16"]


def case(name, tmp, models):
    """(overrides, the message's start) for each bad input."""
    good = conversations(4)
    if name == "unknown role":
        rows = [{"messages": [{"role": "robot", "content": "beep"}, *CHAT]}]
        return chat(models, jsonl(tmp / "d", rows)), "row 0: data.messages_field 'messages': unknown role 'robot'"
    if name == "messages not a list":
        return chat(models, jsonl(tmp / "d", [{"messages": "hi there"}])), "must be a non-empty list of {role, content}"
    if name == "missing column":
        return [*chat(models, jsonl(tmp / "d", good)), "data.messages_field=conversation"], (
            "column 'conversation' (data.messages_field) not found in split 'train'; available columns: messages"
        )
    if name == "empty file":
        (tmp / "d").mkdir()
        (tmp / "d" / "train.jsonl").write_text("")
        (tmp / "d" / "validation.jsonl").write_text(json.dumps(good[0]) + "\n")
        return chat(models, tmp / "d"), f"data file {tmp / 'd' / 'train.jsonl'} is empty"
    if name == "every row dropped":
        return [*chat(models, jsonl(tmp / "d", good)), "data.max_length=3"], "every row of the train split was dropped"
    if name == "eval label not in train":
        d = csv_dir(tmp / "d", [{"text": "a", "label": "yes"}, {"text": "b", "label": "no"}],
                    [{"text": "c", "label": "maybe"}])  # fmt: skip
        return sequence(d), "label 'maybe' in split 'validation' (data.label_field='label') is not among the train"
    if name == "float labels for classification":
        d = jsonl(tmp / "d", [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5}])
        return sequence(d), "float labels in split 'train'"
    if name == "strings for regression":
        d = jsonl(tmp / "d", [{"text": "a", "label": "high"}, {"text": "b", "label": "low"}])
        return sequence(d, "regression"), "data.task=regression needs numeric labels"
    if name == "chat template does not render":
        return [*chat(models, jsonl(tmp / "d", good)), "data.chat_template='{% for m in messages %}{{ m.role }'"], (
            "data.chat_template"
        )
    if name == "prompt template does not render":
        d = jsonl(tmp / "d", [{"instruction": "x", "response": "y"}])
        return [
            "model=tiny_llama",
            "data=synth_sft",
            "data.source=local",
            f"data.path={d}",
            "data.prompt_template='{{ instruction }} {{ context }}'",
        ], (  # fmt: skip
            "data.prompt_template does not render row 0: 'context' is undefined"
        )
    if name == "model directory without tokenizer files":
        return chat(models, jsonl(tmp / "d", good), "untokenized"), f"model directory {models['untokenized']} has no"
    if name == "chat style without a template":
        return chat(models, jsonl(tmp / "d", good), "bare"), "the tokenizer of m has no chat template"
    raise AssertionError(name)


CASES = [
    "unknown role",
    "messages not a list",
    "missing column",
    "empty file",
    "every row dropped",
    "eval label not in train",
    "float labels for classification",
    "strings for regression",
    "chat template does not render",
    "prompt template does not render",
    "model directory without tokenizer files",
    "chat style without a template",
]


def nothing_written(runs):
    return not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.parametrize("name", CASES)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, models, name):
    overrides, message = case(name, tmp_path, models)
    runs = tmp_path / "runs"
    answers = []
    for argv in (["train", *overrides, f"run_root={runs}", "tracking=none"], ["train", "--cfg", *overrides,
                                                                              f"run_root={runs}"]):  # fmt: skip
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and err.startswith("lorasweep: error: "), err
        assert message in err, err
        answers.append(err)
    assert answers[0] == answers[1]  # --cfg refuses what train refuses, in the same words
    assert nothing_written(runs), sorted(runs.rglob("*"))


def test_a_sweep_refuses_bad_data_before_queueing(capsys, tmp_path, models):
    overrides, message = case("unknown role", tmp_path, models)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "study: bad\nobjectives: [{metric: eval/loss, direction: minimize}]\nsampler: {name: grid}\n"
        "params:\n  lora.rank: {type: categorical, choices: [1, 2]}\n"
        f"fixed: {json.dumps([*overrides, 'trainer.max_steps=1', 'tracking=none'])}\n"
    )
    runs = tmp_path / "runs"
    code = main(["sweep", str(spec), "--run-root", str(runs)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert nothing_written(runs), sorted(runs.rglob("*"))
