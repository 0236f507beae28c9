"""`lorasweep predict`: many adapters, one base model, one mixed batch at a time.

Input: JSON lines (serve/requests.py): {"text", "text_pair"?, "adapter"} or {"messages", "adapter"}.
Output: one JSON line per input line, in order — classification: {"adapter", "label", "probabilities"} (label:
its name where the adapter's labels have names); regression: {"adapter", "score"}; causal_lm: {"adapter",
"generation"} (greedy; a prompt formatted as in SFT training, a conversation through the chat template).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..data.chat import CHAT_TEMPLATE_NAME
from ..errors import UserError
from ..fileio import atomic_write_text
from ..lora.adapter_io import CONFIG_NAME, PREFIX, WEIGHTS_NAME, read_label_names
from ..lora.multi import BASE, load_adapters
from ..model.load import HEAD_NAMES
from .requests import Request, read_requests

TASK_TYPES = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal_lm"}


def resolve_adapter_path(spec: str | Path, run_root: str | Path = "runs") -> Path:
    """An adapter directory, a run directory (its adapter/), or a config hash under run_root."""
    path = Path(spec).expanduser()
    for candidate in (path, path / "adapter", Path(run_root) / str(spec) / "adapter"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise UserError(
        f"adapter {str(spec)!r} is neither an adapter directory nor a run hash with an adapter under {run_root}"
    )


def parse_adapter_specs(specs: list[str], run_root: str | Path = "runs") -> dict[str, Path]:
    """["NAME=HASH_OR_DIR", ...] -> {NAME: adapter directory}; duplicate or malformed names are errors."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or not name or not target:
            raise UserError(f"--adapter {spec!r}: expected NAME=HASH_OR_DIR")
        if name in out:
            raise UserError(f"duplicate adapter name {name!r}")
        if name == BASE:
            raise UserError(f"adapter name {BASE!r} is reserved for the bare base model")
        out[name] = resolve_adapter_path(target, run_root)
    return out


def _adapter_facts(paths: Mapping[str, Path]) -> tuple[set, int | None]:
    """The task types the adapters declare and the label count of a saved classifier head, if any."""
    from safetensors import safe_open

    tasks, labels = set(), None
    for path in paths.values():
        tasks.add(json.loads((path / CONFIG_NAME).read_text()).get("task_type"))
        with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
            for key in f.keys():
                head, _, rest = key[len(PREFIX) :].partition(".")
                if head in HEAD_NAMES and rest in ("weight", "out_proj.weight"):  # out_proj: RoBERTa's head
                    labels = f.get_slice(key).get_shape()[0]
    return tasks - {None}, labels


def run_config(adapter_dir: Path):
    """The config of the run an adapter was trained in (runs/<hash>/adapter -> runs/<hash>/config.yaml), or None."""
    from omegaconf import OmegaConf

    config = adapter_dir.parent / "config.yaml"
    return OmegaConf.load(config) if adapter_dir.name == "adapter" and config.is_file() else None


def _model_config(base: str):
    """--base: a model config name (conf/model/NAME.yaml, e.g. minilm or tiny_gpt2) or a hub-format dir / hub id."""
    from omegaconf import OmegaConf

    from ..config.schema import ModelConfig, compose

    if "/" in base or Path(base).expanduser().exists():
        path = Path(base).expanduser()
        return OmegaConf.structured(ModelConfig(name=path.name, source="pretrained", name_or_path=str(path)))
    return compose([f"model={base}"]).model


