"""Data: shipped datasets, the generator, tokenisation, the cache, hub-layout and local sources, bad input."""

import importlib.util
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from lorasweep import data
from lorasweep.config.schema import DataConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DATA = ROOT / "conf" / "data"
SIZES = {"synth_sentiment": {"train": 4000, "validation": 800}, "synth_sft": {"train": 1600, "validation": 200}}


def cfg(**fields):
    fields.setdefault("name", "test")
    fields.setdefault("path", "synth_sentiment")
    return OmegaConf.structured(DataConfig(**fields))


def from_yaml(name, **overrides):
    """A conf/data/<name>.yaml group file merged into the schema (so its keys are checked), then overrides."""
    return OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(CONF_DATA / f"{name}.yaml"), overrides)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ---------------------------------------------------------------- shipped data and its generator
def test_synth_sentiment_sizes_balance_and_no_overlap():
    train, evaluation = data.load_raw_splits(from_yaml("synth_sentiment"))
    assert (len(train), len(evaluation)) == tuple(SIZES["synth_sentiment"].values())
    for split in (train, evaluation):
        assert sum(split["label"]) * 2 == len(split)  # exactly balanced
        assert len(set(split["text"])) == len(split)
        assert max(len(t.split()) for t in split["text"]) <= 25  # short: fast steps
    assert not set(train["text"]) & set(evaluation["text"])


def test_synth_sft_sizes_no_overlap_and_answers_right():
    train, evaluation = data.load_raw_splits(from_yaml("synth_sft"))
    assert (len(train), len(evaluation)) == tuple(SIZES["synth_sft"].values())
    assert not set(train["instruction"]) & set(evaluation["instruction"])
    checks = {"Reverse the word: ": lambda w: w[::-1], "Uppercase: ": str.upper, "Repeat twice: ": lambda w: f"{w} {w}"}
    seen = 0
    for row in train:
        for prefix, answer in checks.items():
            if row["instruction"].startswith(prefix):
                assert row["response"] == answer(row["instruction"][len(prefix) :])
                seen += 1
    assert seen > 100


def test_generator_reproduces_the_shipped_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_datasets", ROOT / "scripts" / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.generate(tmp_path)
    assert len(written) == 6
    for path in written:
        shipped = data.DATASETS_DIR / path.relative_to(tmp_path)
        assert path.read_bytes() == shipped.read_bytes(), f"{shipped} differs: rerun scripts/make_datasets.py"


