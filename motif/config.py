"""Stage files: one YAML file per growth stage, read by both Helm and the trainer.

A stage file in `jobs/` is the Helm values file of `charts/motif-stage`; its `motif:` key is the
trainer's configuration and is the only part read here. Everything else in the file belongs to the
chart. Keys under `motif:` are snake_case and map one-to-one onto the dataclasses below.

Loading is strict: an unknown key, a missing required key or a value of the wrong type is a
`ConfigError` whose message names the file and the dotted key path, e.g.
`jobs/tiny/stage1.yaml: motif.growth.layers: expected int, got 'six'`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from motif.errors import MotifError


class ConfigError(MotifError):
    """A stage file that does not describe a valid stage. The message names file and key."""


# ---- the schema ------------------------------------------------------------------------------


@dataclass
class ModelShape:
    """Shape of a model trained from scratch (stage 0 of the tiny recipe). Mirrors HF LlamaConfig."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads, as in transformers
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False


@dataclass
class GrowthConfig:
    """Targets applied by `motif grow` before training. None keeps that dimension as it is."""

    output: str  # where the grown checkpoint is written (the stage trains from here)
    layers: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    # llamapro: copied blocks with zeroed output projections (exact, no mask);
    # msg: randomly initialised blocks blended in by the mask.
    depth_method: Literal["llamapro", "msg"] = "llamapro"
    seed: int = 0  # seed of the random initialisation of new MSG weights
    # MSG only: optimizer steps over which the mask rises linearly 0 -> 1; then masks are removed.
    ramp_steps: int = 0

    def grows_width(self) -> bool:
        return any(v is not None for v in (self.hidden, self.intermediate, self.heads, self.kv_heads))


@dataclass
class DataSource:
    """One named source of the mixture. Exactly one of `path` (local files) and `hub` is set."""

    name: str
    language: str  # label used in per-language token accounting and metrics (e.g. ko, en)
    weight: float  # sampling probability; weights of a stage sum to 1
    path: str | None = None  # local .jsonl / .parquet / .txt file, directory or glob
    hub: str | None = None  # Hugging Face hub dataset name (clusters with hub access)
    hub_config: str | None = None
    split: str = "train"
    text_field: str = "text"


@dataclass
class DataConfig:
    tokenizer: str  # HF tokenizer directory (tokenizer.json)
    seq_len: int
    sources: list[DataSource]
    seed: int = 0
    # Streaming hub datasets on a cluster; local files are memory-mapped Arrow either way.
    streaming: bool = False


@dataclass
class OptimConfig:
    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global grad-norm clip; 0 disables
    # Re-warm the learning rate over this many steps at a growth event (MSG's choice).
    rewarm_steps: int = 0


@dataclass
class TrainConfig:
    max_steps: int
    micro_batch_size: int  # sequences per process per micro-step
    grad_accum_steps: int = 1
    precision: Literal["fp32", "bf16"] = "bf16"  # fp32 on CPU (no native bf16 there)
    activation_checkpointing: bool = False
    # none: train everything; new_blocks: LlamaPro's choice, only the inserted blocks train.
    freeze: Literal["none", "new_blocks"] = "none"
    seed: int = 0
    deterministic: bool = False  # bit-exact resume; slower kernels on GPU
    compile: bool = False  # torch.compile the model
    nan_policy: Literal["skip", "stop"] = "stop"


@dataclass
class ParallelConfig:
    """How the stage is laid out. The chart reads nodes/procs_per_node for the PyTorchJob too."""

    engine: Literal["deepspeed", "ddp", "fsdp", "none"] = "ddp"
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3 (engine: deepspeed)
    nodes: int = 1  # pods: 1 Master + (nodes - 1) Workers
    procs_per_node: int = 1  # GPUs per pod (processes per pod)
    device: Literal["cuda", "cpu"] = "cuda"
    gpu_memory_gib: float = 80.0  # per device; `motif plan` checks the stage fits in it
    collective_timeout_s: int = 600  # a lost rank fails the others after this, instead of a hang

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass
class CheckpointConfig:
    dir: str  # periodic checkpoints (shared storage on a cluster)
    every_steps: int = 100
    keep_last: int = 3


@dataclass
class MetricsConfig:
    port: int = 9400 + 1  # Prometheus exporter port (DCGM exporter owns 9400)
    jsonl: str | None = None  # JSONL log of the same values; None: <checkpoint.dir>/metrics.jsonl
    peak_flops: float | None = None  # per device, for MFU; None: looked up from the device


@dataclass
class HeldoutSource:
    """Text scored as bits per byte during training and by `motif eval`; never a training source."""

    name: str
    language: str  # the `language` label of motif_heldout_bits_per_byte (sources of one language pool)
    path: str  # local .jsonl / .parquet / .txt file, directory or glob
    text_field: str = "text"


