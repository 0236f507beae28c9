"""Every row shape users bring, encoded as the run trains on it: chat masks against an independent computation
(ChatML and Llama-3 templates, no generation markers), prompt templates, plain text, pairs, string labels,
regression; the task scores against scipy."""

import json

import numpy as np
import pytest
import scipy.stats
from chat_models import conversations, expected_assistant_labels, save_chat_model
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from lorasweep import data
from lorasweep.config.schema import DataConfig
from lorasweep.data import chat
from lorasweep.errors import UserError
from lorasweep.step.scoring import average_ranks, classification_scores, regression_scores


@pytest.fixture(scope="session")
def chat_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_models")
    return {kind: save_chat_model(root / kind, kind) for kind in ("chatml", "llama3")}


def cfg(**fields):
    fields.setdefault("name", "test")
    return OmegaConf.structured(DataConfig(**fields))


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def chat_cfg(tmp_path, rows, **fields):
    write_jsonl(tmp_path / "chat" / "train.jsonl", rows)
    write_jsonl(tmp_path / "chat" / "validation.jsonl", rows[:4])
    return cfg(task="causal_lm", style="chat", source="local", path=str(tmp_path / "chat"), max_length=256, **fields)


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
def test_chat_masks_equal_an_independent_computation(chat_dirs, tmp_path, kind, train_on):
    tokenizer = AutoTokenizer.from_pretrained(str(chat_dirs[kind]))
    rows = conversations(12)
    train, _ = data.tokenized_splits(chat_cfg(tmp_path, rows, train_on=train_on), tokenizer, tmp_path / "cache")
    assert len(train) == len(rows)
    for row, example in zip(rows, train):
        template_ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
        template_ids = template_ids["input_ids"] if not isinstance(template_ids, list) else template_ids
        assert example["input_ids"] == list(template_ids)  # exactly what the template gives, nothing added
        if train_on == "all":
            expected = list(template_ids)
        else:
            expected = expected_assistant_labels(example["input_ids"], tokenizer, kind, train_on == "last_assistant")
        assert example["labels"] == expected
    trained = [tokenizer.decode([t]) for t, label in zip(train[0]["input_ids"], train[0]["labels"]) if label != -100]
    if train_on != "all":  # the end-of-turn token is trained (the model learns to stop), the header never
        assert trained[-1] == tokenizer.eos_token and "assistant" not in "".join(trained)


def test_chat_template_from_a_file_for_a_tokenizer_without_one(tmp_path):
    bare = AutoTokenizer.from_pretrained(str(save_chat_model(tmp_path / "bare", "chatml", with_template=False)))
    rows = conversations(4)
    with pytest.raises(UserError, match="has no chat template: set data.chat_template"):
        chat.require_template(bare, None, "bare")
    from chat_models import CHATML

    (tmp_path / "chatml.jinja").write_text(CHATML)
    config = chat_cfg(tmp_path, rows, chat_template=str(tmp_path / "chatml.jinja"))
    train, _ = data.tokenized_splits(config, bare, tmp_path / "cache")
    assert train[0]["labels"] == expected_assistant_labels(train[0]["input_ids"], bare, "chatml")


def test_a_template_that_rewrites_earlier_turns_is_refused(chat_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(chat_dirs["chatml"]))
    # Like Qwen3's: the history is rendered differently once a later turn exists (here: numbered turns from the end)
    rewriting = "{% for m in messages %}{{ (messages|length - loop.index)|string + m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="renders a conversation's first turns differently"):
        data.tokenized_splits(chat_cfg(tmp_path, conversations(2), chat_template=rewriting), tokenizer, tmp_path)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
        ("hello", "must be a non-empty list"),
        ([{"role": "user"}], "must be a list of {role, content} mappings"),
        ([{"role": "user", "content": 3}], "content of a user turn must be a string"),
    ],
)
def test_bad_conversations_name_the_row(messages, message):
    with pytest.raises(UserError, match=message) as info:
        chat.check_messages(messages, 7, "messages")
    assert "row 7" in str(info.value)