def base_config(paths: Mapping[str, Path], base: str | None, task: str, num_labels: int | None):
    """What to build the base model from: the adapters' runs' model config (and seed: a tiny model's weights are
    drawn from it), unless --base overrides it; without either, the packaged MiniLM."""
    from omegaconf import OmegaConf

    runs = {name: cfg for name, cfg in ((n, run_config(p)) for n, p in paths.items()) if cfg is not None}

    def identity(cfg):  # what fixes the base weights: the model config, and a tiny model's seed
        model = OmegaConf.to_container(cfg.model)
        return {
            **{f"model.{k}": v for k, v in model.items()},
            "seed": cfg.seed if model.get("source") == "tiny" else None,
        }

    identities = {name: identity(cfg) for name, cfg in runs.items()}
    bases = {json.dumps(identities[name], sort_keys=True): cfg for name, cfg in runs.items()}
    if base is None and len(bases) > 1:
        differ = sorted(
            k for k in set().union(*identities.values()) if len({json.dumps(i.get(k)) for i in identities.values()}) > 1
        )
        listed = ", ".join(
            f"{n}: {cfg.model.name} ({', '.join(f'{k}={identities[n].get(k)}' for k in differ)})"
            for n, cfg in runs.items()
        )
        raise UserError(
            f"the adapters come from runs on different base models ({listed}): serve them separately, or pass --base"
        )
    first = next(iter(bases.values()), None)
    if base is None and first is None:
        base = _declared_base(paths)
    model = _model_config(base) if base is not None else first.model if first is not None else _model_config("minilm")
    seeds = {cfg.seed for cfg in runs.values()}
    return OmegaConf.create(
        {
            "model": model,
            "data": {"task": task, "num_labels": num_labels or (first.data.num_labels if first is not None else 2)},
            "seed": seeds.pop() if len(seeds) == 1 else 0,
        }
    )


def _declared_base(paths: Mapping[str, Path]) -> str | None:
    """A bare adapter's base_model_name_or_path (adapter_config.json), where it names a directory here or a hub id."""
    for path in paths.values():
        declared = json.loads((path / CONFIG_NAME).read_text()).get("base_model_name_or_path")
        if declared and (Path(declared).expanduser().is_dir() or not declared.startswith((".", "/", "~"))):
            return declared
    return None