@dataclass
class EvalConfig:
    """`motif eval --stage` (lm-evaluation-harness benchmarks) and held-out scoring in training."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task or group names (kmmlu, kobest, mmlu, ...)
    num_fewshot: int | None = None  # None: each task's own default (most are 0-shot; the papers use 5)
    # Local task data, one `<data_dir>/<task>/<split>.jsonl` per split (a volume; see docs/evaluation.md):
    # the tasks then read it instead of the hub, and the run is offline.
    data_dir: str | None = None
    include_path: str | None = None  # extra task YAML directory, as lm-eval's --include_path
    limit: int | None = None  # documents per task (None: all); for smoke runs, not for reported scores
    every_steps: int = 0  # held-out scoring interval in training; 0: only at the end of the stage
    heldout: list[HeldoutSource] = field(default_factory=list)
    pushgateway: str | None = None  # Prometheus Pushgateway (host:port or URL) for motif_eval_score
    out: str | None = None  # result directory; None: <output>/eval


@dataclass
class StageConfig:
    """The `motif:` section of a stage file."""

    name: str  # stage name, used in labels and metrics (e.g. s1-depth)
    output: str  # final checkpoint of the stage (HF layout once masks are 1)
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    input: str | None = None  # checkpoint directory to start from (previous stage's output)
    # From-scratch shape when there is no input; with an input, the shape it must have (checked at
    # start, and used by `motif plan` when the input is not readable from where plan runs).
    model: ModelShape | None = None
    growth: GrowthConfig | None = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig | None = None  # benchmarks and held-out sets of this stage (motif eval)
    source_file: str | None = None  # set by the loader; not a key in the file

    @property
    def start_checkpoint(self) -> str | None:
        """The checkpoint training starts from: the grown one when the stage grows."""
        return self.growth.output if self.growth else self.input


def check_input_shape(stage: StageConfig, found: Any, path: str) -> None:
    """With an input and a `model:` section, the stage file states the shape the input must have.

    `found` is the input checkpoint's shape (a `ModelArgs`); checked from its config.json alone, so
    a wrong input is refused before any weight is read or grown.
    """
    shape = stage.model
    if shape is None or stage.input is None:
        return
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ):
        want, got = getattr(shape, key), getattr(found, key)
        if want != got:
            raise ConfigError(f"{stage.source_file or stage.name}: motif.model.{key}: {want}, but {path} has {got}")


# ---- loading ---------------------------------------------------------------------------------


def load_stage(path: str | Path) -> StageConfig:
    """Read and validate the `motif:` section of a stage file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read stage file: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(doc, dict) or "motif" not in doc:
        raise ConfigError(f"{path}: motif: missing; a stage file keeps the trainer config under a `motif:` key")
    stage = parse_stage(doc["motif"], source=str(path))
    stage.source_file = str(path)
    return stage


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: what is wrong, and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


def parse_stage(section: Any, source: str = "<stage>") -> StageConfig:
    """Validate a `motif:` mapping (already parsed from YAML) into a StageConfig."""
    try:
        stage = _build(StageConfig, section, "motif")
        _check(stage)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return stage


def to_dict(stage: StageConfig) -> dict[str, Any]:
    """The `motif:` mapping of a stage (inverse of parse_stage), for writing stage files."""
    d = dataclasses.asdict(stage)
    d.pop("source_file", None)
    return d