def test_prompt_template_renders_alpaca_input(tmp_path, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    rows = [
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    write_jsonl(tmp_path / "a" / "train.jsonl", rows)
    write_jsonl(tmp_path / "a" / "validation.jsonl", rows)
    template = "{{ instruction }}{% if input %}\n\nInput: {{ input }}{% endif %}"
    config = cfg(
        task="causal_lm", source="local", path=str(tmp_path / "a"), prompt_template=template, response_field="output"
    )
    train, _ = data.tokenized_splits(config, tokenizer, tmp_path / "cache")
    expected = data.sft_prompt_ids(["Translate\n\nInput: bonjour", "Say hi"], tokenizer)
    for example, prompt in zip(train, expected):
        assert example["input_ids"][: len(prompt)] == prompt
        assert example["labels"][: len(prompt)] == [-100] * len(prompt)
    bad = cfg(**{**OmegaConf.to_container(config), "prompt_template": "{{ instrucion }}"})
    with pytest.raises(UserError, match="does not render row 0: 'instrucion' is undefined"):
        data.tokenized_splits(bad, tokenizer, tmp_path / "cache")


def test_the_default_prompt_response_path_is_unchanged(minilm_dir, tmp_path):
    """BOS + prompt + separator + response + EOS, as every run before the styles (their hashes stay too)."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    train, _ = data.tokenized_splits(cfg(task="causal_lm", path="synth_sft"), tokenizer, tmp_path)
    raw, _ = data.load_raw_splits(cfg(task="causal_lm", path="synth_sft"))
    prompt = data.sft_prompt_ids([raw[0]["instruction"]], tokenizer)[0]
    response = tokenizer(raw[0]["response"], add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert train[0]["input_ids"] == prompt + response
    assert train[0]["labels"] == [-100] * len(prompt) + response


def test_plain_text_trains_every_token_and_counts_truncation(chat_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(chat_dirs["llama3"]))
    rows = [{"text": "the cat sat on the mat"}, {"text": "hello world " * 40}]
    write_jsonl(tmp_path / "t" / "train.jsonl", rows)
    write_jsonl(tmp_path / "t" / "validation.jsonl", rows)
    config = cfg(task="causal_lm", style="text", source="local", path=str(tmp_path / "t"), max_length=32)
    tokenized = data.tokenized_data(config, tokenizer, tmp_path / "cache")
    first = tokenized.train[0]
    body = tokenizer(rows[0]["text"], add_special_tokens=False)["input_ids"]
    assert first["input_ids"] == [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    assert first["labels"] == first["input_ids"]  # no "### Response:" inserted, nothing masked
    assert len(tokenized.train[1]["input_ids"]) == 32
    assert tokenized.info["counts"]["train"] == {"rows": 2, "truncated": 1, "dropped": 0}


def test_sentence_pairs_use_the_pair_encoding(minilm_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    rows = [{"premise": "a man sleeps", "hypothesis": "a person rests", "label": "entailment"}] * 3
    write_jsonl(tmp_path / "p" / "train.jsonl", rows)
    write_jsonl(tmp_path / "p" / "validation.jsonl", rows)
    config = cfg(
        source="local", path=str(tmp_path / "p"), text_field="premise", text_pair_field="hypothesis", num_labels=1
    )
    example = data.tokenized_splits(config, tokenizer, tmp_path / "cache")[0][0]
    expected = tokenizer("a man sleeps", "a person rests")
    assert example["input_ids"] == expected["input_ids"] and example["token_type_ids"] == expected["token_type_ids"]
    assert 1 in example["token_type_ids"]  # the second sentence is there, as its own segment
    batch = data.make_collator("classification", tokenizer)([example, example])
    assert batch["token_type_ids"].tolist() == [expected["token_type_ids"]] * 2


def test_string_labels_map_in_sorted_or_given_order(minilm_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    names = ["neutral", "entailment", "contradiction"]
    rows = [{"text": f"t{i}", "label": names[i % 3]} for i in range(9)]
    write_jsonl(tmp_path / "s" / "train.jsonl", rows)
    write_jsonl(tmp_path / "s" / "validation.jsonl", rows[:3] + [{"text": "x", "label": "maybe"}])
    base = dict(source="local", path=str(tmp_path / "s"), num_labels=3, eval_split="train")
    tokenized = data.tokenized_data(cfg(**base), tokenizer, tmp_path / "cache")
    assert tokenized.info["label_names"] == sorted(names)
    assert tokenized.train["labels"][:3] == [sorted(names).index(n) for n in names]
    given = data.tokenized_data(cfg(**base, label_names=names), tokenizer, tmp_path / "cache")
    assert given.info["label_names"] == names and given.train["labels"][:3] == [0, 1, 2]
    with pytest.raises(UserError, match=r"label 'maybe' in split 'validation' .*not among the train labels"):
        data.load_raw_splits(cfg(**{**base, "eval_split": "validation"}))
    with pytest.raises(UserError, match="3 label names .* but data.num_labels=2; set data.num_labels=3"):
        data.load_raw_splits(cfg(**{**base, "num_labels": 2}))


def test_regression_takes_floats_and_refuses_strings(minilm_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    rows = [{"text": f"t{i}", "label": i / 2} for i in range(4)]
    write_jsonl(tmp_path / "r" / "train.jsonl", rows)
    write_jsonl(tmp_path / "r" / "validation.jsonl", rows)
    config = cfg(task="regression", source="local", path=str(tmp_path / "r"))
    train, _ = data.tokenized_splits(config, tokenizer, tmp_path / "cache")
    batch = data.make_collator("regression", tokenizer)(train.to_list())
    assert batch["labels"].dtype.is_floating_point and batch["labels"].tolist() == [0.0, 0.5, 1.0, 1.5]
    with pytest.raises(UserError, match="float labels .* for data.task=classification; for scores set"):
        data.load_raw_splits(cfg(source="local", path=str(tmp_path / "r")))
    for split in ("train", "validation"):
        write_jsonl(tmp_path / "r" / f"{split}.jsonl", [{"text": "x", "label": "high"}, {"text": "y", "label": "low"}])
    with pytest.raises(UserError, match="regression needs numeric labels; split 'train' .*'high'"):
        data.load_raw_splits(config)
    write_jsonl(tmp_path / "r" / "train.jsonl", [{"text": "x", "label": 1.5}, {"text": "y", "label": "low"}])
    with pytest.raises(UserError, match=r"regression needs numeric labels; split 'train' .* has 'low'"):
        data.load_raw_splits(config)


def test_every_row_dropped_is_an_error_and_writes_no_cache(minilm_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = cfg(task="causal_lm", path="synth_sft", max_length=4, max_train_examples=20)
    with pytest.raises(UserError, match="every row of the train split was dropped"):
        data.tokenized_splits(config, tokenizer, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------- scores, against scipy and scikit-learn's definitions
def test_regression_scores_equal_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    x[:20] = 0.5  # ties
    scores = regression_scores(x, y)
    assert scores["eval/pearson"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert scores["eval/spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert average_ranks(x).tolist() == scipy.stats.rankdata(x).tolist()


def test_classification_scores_match_their_definitions():
    true = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0, 1, 1])
    confusion = np.zeros((2, 2))
    np.add.at(confusion, (true, pred), 1)
    s = classification_scores(confusion)
    tp, fp, fn, tn = 3, 2, 1, 2
    assert s["eval/accuracy"] == 5 / 8
    assert s["eval/f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert s["eval/matthews"] == pytest.approx(mcc)
    three = classification_scores(np.array([[3, 1, 0], [0, 2, 2], [1, 0, 3]]))
    per_class = [2 * 3 / (4 + 4), 2 * 2 / (3 + 4), 2 * 3 / (5 + 4)]
    assert three["eval/f1"] == pytest.approx(np.mean(per_class))  # macro over three classes


def test_generation_stops_at_the_templates_end_of_turn_token(chat_dirs):
    """A ChatML template on a tokenizer whose EOS is </s>: the run trains <|im_end|>, so generation stops there."""
    tokenizer = AutoTokenizer.from_pretrained(str(chat_dirs["chatml"]))
    im_end, eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "</s>"])
    assert chat.stop_tokens(tokenizer, None) == [im_end]  # its EOS already closes turns
    tokenizer.eos_token = "</s>"
    assert chat.stop_tokens(tokenizer, None) == [eos, im_end]


def test_shipped_chat_set_trains_every_assistant_turn(minilm_dir, tmp_path):
    """data=synth_chat on the tiny models' tokenizer (MiniLM's, no template): the shipped ChatML template."""
    from lorasweep.config.schema import compose

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = compose(["model=tiny_llama", "data=synth_chat"]).data
    tokenized = data.tokenized_data(config, tokenizer, tmp_path)
    assert tokenized.info["counts"]["train"] == {"rows": 800, "truncated": 0, "dropped": 0}
    raw, _ = data.load_raw_splits(config)
    for row, example in zip(raw.select(range(50)), tokenized.train):
        runs, current = [], []
        for t, label in zip(example["input_ids"], example["labels"]):
            if label != -100:
                current.append(t)
            elif current:
                runs.append(current)
                current = []
        runs += [current] if current else []
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        squeeze = lambda text: "".join(text.lower().split())  # noqa: E731 (MiniLM lowercases, decodes with spaces)
        assert [squeeze(tokenizer.decode(r)) for r in runs] == [squeeze(r) + "<|im_end|>" for r in replies]


def test_tables_tell_datasets_apart():
    """runs / compare / the leaderboard show data, style and template where runs differ (runs/rows.py)."""
    from lorasweep.config.schema import compose
    from lorasweep.runs.rows import settings, settings_columns

    sft = settings(compose(["model=tiny_llama", "data=synth_sft"]))
    chat_run = settings(compose(["model=tiny_llama", "data=synth_chat"]))
    template = settings(compose(["model=tiny_llama", "data=synth_sft", "data.prompt_template='Q: {{ instruction }}'"]))
    assert (sft["data"], sft["style"], sft["template"]) == ("synth_sft", "prompt_response", None)
    assert (chat_run["data"], chat_run["style"]) == ("synth_chat", "chat") and chat_run["template"] == "chatml"
    assert template["template"] == "Q: {{ instruction }}"
    assert {"data", "style", "template"} <= set(settings_columns([sft, chat_run]))
    assert not {"data", "style", "template"} & set(settings_columns([sft, sft]))  # alike: no columns for them
    assert "template" in settings_columns([sft, template]) and "data" not in settings_columns([sft, template])