def test_data_group_files_fit_the_schema():
    names = sorted(p.stem for p in CONF_DATA.glob("*.yaml"))
    glue = [f"glue_{t}" for t in ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb")]
    assert names == ["alpaca", *glue, "synth_chat", "synth_sentiment", "synth_sft"]
    for name in names:
        assert from_yaml(name).name == name
    # run_glue.py's keys, and its tasks: regression for STS-B, three labels for MNLI (matched validation)
    assert (from_yaml("glue_mnli").text_pair_field, from_yaml("glue_mnli").num_labels) == ("hypothesis", 3)
    assert from_yaml("glue_mnli").eval_split == "validation_matched" and from_yaml("glue_stsb").task == "regression"
    assert (from_yaml("glue_qqp").text_field, from_yaml("glue_qqp").text_pair_field) == ("question1", "question2")
    assert from_yaml("alpaca").prompt_template.startswith("{{ instruction }}{% if input %}")


def test_max_examples_take_the_first_rows():
    full_train, full_eval = data.load_raw_splits(cfg())
    train, evaluation = data.load_raw_splits(cfg(max_train_examples=10, max_eval_examples=3))
    assert train["text"] == full_train["text"][:10] and evaluation["text"] == full_eval["text"][:3]


# ---------------------------------------------------------------- tokenisation
def test_classification_tokens_labels_and_truncation(tokenizer, tmp_path):
    raw_train, _ = data.load_raw_splits(cfg(max_train_examples=50))
    train, evaluation = data.tokenized_splits(cfg(max_train_examples=50), tokenizer, tmp_path)
    assert train.column_names == ["input_ids", "attention_mask", "labels"] and len(evaluation) == 800
    assert train["labels"] == raw_train["label"]
    assert train[0]["input_ids"] == tokenizer(raw_train[0]["text"])["input_ids"]
    short, _ = data.tokenized_splits(cfg(max_train_examples=50, max_length=8), tokenizer, tmp_path)
    assert max(len(ids) for ids in short["input_ids"]) == 8
    assert all(ids[-1] == tokenizer.sep_token_id for ids in short["input_ids"])  # truncation keeps [SEP]


def test_sft_labels_mask_exactly_the_prompt(tokenizer, tmp_path):
    config = from_yaml("synth_sft", max_train_examples=40)
    raw, _ = data.load_raw_splits(config)
    train, _ = data.tokenized_splits(config, tokenizer, tmp_path)
    end = tokenizer.sep_token_id  # the MiniLM tokenizer has no eos
    for row, example in zip(raw, train):
        prompt = tokenizer(row["instruction"] + data.SFT_SEPARATOR, add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [end]
        assert example["input_ids"] == prompt + response
        assert example["labels"] == [data.IGNORE] * len(prompt) + response
    batch = data.make_collator("causal_lm", tokenizer)([train[i] for i in range(8)])
    lengths = [len(train[i]["input_ids"]) for i in range(8)]
    for i, n in enumerate(lengths):
        assert (batch["labels"][i, n:] == data.IGNORE).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert batch["labels"][i, :n].tolist() == train[i]["labels"]


def test_sft_drops_rows_whose_response_is_cut_off(tokenizer, tmp_path):
    train, _ = data.tokenized_splits(from_yaml("synth_sft", max_length=12), tokenizer, tmp_path)
    assert 0 < len(train) < 1600
    assert all(len(ids) <= 12 for ids in train["input_ids"])
    assert all(any(label != data.IGNORE for label in labels) for labels in train["labels"])


def test_collator_pads_classification_and_falls_back_to_eos_or_sep(tokenizer, tmp_path):
    train, _ = data.tokenized_splits(cfg(max_train_examples=16), tokenizer, tmp_path)
    batch = data.make_collator("classification", tokenizer)([train[i] for i in range(4)])
    width = max(len(train[i]["input_ids"]) for i in range(4))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, width)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == train["labels"][:4]
    assert batch["attention_mask"].sum().item() == sum(len(train[i]["input_ids"]) for i in range(4))

    class NoPad:  # a GPT-2-like tokenizer: no pad token
        pad_token_id, eos_token_id, sep_token_id = None, 7, None

    batch = data.make_collator("classification", NoPad())(
        [
            {"input_ids": [1], "attention_mask": [1], "labels": 0},
            {"input_ids": [1, 2], "attention_mask": [1, 1], "labels": 1},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 7], [1, 2]]


def test_tokenisation_is_deterministic(tokenizer, tmp_path):
    config = cfg(max_train_examples=200)
    first, _ = data.tokenized_splits(config, tokenizer, tmp_path / "a")
    second, _ = data.tokenized_splits(config, tokenizer, tmp_path / "b")
    assert first["input_ids"] == second["input_ids"] and first["labels"] == second["labels"]


# ---------------------------------------------------------------- cache
def test_cache_hit_skips_tokenising_and_is_written_atomically(tokenizer, tmp_path, monkeypatch):
    config = cfg(max_train_examples=100)
    train, evaluation = data.tokenized_splits(config, tokenizer, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [data.fingerprint(config, tokenizer)]  # no stray temp dirs

    def refuse(*args):
        raise AssertionError("tokenised again")

    from lorasweep.data import cache

    monkeypatch.setattr(cache, "encode_splits", refuse)
    again, eval_again = data.tokenized_splits(config, tokenizer, tmp_path)
    assert again.to_dict() == train.to_dict() and eval_again.to_dict() == evaluation.to_dict()
    with pytest.raises(AssertionError, match="tokenised again"):  # a field that matters is a new key
        data.tokenized_splits(cfg(max_train_examples=100, max_length=16), tokenizer, tmp_path)


def test_failed_save_leaves_nothing_behind(tokenizer, tmp_path, monkeypatch):
    def broken(self, path, **kwargs):
        Path(path, "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", broken)
    with pytest.raises(OSError, match="disk full"):
        data.tokenized_splits(cfg(max_train_examples=10), tokenizer, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_follows_file_content_and_tokenizer(tokenizer, tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"text": "good", "label": 1}])
    write_jsonl(tmp_path / "d" / "validation.jsonl", [{"text": "bad", "label": 0}])
    config = cfg(source="local", path=str(tmp_path / "d"))
    before = data.fingerprint(config, tokenizer)
    tokenizer("some text", truncation=True, max_length=4)  # call state must not change the key
    assert data.fingerprint(config, tokenizer) == before
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"text": "great", "label": 1}])
    assert data.fingerprint(config, tokenizer) != before


# ---------------------------------------------------------------- hub layout and local files
def write_sst2_parquet(directory, sizes=(("train", 6), ("validation", 4))):
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        table = pa.table(
            {
                "sentence": [f"{split} sentence {i}" for i in range(n)],
                "label": pa.array([i % 2 for i in range(n)], pa.int64()),
                "idx": list(range(n)),
            }
        )
        pq.write_table(table, directory / f"{split}-00000-of-00001.parquet")