def _build(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_file"}
    unknown = sorted((k for k in value if k not in fields), key=repr)
    if unknown:
        raise ConfigError(f"{_key_path(where, unknown[0])}: unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _coerce(hints[name], value[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: missing required key")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a non-empty string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def _key_path(where: str, key: Any) -> str:
    """`where.key`, quoting keys that are not plain names so the message stays one line."""
    if isinstance(key, str) and key.replace("_", "a").replace("-", "a").isalnum():
        return f"{where}.{key}"
    return f"{where}[{key!r}]"


def _show(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def _positive(where: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: expected {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_eval(s: StageConfig) -> None:
    e = s.eval
    if e is None:
        return
    if not e.tasks and not e.heldout:
        raise ConfigError("motif.eval: names no tasks and no heldout sets (set tasks, heldout or both)")
    if len(set(e.tasks)) != len(e.tasks):
        raise ConfigError(f"motif.eval.tasks: task names must be unique, got {e.tasks}")
    _positive("motif.eval.num_fewshot", e.num_fewshot, allow_zero=True)
    _positive("motif.eval.limit", e.limit)
    _positive("motif.eval.every_steps", e.every_steps, allow_zero=True)
    if e.every_steps and not e.heldout:
        raise ConfigError(f"motif.eval.every_steps: {e.every_steps} needs motif.eval.heldout (nothing to score)")
    names = [h.name for h in e.heldout]
    if len(set(names)) != len(names):
        raise ConfigError(f"motif.eval.heldout: source names must be unique, got {names}")
    trained = {src.path: i for i, src in enumerate(s.data.sources) if src.path is not None}
    for i, h in enumerate(e.heldout):
        if h.path in trained:
            raise ConfigError(
                f"motif.eval.heldout[{i}].path: {h.path} is also motif.data.sources[{trained[h.path]}].path; "
                "held-out text must never be trained on"
            )
    if e.pushgateway is not None:
        url = urllib.parse.urlsplit(e.pushgateway if "://" in e.pushgateway else f"http://{e.pushgateway}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"motif.eval.pushgateway: expected host:port or an http(s) URL, got {e.pushgateway!r}")


def _check(s: StageConfig) -> None:
    """Cross-field rules the types alone cannot express."""
    if s.input is None and s.model is None:
        raise ConfigError("motif.input: missing; set `input` (a checkpoint) or `model` (a from-scratch shape)")
    _positive("motif.train.max_steps", s.train.max_steps)
    _positive("motif.train.micro_batch_size", s.train.micro_batch_size)
    _positive("motif.train.grad_accum_steps", s.train.grad_accum_steps)
    _positive("motif.data.seq_len", s.data.seq_len)
    _positive("motif.optim.lr", s.optim.lr)
    _positive("motif.optim.min_lr", s.optim.min_lr, allow_zero=True)
    _positive("motif.optim.warmup_steps", s.optim.warmup_steps, allow_zero=True)
    _positive("motif.optim.rewarm_steps", s.optim.rewarm_steps, allow_zero=True)
    _positive("motif.optim.weight_decay", s.optim.weight_decay, allow_zero=True)
    _positive("motif.optim.grad_clip", s.optim.grad_clip, allow_zero=True)
    if s.optim.min_lr > s.optim.lr:
        raise ConfigError(f"motif.optim.min_lr: {s.optim.min_lr} is above motif.optim.lr {s.optim.lr}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(s.optim, name) < 1.0:
            raise ConfigError(f"motif.optim.{name}: expected 0 <= value < 1, got {getattr(s.optim, name)}")
    _positive("motif.checkpoint.every_steps", s.checkpoint.every_steps)
    _positive("motif.checkpoint.keep_last", s.checkpoint.keep_last)
    _positive("motif.parallel.nodes", s.parallel.nodes)
    _positive("motif.parallel.procs_per_node", s.parallel.procs_per_node)
    _positive("motif.parallel.collective_timeout_s", s.parallel.collective_timeout_s)
    if not 0 <= s.parallel.zero_stage <= 3:
        raise ConfigError(f"motif.parallel.zero_stage: expected 0, 1, 2 or 3, got {s.parallel.zero_stage}")
    if s.parallel.zero_stage and s.parallel.engine != "deepspeed":
        raise ConfigError(
            f"motif.parallel.zero_stage: {s.parallel.zero_stage} needs motif.parallel.engine: deepspeed "
            f"(got {s.parallel.engine})"
        )
    if s.parallel.engine == "deepspeed":
        # DeepSpeed owns the optimizer step: it cannot skip one, and it wraps the module itself.
        if s.train.nan_policy == "skip":
            raise ConfigError("motif.train.nan_policy: skip needs motif.parallel.engine: ddp (deepspeed supports stop)")
        if s.train.compile:
            raise ConfigError("motif.train.compile: true needs motif.parallel.engine: ddp (not deepspeed)")
    _check_eval(s)
    if not 1 <= s.metrics.port <= 65535:
        raise ConfigError(f"motif.metrics.port: expected 1-65535, got {s.metrics.port}")
    if not s.data.sources:
        raise ConfigError("motif.data.sources: expected at least one source")
    names = [src.name for src in s.data.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"motif.data.sources: source names must be unique, got {names}")
    for i, src in enumerate(s.data.sources):
        where = f"motif.data.sources[{i}]"
        if (src.path is None) == (src.hub is None):
            raise ConfigError(f"{where}: set exactly one of `path` and `hub` (source {src.name!r})")
        if not 0.0 < src.weight <= 1.0:
            raise ConfigError(f"{where}.weight: expected 0 < weight <= 1, got {src.weight}")
    total = sum(src.weight for src in s.data.sources)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"motif.data.sources: weights must sum to 1, got {total:g} ({', '.join(names)})")
    g = s.growth
    if g is not None:
        for key in ("layers", "hidden", "intermediate", "heads", "kv_heads"):
            _positive(f"motif.growth.{key}", getattr(g, key))
        _positive("motif.growth.ramp_steps", g.ramp_steps, allow_zero=True)
        if g.layers is None and not g.grows_width():
            raise ConfigError("motif.growth: names no target (set layers, hidden, intermediate, heads or kv_heads)")
        if g.grows_width() and g.ramp_steps == 0:
            raise ConfigError("motif.growth.ramp_steps: MSG width growth needs ramp_steps > 0 (mask ramp 0 -> 1)")
        if g.layers is not None and g.depth_method == "msg" and g.ramp_steps == 0:
            raise ConfigError("motif.growth.ramp_steps: MSG depth growth needs ramp_steps > 0 (mask ramp 0 -> 1)")
        if g.ramp_steps > s.train.max_steps:
            raise ConfigError(
                f"motif.growth.ramp_steps: {g.ramp_steps} exceeds motif.train.max_steps {s.train.max_steps}; "
                "the masks must reach 1 within the stage"
            )
    if s.train.freeze == "new_blocks" and (g is None or g.layers is None or g.depth_method != "llamapro"):
        raise ConfigError("motif.train.freeze: new_blocks needs LlamaPro depth growth (motif.growth.layers)")
