"""A run knows what it was trained on: local data and a local model's files join the hash, reuse checks the
recorded inputs, reproduce names what changed, the digest cache reads a file once."""

import json
import os
import re

import pytest
from conftest import tiny

from lorasweep.cli.main import main
from lorasweep.config.fingerprints import DigestCache, changes, fingerprint, hub_commit

FAST = [
    "model=tiny_llama",
    "trainer=smoke",
    "trainer.max_steps=2",
    "trainer.eval_every=0",
    "trainer.predict_memory=false",
    "data.max_length=16",
    "tracking=none",
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the digest cache: this test's own


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def sentiment(n, offset=0):
    return [{"text": f"review number {i + offset} was {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(n)]


def _train(capsys, *argv):
    code = main(["train", *argv])
    out, err = capsys.readouterr()
    digest = re.search(r"config hash:\s+(\w+)", out)
    return code, out, err, digest.group(1) if digest else None


def test_an_edited_eval_file_trains_a_new_run_and_reproduce_names_it(tmp_path, capsys):
    data_dir, runs = tmp_path / "d", tmp_path / "runs"
    write_jsonl(data_dir / "train.jsonl", sentiment(40))
    write_jsonl(data_dir / "validation.jsonl", sentiment(30, offset=100))
    argv = [*FAST, "data.source=local", f"data.path={data_dir}", f"run_root={runs}"]
    code, out, _, first = _train(capsys, *argv)
    assert code == 0 and "status:          completed" in out
    assert _train(capsys, *argv)[1].count("already has a complete run") == 1  # same files: reused
    recorded = json.loads((runs / first / "inputs.json").read_text())
    assert sorted(recorded["data"]["files"]) == [str(data_dir / "train.jsonl"), str(data_dir / "validation.jsonl")]

    write_jsonl(data_dir / "validation.jsonl", sentiment(10, offset=100))  # 30 -> 10 rows
    code, out, _, second = _train(capsys, *argv)
    assert code == 0 and second != first and "reused" not in out and "status:          completed" in out
    assert json.loads((runs / second / "metrics.json").read_text())["status"] == "completed"

    assert main(["reproduce", first, "--run-root", str(runs)]) == 2
    err = capsys.readouterr().err
    assert f"data changed since the run (file {data_dir / 'validation.jsonl'})" in err and err.count("\n") == 1
    assert not (runs / first / "reproductions").exists()  # refused before rerunning
    assert main(["reproduce", second, "--run-root", str(runs)]) == 0  # today's files: bitwise equal
    assert "all metrics bitwise equal" in capsys.readouterr().out


def save_tiny_llama(directory, seed):
    from transformers import AutoTokenizer

    from lorasweep.model.load import packaged_minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    tiny("llama", seed=seed, vocab_size=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def test_replaced_model_weights_train_a_new_run_and_reproduce_names_them(tmp_path, capsys):
    model_dir, runs = tmp_path / "llama", tmp_path / "runs"
    save_tiny_llama(model_dir, seed=0)
    argv = [
        *FAST,
        "data=synth_sft",
        "data.max_train_examples=16",
        "data.max_eval_examples=8",
        "model.source=pretrained",
        f"model.name_or_path={model_dir}",
        f"run_root={runs}",
    ]
    code, _, _, first = _train(capsys, *argv)
    assert code == 0
    files = json.loads((runs / first / "inputs.json").read_text())["model"]["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)

    save_tiny_llama(model_dir, seed=1)  # other weights, same config
    code, out, _, second = _train(capsys, *argv)
    assert code == 0 and second != first and "reused" not in out

    assert main(["reproduce", first, "--run-root", str(runs)]) == 2
    assert "model weights changed since the run (file model.safetensors)" in capsys.readouterr().err


def test_the_digest_cache_reads_a_file_once_and_again_when_it_changes(tmp_path):
    model_dir = tmp_path / "llama"
    save_tiny_llama(model_dir, seed=0)
    cfg = {"model": {"source": "pretrained", "name_or_path": str(model_dir)}}
    cache_file = tmp_path / "cache.json"
    first = DigestCache(cache_file)
    before = fingerprint(cfg, cache=first)
    assert "model.safetensors" in before["model"]["files"] and len(first.read) == len(before["model"]["files"])
    again = DigestCache(cache_file)  # a new process: only the cache file carries over
    assert fingerprint(cfg, cache=again) == before and again.read == []

    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1  # same size, other content
    weights.write_bytes(bytes(content))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime (cp -p): ctime still moves
    touched = DigestCache(cache_file)
    after = fingerprint(cfg, cache=touched)
    assert touched.read == [str(weights)]
    assert after["model"]["files"]["model.safetensors"] != before["model"]["files"]["model.safetensors"]
    assert changes(before, after) == ["model weights changed since the run (file model.safetensors)"]


def test_the_default_demo_keeps_its_hash(capsys):
    code, out, _, digest = _train(capsys, "--cfg")
    assert code == 0 and digest == "b17c970fc853"


def test_reuse_refuses_a_run_whose_recorded_inputs_differ(tmp_path, capsys):
    """Shipped data is not hashed (versioned with the package): its run records it and reuse compares."""
    runs = tmp_path / "runs"
    argv = [*FAST, "data.max_train_examples=16", "data.max_eval_examples=8", f"run_root={runs}"]
    code, _, _, digest = _train(capsys, *argv)
    assert code == 0
    inputs_file = runs / digest / "inputs.json"
    inputs = json.loads(inputs_file.read_text())
    assert inputs["data"]["source"] == "shipped" and inputs["model"] == {"source": "tiny"}
    assert sorted(inputs["data"]["files"]) == ["synth_sentiment/train.jsonl", "synth_sentiment/validation.jsonl"]
    shipped = "synth_sentiment/validation.jsonl"  # named inside the package, wherever it is installed
    inputs["data"]["files"][shipped] = "0" * 64  # as a run trained on another version of the file records it
    inputs_file.write_text(json.dumps(inputs))
    code, _, err, _ = _train(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert f"run {digest} has a result trained on other inputs: data changed since the run (file {shipped})" in err

    inputs_file.unlink()  # a run filed before inputs were recorded: trusted, as before
    assert "already has a complete run" in _train(capsys, *argv)[1]


def test_a_hub_models_commit_is_read_from_the_cache_offline(tmp_path):
    commit, moved = "a" * 40, "b" * 40
    repo = tmp_path / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert hub_commit("org/model", None, cache_dir=tmp_path / "hub") == commit
    assert hub_commit("org/model", "v2", cache_dir=tmp_path / "hub") is None  # not cached: the load decides
    assert hub_commit("org/model", moved) == moved  # a pinned commit is its own answer
    before = {"model": {"source": "pretrained", "id": "org/model", "revision": None, "commit": commit}}
    after = {"model": {**before["model"], "commit": moved}}
    assert changes(before, after) == [f"model org/model resolves to commit {moved} now, the run had {commit}"]
    assert changes(before, {"model": {**before["model"], "commit": None}}) == []  # unknown now: not a change


def test_resume_refuses_a_checkpoint_trained_on_other_inputs(tmp_path):
    from lorasweep.config.schema import compose
    from lorasweep.errors import UserError
    from lorasweep.runs.store import RunStore
    from lorasweep.training.lifecycle import Callbacks, train

    cfg = compose([*FAST, "trainer.max_steps=4", "trainer.checkpoint_every=2", f"run_root={tmp_path / 'runs'}"])
    steps = iter(range(100))
    interrupted = train(cfg, callbacks=Callbacks(should_stop=lambda: next(steps) == 2))
    run = RunStore(cfg.run_root).run(interrupted["config_hash"])
    assert interrupted["status"] == "interrupted" and (run.checkpoints_dir).is_dir()
    inputs = run.inputs()
    inputs["data"]["files"]["synth_sentiment/train.jsonl"] = "0" * 64
    run.inputs_file.write_text(json.dumps(inputs))
    with pytest.raises(UserError, match="has a checkpoint trained on other inputs: data changed since the run"):
        train(cfg)
    assert train(cfg, force=True)["status"] == "completed"  # --force: from step 0, on today's files
    assert run.inputs()["data"]["files"]["synth_sentiment/train.jsonl"] != "0" * 64
