"""Saved chat models for tests, built offline in about a second: a tiny Llama with its own byte-level BPE tokenizer
and a chat template, written with save_pretrained as a user's model directory would be.

Two templates, the shapes most real models use, neither with {% generation %} markers:
- ChatML (Qwen and many others): <|im_start|>role\\ncontent<|im_end|>\\n
- Llama-3: <|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>
"""

from __future__ import annotations

import random
from pathlib import Path

from lorasweep.data.templates import chat_template_text

# The shipped templates (data.chat_template=chatml | llama3): the shapes most real models use.
CHATML = chat_template_text("chatml")
LLAMA3 = chat_template_text("llama3")
TEMPLATES = {
    "chatml": dict(template=CHATML, specials=["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>"),
    "llama3": dict(
        template=LLAMA3,
        specials=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<pad>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
    ),
}
WORDS = "the a cat dog sat on mat reverse word add two numbers answer is yes no hello world please say again".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Rows {"messages": [...]}: a system turn in some, two or three user/assistant exchanges each."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        turns = [{"role": "system", "content": "You repeat words."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            word = rng.choice(WORDS)
            turns += [
                {"role": "user", "content": f"say {word} twice"},
                {"role": "assistant", "content": f"{word} {word}"},
            ]
        rows.append({"messages": turns})
    return rows


def save_chat_model(directory: Path, kind: str, with_template: bool = True, dtype=None) -> Path:
    """A tiny LlamaForCausalLM and its tokenizer (template `kind`) saved in `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = TEMPLATES[kind]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = sentences(2000) + [f"say {w} twice\n{w} {w}" for w in WORDS] + ["You repeat words."]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=spec["specials"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=spec["eos"], pad_token="<pad>", bos_token=spec.get("bos")
    )
    if with_template:
        tokenizer.chat_template = spec["template"]
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def expected_assistant_labels(ids: list[int], tokenizer, kind: str, last_only: bool = False) -> list[int]:
    """The assistant masks computed from the template's token layout, independently of lorasweep's method:
    after each assistant header, every token through the end-of-turn token is trained."""
    text = {"chatml": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}[kind]
    header = tokenizer(text + "x")["input_ids"][:-1]  # in context: whitespace splits before a word as it does there
    end = tokenizer.convert_tokens_to_ids(TEMPLATES[kind]["eos"])
    spans = []
    for k in range(len(ids) - len(header) + 1):
        if ids[k : k + len(header)] == header:
            start = k + len(header)
            stop = ids.index(end, start) + 1
            spans.append((start, stop))
    if last_only:
        spans = spans[-1:]
    labels = [-100] * len(ids)
    for start, stop in spans:
        labels[start:stop] = ids[start:stop]
    return labels