def test_hub_source_on_a_local_snapshot_of_glue(tokenizer, tmp_path):
    # nyu-mll/glue's layout: one folder per config, declared in the README's YAML header.
    write_sst2_parquet(tmp_path / "glue" / "sst2")
    (tmp_path / "glue" / "README.md").write_text(
        "---\nconfigs:\n- config_name: sst2\n  data_files:\n  - split: train\n    path: sst2/train-*\n"
        "  - split: validation\n    path: sst2/validation-*\n---\n"
    )
    config = from_yaml("glue_sst2", path=str(tmp_path / "glue"))
    train, evaluation = data.load_raw_splits(config)
    assert (len(train), len(evaluation)) == (6, 4) and train.column_names == ["sentence", "label", "idx"]
    tokenized, _ = data.tokenized_splits(config, tokenizer, tmp_path / "cache")
    assert tokenized["labels"] == [0, 1, 0, 1, 0, 1]


def test_hub_source_on_a_plain_parquet_directory(tmp_path):
    write_sst2_parquet(tmp_path / "sst2")
    train, evaluation = data.load_raw_splits(from_yaml("glue_sst2", path=str(tmp_path / "sst2"), hub_config=None))
    assert (len(train), len(evaluation)) == (6, 4)


def alpaca_rows(n):
    return [{"instruction": f"Say {i}", "input": "" if i % 2 else "context", "output": str(i)} for i in range(n)]


def test_local_alpaca_style_json_directory(tokenizer, tmp_path):
    write_jsonl(tmp_path / "alpaca" / "train.jsonl", alpaca_rows(30))
    write_jsonl(tmp_path / "alpaca" / "validation.jsonl", alpaca_rows(5))
    config = from_yaml(
        "alpaca", source="local", path=str(tmp_path / "alpaca"), train_split="train", eval_split="validation"
    )
    train, evaluation = data.tokenized_splits(config, tokenizer, tmp_path / "cache")
    assert (len(train), len(evaluation)) == (30, 5)
    assert train[0]["labels"][-2:] == [tokenizer.convert_tokens_to_ids("0"), tokenizer.sep_token_id]


def test_local_single_file_is_train_and_can_be_sliced(tmp_path):
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca_rows(1010)))  # a JSON array, like alpaca_data.json
    config = from_yaml("alpaca", source="local", path=str(tmp_path / "alpaca.json"))  # train[:-1000] / train[-1000:]
    train, evaluation = data.load_raw_splits(config)
    assert (len(train), len(evaluation)) == (10, 1000) and evaluation[0]["output"] == "10"


def test_local_split_pattern(tmp_path):
    write_sst2_parquet(tmp_path / "p")
    config = cfg(source="local", path=str(tmp_path / "p" / "{split}-*.parquet"), text_field="sentence")
    assert [len(s) for s in data.load_raw_splits(config)] == [6, 4]
    with pytest.raises(ValueError, match="split 'test' not found: .*available splits: train, validation"):
        data.load_raw_splits(cfg(source="local", path=str(tmp_path / "p" / "{split}-*.parquet"), eval_split="test"))


# ---------------------------------------------------------------- bad input
def bad_label_dir(tmp_path):
    write_jsonl(tmp_path / "bad" / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 5}])
    write_jsonl(tmp_path / "bad" / "validation.jsonl", [{"text": "c", "label": 1}])
    return str(tmp_path / "bad")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(path="no_such_dataset"), "data path not found: .*no_such_dataset"),
        (dict(source="local", path="/nonexistent/dir"), "data path not found: /nonexistent/dir"),
        (dict(source="hub", path="./nonexistent"), "data path not found: ./nonexistent"),
        (dict(eval_split="test"), "split 'test' not found .*available splits: train, validation"),
        (dict(eval_split="train[:10]+test"), "split 'test' not found .*available splits: train, validation"),
        (dict(text_field="sentence"), r"column 'sentence' \(data.text_field\) .*available columns: text, label"),
        (
            dict(task="causal_lm", path="synth_sft", response_field="output"),
            r"column 'output' \(data.response_field\) .*available columns: instruction, response",
        ),
        (dict(num_labels=1), r"labels outside \[0, 1\) in split 'train'"),
        (dict(source="local", path="BAD"), r"labels outside \[0, 2\) in split 'train' .*: 5"),
        (dict(source="hub", path="no-such-org/no-such-dataset"), "cannot load dataset 'no-such-org/no-such-dataset'"),
    ],
)
def test_bad_input_is_one_clear_value_error(fields, message, tmp_path):
    if fields.get("path") == "BAD":
        fields["path"] = bad_label_dir(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        data.load_raw_splits(cfg(**fields))
    assert "\n" not in str(info.value)