def serving_device(device: str) -> torch.device:
    """Where predict runs: auto is CUDA when this machine has it; cuda without it is bad input."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _load_base(cfg):
    """The base model exactly as training built it (seeded, lorasweep.model.load.build_model), in eval mode."""
    from ..training.resources import Resources

    model, tokenizer = Resources(keep=False).model(cfg)
    return model.eval(), tokenizer


def predict_file(
    adapters: Mapping[str, str | Path],
    input_file: str | Path,
    output_file: str | Path | None = None,
    base: str | None = None,
    task: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    max_length: int = 512,
    run_root: str | Path = "runs",
    device: str = "auto",
) -> list[dict]:
    """Predict every input line with its own adapter, batches mixing adapters freely; returns the predictions
    and writes them as JSON lines to output_file (stdout when None). The base model is the adapters' runs' (or
    `base`: a model config name or a hub-format directory). `device`: auto (CUDA when there is one), cpu, cuda."""
    device = serving_device(device)
    paths = {name: resolve_adapter_path(spec, run_root) for name, spec in adapters.items()}
    requests = read_requests(input_file, set(paths))
    tasks, num_labels = _adapter_facts(paths)
    if task is None:
        if len(tasks) > 1:
            raise UserError(f"the adapters were trained for different tasks: {sorted(tasks)}")
        task = TASK_TYPES.get(next(iter(tasks), "SEQ_CLS"), "classification")
    if task == "classification" and num_labels == 1:
        task = "regression"  # a one-output head: scores
    model, tokenizer = _load_base(base_config(paths, None if base is None else str(base), task, num_labels))
    model = model.to(device)  # before the adapters: their stacks go where each layer's weight is
    loaded = load_adapters(model, paths) if paths else None
    context = Serving(model, tokenizer, loaded, max_length, max_new_tokens, _labels(paths), _chat_templates(paths))
    out = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        out.extend((_generate if task == "causal_lm" else _score)(context, batch, task))
    lines = "".join(json.dumps(p) + "\n" for p in out)
    if output_file is None:
        sys.stdout.write(lines)
    else:
        atomic_write_text(output_file, lines)
    return out


def _selected(loaded, names):
    from contextlib import nullcontext

    return loaded.use(names) if loaded is not None else nullcontext()


@dataclass
class Serving:
    """What every batch of a predict call uses: the model, its adapters and what they were trained with."""

    model: object
    tokenizer: object
    loaded: object  # load_adapters' set, or None
    max_length: int
    max_new_tokens: int
    label_names: dict  # adapter -> names of its labels (labels.json), where they have names
    chat_templates: dict  # adapter -> the chat template its run trained with (chat_template.jinja)


def _labels(paths: Mapping[str, Path]) -> dict:
    return {name: names for name, path in paths.items() if (names := read_label_names(path)) is not None}


def _chat_templates(paths: Mapping[str, Path]) -> dict:
    return {n: (p / CHAT_TEMPLATE_NAME).read_text() for n, p in paths.items() if (p / CHAT_TEMPLATE_NAME).is_file()}


@torch.no_grad()
def _score(s: Serving, batch: list[Request], task: str):
    if any(r.messages is not None for r in batch):
        raise UserError('"messages" requests need a causal LM (chat) adapter; classification takes "text"')
    texts, names = [r.text for r in batch], [r.adapter for r in batch]
    pairs = [r.text_pair or "" for r in batch] if any(r.text_pair is not None for r in batch) else None
    enc = s.tokenizer(texts, pairs, padding=True, truncation=True, max_length=s.max_length, return_tensors="pt")
    enc = enc.to(_model_device(s.model))
    with _selected(s.loaded, names):
        logits = s.model(**enc).logits.float()
    if task == "regression":
        return [{"adapter": n, "score": float(v)} for n, v in zip(names, logits[:, 0])]
    out = []
    for n, p in zip(names, logits.softmax(-1).cpu()):
        label = int(p.argmax())
        label_names = s.label_names.get(n)
        out.append({"adapter": n, "label": label_names[label] if label_names else label, "probabilities": p.tolist()})
    return out


@torch.no_grad()
def generate_mixed(model, loaded, names, input_ids, attention_mask, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """Greedy generation for left-padded prompts, row i with adapter names[i] (`loaded`: load_adapters' set, or
    None for the bare base): (b, prompt + new) token ids."""
    with _selected(loaded, names):
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            **kwargs,
        )


def _prompt_ids(s: Serving, request: Request) -> list[int]:
    """What the model continues: a conversation through its chat template, else the prompt as SFT formats it."""
    from ..data import sft_prompt_ids
    from ..data.chat import prompt_ids, require_template

    if request.messages is None:
        return sft_prompt_ids([request.text], s.tokenizer)[0]
    template = s.chat_templates.get(request.adapter)
    require_template(s.tokenizer, template, "the base model")
    return prompt_ids(list(request.messages), s.tokenizer, template)


@torch.no_grad()
def _generate(s: Serving, batch: list[Request], task: str):
    from ..data import end_token
    from ..data.chat import stop_tokens

    tokenizer, names = s.tokenizer, [r.adapter for r in batch]
    stops = [end_token(tokenizer)]
    for r in batch:  # a conversation ends at its template's end-of-turn token too
        if r.messages is not None:
            stops += [t for t in stop_tokens(tokenizer, s.chat_templates.get(r.adapter)) if t not in stops]
    prompts = [_prompt_ids(s, r)[-s.max_length :] for r in batch]
    width = max(len(p) for p in prompts)  # left padding: every prompt ends where generation starts
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attention_mask[i, width - len(p) :] = 1
    device = _model_device(s.model)
    generated = generate_mixed(
        s.model,
        s.loaded,
        names,
        input_ids.to(device),
        attention_mask.to(device),
        s.max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
    )
    result = []
    for n, row in zip(names, generated[:, width:].tolist()):
        row = row[: min((row.index(t) for t in stops if t in row), default=len(row))]
        result.append({"adapter": n, "generation": tokenizer.decode(row, skip_special_tokens=True)})
    return result
