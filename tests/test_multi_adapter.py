"""Mixed-adapter batches: every example gets exactly what its own adapter, merged into the base, gives alone."""

import json

import pytest
import torch
from conftest import randomize_lora, tiny
from safetensors import safe_open
from safetensors.torch import save_file

from lorasweep.lora import apply_lora, load_adapter, merge_lora, save_adapter
from lorasweep.lora.multi import MultiLoraLayer, load_adapters
from lorasweep.model.load import load_pretrained
from lorasweep.serve.predict import generate_mixed, parse_adapter_specs, predict_file, resolve_adapter_path

TEXTS = ["a fine film", "a long, dull evening at the cinema", "ok", "not bad at all, really", "dreadful"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny forwards: one thread is fastest, and immune to OpenMP stalls when other processes share the CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _minilm(minilm_dir):
    torch.manual_seed(0)
    return load_pretrained(minilm_dir, "classification", num_labels=2).eval()


def _make(model, path, preset, rank, seed, scaling="standard", head=False, std=0.2):
    apply_lora(
        model, preset, rank=rank, alpha=2 * rank + 1, scaling=scaling, modules_to_save=["classifier"] if head else None
    )
    randomize_lora(model, seed=seed, std=std)
    if head:
        with torch.no_grad():
            model.classifier.weight.add_(0.3 * seed)
    return save_adapter(model, path)


def _merged(fresh, path):
    if path is not None:
        load_adapter(fresh, path)
        merge_lora(fresh)
    return fresh


@pytest.fixture(scope="module")
def minilm_adapters(minilm_dir, tmp_path_factory):
    d, root = minilm_dir, tmp_path_factory.mktemp("minilm")
    return {
        "qv4": _make(_minilm(d), root / "qv4", "qv", 4, seed=1, head=True),
        "all8": _make(_minilm(d), root / "all8", "all", 8, seed=2),
        "all2": _make(_minilm(d), root / "all2", "all", 2, seed=3, scaling="rslora", head=True),
    }


@pytest.fixture(scope="module")
def references(minilm_dir, minilm_adapters):
    """Each adapter merged into its own copy of the base ("base": the bare model), and the tokenizer."""
    from transformers import AutoTokenizer

    d = minilm_dir
    models = {name: _merged(_minilm(d), minilm_adapters.get(name)) for name in [*minilm_adapters, "base"]}
    return models, AutoTokenizer.from_pretrained(str(d))


def test_minilm_mixed_batch_equals_each_adapter_merged_alone(minilm_dir, minilm_adapters, minilm_batch, references):
    refs, tokenizer = references
    model = _minilm(minilm_dir)
    loaded = load_adapters(model, minilm_adapters)
    names = ["qv4", "all8", "base", "all2", "qv4"]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad(), loaded.use(names):
        mixed = model(**batch).logits
    for i, (text, name) in enumerate(zip(TEXTS, names)):
        with torch.no_grad():
            alone = refs[name](**tokenizer([text], return_tensors="pt")).logits[0]
            bare = refs["base"](**tokenizer([text], return_tensors="pt")).logits[0]
        assert torch.allclose(mixed[i], alone, atol=1e-5), name
        assert name == "base" or (alone - bare).abs().max() > 1e-2  # the adapter really changes the output
    with torch.no_grad(), loaded.use(["all2"] * 2):  # uniform batch: the single-adapter path
        uniform = model(**minilm_batch).logits
        expected = refs["all2"](**minilm_batch).logits
    assert torch.allclose(uniform, expected, atol=1e-5)
    sizes = loaded.bytes_per_adapter()
    assert sizes["all8"] > sizes["qv4"] > 0 and sizes["all2"] > 0  # ranks are padded to the module's largest
    loaded.unload()
    assert not any(isinstance(m, MultiLoraLayer) for m in model.modules())


def test_peft_written_adapter_mixes_with_ours(minilm_dir, minilm_adapters, minilm_batch, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        _minilm(minilm_dir),
        LoraConfig(
            r=4,
            lora_alpha=12,
            target_modules=["query", "value"],
            task_type="SEQ_CLS",
            rank_pattern={"value": 2},
            alpha_pattern={"value": 3},
        ),
    ).eval()
    randomize_lora(peft_model, std=0.2)
    peft_model.save_pretrained(str(tmp_path))
    model = _minilm(minilm_dir)
    loaded = load_adapters(model, {"ours": minilm_adapters["all8"], "peft": tmp_path})
    with torch.no_grad(), loaded.use(["peft", "ours"]):
        mixed = model(**minilm_batch).logits
    with torch.no_grad():
        assert torch.allclose(mixed[0], peft_model(**minilm_batch).logits[0], atol=1e-5)


@pytest.mark.parametrize("arch, preset", [("gpt2", "qv"), ("llama", "all")])
def test_tiny_causal_lm_mixed_logits_and_generation(arch, preset, tmp_path):
    paths = {f"r{r}": _make(tiny(arch), tmp_path / f"r{r}", preset, r, seed=r, std=0.3) for r in (2, 4)}
    model = tiny(arch)
    loaded = load_adapters(model, paths)
    names = ["r2", "base", "r4", "r2"]
    ids = torch.randint(1, 512, (4, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), loaded.use(names):
        mixed = model(ids).logits
    for i, name in enumerate(names):
        with torch.no_grad():
            alone = _merged(tiny(arch), paths.get(name))(ids[i : i + 1]).logits[0]
        assert torch.allclose(mixed[i], alone, atol=1e-5), name
    long = torch.randint(1, 512, (4, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), loaded.use(["r4"] * 4):  # uniform and ≥ 160 tokens: merged on the fly
        assert torch.allclose(model(long).logits, _merged(tiny(arch), paths["r4"])(long).logits, atol=1e-5)

    # Greedy generation, prompts of different lengths, left-padded.
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 512, (n,), generator=gen) for n in (5, 9, 3, 7)]
    width = max(len(p) for p in prompts)
    input_ids, mask = torch.zeros(4, width, dtype=torch.long), torch.zeros(4, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    with torch.no_grad():
        tokens = generate_mixed(model, loaded, names, input_ids, mask, 6, pad_token_id=0)[:, width:]
        for i, (p, name) in enumerate(zip(prompts, names)):
            alone = _merged(tiny(arch), paths.get(name)).generate(
                input_ids=p[None],
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
            )[0, len(p) :]
            assert tokens[i].tolist() == alone.tolist(), name


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return (
        set(after) == set(before)
        and all(torch.equal(after[k], before[k]) for k in before)
        and not any(isinstance(m, MultiLoraLayer) for m in model.modules())
    )


def test_bad_adapters_are_clear_errors_and_load_nothing(minilm_dir, minilm_adapters, tmp_path):
    other = _make(tiny("gpt2", n_layer=3), tmp_path / "other", "qv", 4, seed=1)
    model = tiny("gpt2")
    before = _state(model)
    with pytest.raises(ValueError, match="different base model"):
        load_adapters(model, {"good": _make(tiny("gpt2"), tmp_path / "good", "qv", 4, seed=1), "other": other})
    assert _unchanged(model, before)

    # Same base signature, one tensor of the wrong shape: the error names the module.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((tmp_path / "good" / "adapter_config.json").read_text())
    with safe_open(str(tmp_path / "good" / "adapter_model.safetensors"), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"
    tensors[key] = tensors[key][:, :32].contiguous()
    save_file(tensors, str(bad / "adapter_model.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.attn\.c_attn"):
        load_adapters(model, {"good": tmp_path / "good", "bad": bad})
    assert _unchanged(model, before)

    with pytest.raises(ValueError, match="duplicate adapter names: a"):
        load_adapters(model, [("a", tmp_path / "good"), ("a", tmp_path / "good")])
    with pytest.raises(ValueError, match="'base'"):
        load_adapters(model, {"base": tmp_path / "good"})
    assert _unchanged(model, before)

    loaded = load_adapters(model, {"good": tmp_path / "good"})
    ids = torch.zeros(2, 4, dtype=torch.long)
    for wrong in ([0, 1], [0, -2], torch.tensor([0, 5])):
        with pytest.raises(ValueError, match="out of range"):
            with loaded.use(wrong):
                model(ids)
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        loaded.use(["good", "nope"]).__enter__()
    with pytest.raises(ValueError, match="3 adapter indices"):
        with loaded.use([0, 0, -1]):
            model(ids)
    with pytest.raises(ValueError, match="already"):
        load_adapters(model, {"again": tmp_path / "good"})


def test_predict_file_mixed_adapters(minilm_adapters, references, tmp_path):
    refs, tokenizer = references
    rows = [{"text": t, "adapter": a} for t, a in zip(TEXTS, ["all2", "base", "qv4", "all8", "all2"])]
    infile = tmp_path / "in.jsonl"
    infile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = predict_file(minilm_adapters, infile, tmp_path / "out.jsonl", batch_size=3)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == preds and [p["adapter"] for p in preds] == [r["adapter"] for r in rows]
    for row, pred in zip(rows, preds):
        with torch.no_grad():
            probs = refs[row["adapter"]](**tokenizer([row["text"]], return_tensors="pt")).logits[0].softmax(-1)
        assert torch.allclose(torch.tensor(pred["probabilities"]), probs, atol=1e-5)
        assert pred["label"] == int(probs.argmax())

    # An unknown adapter name fails before any model is loaded (the base path does not even exist).
    infile.write_text(json.dumps({"text": "x", "adapter": "qv4"}) + "\n" + json.dumps({"text": "y", "adapter": "zz"}))
    with pytest.raises(ValueError, match=r"unknown adapter 'zz' \(line 2\)"):
        predict_file(minilm_adapters, infile, tmp_path / "o2.jsonl", base=tmp_path / "no-such-model")
    assert not (tmp_path / "o2.jsonl").exists()


def test_adapter_specs_resolve_hashes_and_dirs(minilm_adapters, tmp_path):
    run = tmp_path / "runs" / "abc123"
    run.mkdir(parents=True)
    (run / "adapter").symlink_to(minilm_adapters["qv4"])
    specs = parse_adapter_specs(["x=abc123", f"y={minilm_adapters['all8']}", f"z={run}"], run_root=tmp_path / "runs")
    assert specs == {"x": run / "adapter", "y": minilm_adapters["all8"], "z": run / "adapter"}
    with pytest.raises(ValueError, match="duplicate adapter name 'x'"):
        parse_adapter_specs(["x=abc123", "x=abc123"], run_root=tmp_path / "runs")
    with pytest.raises(ValueError, match="NAME=HASH_OR_DIR"):
        parse_adapter_specs(["abc123"])
    with pytest.raises(ValueError, match="neither an adapter directory nor a run hash"):
        resolve_adapter_path("feedbeef", run_root=tmp_path / "runs")


def test_predict_file_causal_lm_generates_per_adapter(minilm_dir, tmp_path):
    from transformers import AutoTokenizer

    from lorasweep.data import SFT_SEPARATOR

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    base_dir = tmp_path / "tiny-llama"
    tiny("llama", vocab_size=len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    fresh = lambda: load_pretrained(base_dir, "causal_lm").eval()  # noqa: E731
    paths = {f"r{r}": _make(fresh(), tmp_path / f"r{r}", "all", r, seed=r, std=0.3) for r in (2, 4)}
    rows = [{"text": t, "adapter": a} for t, a in zip(TEXTS, ["r2", "r4", "base", "r4", "r2"])]
    infile = tmp_path / "in.jsonl"
    infile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = predict_file(paths, infile, tmp_path / "out.jsonl", base=base_dir, max_new_tokens=5)
    for row, pred in zip(rows, preds):
        prompt = tokenizer(row["text"] + SFT_SEPARATOR, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            tokens = (
                _merged(fresh(), paths.get(row["adapter"]))
                .generate(
                    input_ids=prompt["input_ids"],
                    max_new_tokens=5,
                    do_sample=False,
                    eos_token_id=tokenizer.sep_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )[0, prompt["input_ids"].shape[1] :]
                .tolist()
            )
        end = tokenizer.sep_token_id
        expected = tokenizer.decode(tokens[: tokens.index(end)] if end in tokens else tokens, skip_special_tokens=True)
        assert pred == {"adapter": row["adapter"], "generation": expected}
    assert len({p["generation"] for p in preds}) > 2  # the adapters really generate differently


def test_predict_command_line(minilm_adapters, references, tmp_path, capsys):
    """`lorasweep predict`: each line's prediction is its adapter's (merged alone, as a reference); unknown
    adapter names fail before anything runs."""
    import json

    from lorasweep.cli.main import main

    refs, tokenizer = references
    (name, path), *_ = list(minilm_adapters.items())
    requests = tmp_path / "in.jsonl"
    texts = ["a fine film", "a long, dull evening at the cinema"]
    requests.write_text(
        json.dumps({"text": texts[0], "adapter": name}) + "\n" + json.dumps({"text": texts[1], "adapter": name}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--adapter", f"{name}={path}", "--input", str(requests), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["adapter"] for r in rows] == [name, name]
    for text, row in zip(texts, rows):
        with torch.no_grad():
            expected = refs[name](**tokenizer([text], return_tensors="pt")).logits[0].softmax(-1)
        assert torch.allclose(torch.tensor(row["probabilities"]), expected, atol=1e-5), row
        assert row["label"] == int(expected.argmax())
    requests.write_text(json.dumps({"text": "x", "adapter": "nope"}) + "\n")
    assert main(["predict", "--adapter", f"{name}={path}", "--input", str(requests)]) == 2
    assert "nope" in capsys.readouterr().err
    if not torch.cuda.is_available():  # auto served on the CPU above; asking for a GPU that is not here is one line
        argv = ["predict", "--adapter", f"{name}={path}", "--input", str(requests), "--device", "cuda"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--device cuda: no CUDA device here" in err, err
