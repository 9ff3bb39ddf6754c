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
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from motif.errors import MotifError

# The `model:` section's type: a plain dataclass of shapes (no torch), the only other module of motif the
# config imports. Growth, training and evaluation import the config, never the reverse.
from motif.model.args import SHAPE_FIELDS, ModelArgs


class ConfigError(MotifError):
    """A stage file that does not describe a valid stage. The message names file and key."""


# ---- the schema ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowthTargets:
    """The grown shape. None keeps that dimension as it is.

    The schema of a stage file's growth targets lives here, with the rest of the stage file; the checks
    that need a source shape (`check_targets`) and the operators are `motif.growth`'s. A stage file's
    `motif.growth` (`GrowthConfig`) is a `GrowthTargets` with the settings of how to reach them;
    `targets()` gives the bare shape of either.
    """

    layers: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    heads: int | None = None
    kv_heads: int | None = None

    def targets(self) -> GrowthTargets:
        return GrowthTargets(self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads)

    def to_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self.targets())

    def grows_width(self) -> bool:
        return any(v is not None for v in (self.hidden, self.intermediate, self.heads, self.kv_heads))

    def resolve(self, args: ModelArgs) -> GrowthShape:
        """Targets with every None replaced by the source's value."""
        return GrowthShape(
            layers=self.layers or args.num_hidden_layers,
            hidden=self.hidden or args.hidden_size,
            intermediate=self.intermediate or args.intermediate_size,
            heads=self.heads or args.num_attention_heads,
            kv_heads=self.kv_heads or args.num_key_value_heads,
        )


@dataclass(frozen=True)
class GrowthShape:
    """Growth targets resolved against a source: every dimension known."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GrowthConfig(GrowthTargets):
    """The growth step of a stage: its targets (None keeps a dimension) and how `motif grow` reaches them."""

    output: str = field(default="", metadata={"required": True})  # the grown checkpoint; the stage trains from it
    # llamapro: copied blocks with zeroed output projections (exact, no mask);
    # msg: randomly initialised blocks blended in by the mask.
    depth_method: Literal["llamapro", "msg"] = "llamapro"
    seed: int = 0  # seed of the random initialisation of new MSG weights
    # MSG only: optimizer steps over which the mask rises linearly 0 -> 1; then masks are removed.
    ramp_steps: int = 0


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
    # Logical data shards: each is its own seeded stream, and each rank reads whole shards, so a
    # job resumed on another world size redistributes them without losing or repeating a sample.
    # None: the world size of the stage's first run (recorded in its checkpoints). A job may run
    # on any world size up to `shards`; an elastic job sets it to its largest world size.
    shards: int | None = None


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
    # nan_policy skip: at most this many skipped optimizer steps in a run; one more stops it (exit 4).
    max_skipped_steps: int = 3


@dataclass
class NetworkConfig:
    """Bandwidth per GPU, one direction, as NCCL's bus bandwidth sees it; read by `motif simulate` only.

    Defaults: 8x H100 SXM nodes. Intra-node: NVLink 4 is 450 GB/s per direction per GPU, of which
    NCCL's all-gather/reduce-scatter reach ~80% (360). Inter-node: one 400 Gb/s NIC per GPU is
    50 GB/s line rate, ~90% of it as bus bandwidth (45).
    """

    intra_node_gb_s: float = 360.0
    inter_node_gb_s: float = 45.0


@dataclass
class ParallelConfig:
    """How the stage is laid out. The chart reads nodes/procs_per_node for the PyTorchJob too."""

    # ddp: replicated weights (small models); fsdp: PyTorch FSDP2, weights, gradients and Adam
    # state sharded across ranks; deepspeed: DeepSpeed ZeRO-3, the same sharding by DeepSpeed.
    engine: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    # engine deepspeed: the ZeRO stage, 3 (the stage that shards the weights too; null means 3).
    zero_stage: int | None = None
    # fsdp: HSDP replicate degree. 1 shards over every rank; R > 1 shards within groups of
    # world_size / R ranks (a node, typically: R = nodes) and replicates across them, so the
    # all-gathers of the forward stay on the node's NVLink and only gradients cross nodes.
    replicate: int = 1
    nodes: int = 1  # pods: 1 Master + (nodes - 1) Workers
    procs_per_node: int = 1  # GPUs per pod (processes per pod)
    device: Literal["cuda", "cpu"] = "cuda"
    gpu_memory_gib: float = 80.0  # per device; `motif plan` checks the stage fits in it
    collective_timeout_s: int = 600  # a lost rank fails the others after this, instead of a hang
    network: NetworkConfig = field(default_factory=NetworkConfig)  # `motif simulate`'s time model

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass
class CheckpointConfig:
    dir: str  # periodic checkpoints (shared storage on a cluster)
    every_steps: int = 100
    keep_last: int = 3
    # "async": a checkpoint is copied to host memory between two steps and written on a thread while
    # training goes on (torchtitan's async_mode); "disabled": training waits for the write.
    async_mode: Literal["disabled", "async"] = "disabled"
    # Bandwidth of one node to the checkpoint storage, each direction, in GB/s; read by `motif simulate`
    # only, for the time a checkpoint write and a restart's read take. An assumption, not a measurement:
    # a node's share of a parallel filesystem. Set it from your storage's figure (`fio` or `ior` from
    # one node, writing as many files at once as the node has ranks).
    storage_gb_s: float = 5.0


@dataclass
class MetricsConfig:
    port: int = 9400 + 1  # Prometheus exporter port (DCGM exporter owns 9400)
    jsonl: str | None = None  # JSONL log of the same values; None: <checkpoint.dir>/metrics.jsonl
    peak_flops: float | None = None  # per device, for MFU; None: looked up from the device
    trainjob_status_every_s: float = 30.0  # under a TrainJob: status.trainerStatus patched at most this often


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
    model: ModelArgs | None = None
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
    for key in SHAPE_FIELDS:
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
    if d.get("model") is not None:
        for name in _NOT_SETTINGS[ModelArgs]:
            d["model"].pop(name, None)
    return d


# Fields of a type that are state, not settings: never read from a stage file.
_NOT_SETTINGS: dict[type, tuple[str, ...]] = {ModelArgs: ("growth",)}


def _build(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
    hints = typing.get_type_hints(cls)
    skip = ("source_file", *_NOT_SETTINGS.get(cls, ()))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted((k for k in value if k not in fields), key=repr)
    if unknown:
        raise ConfigError(f"{_key_path(where, unknown[0])}: unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _coerce(hints[name], value[name], f"{where}.{name}")
        elif f.metadata.get("required") or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{where}.{name}: missing required key")
    try:
        return cls(**kwargs)
    except MotifError as e:  # a type's own validation (ModelArgs): the same one line, under this key
        raise ConfigError(f"{where}.{e}") from None


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
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a mapping with string keys, got {_show(value)}")
        return dict(value)
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


# The stage name becomes a Kubernetes label value and the stem of release, Job and proxy names, and
# a directory or file name under --out: an RFC 1123 label, as the chart's values.schema.json has it,
# can neither escape a directory (`/`, `..`) nor be refused by the API server after the work is done.
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 63


def _check_name(name: str) -> None:
    if len(name) > NAME_MAX or not NAME.match(name):
        raise ConfigError(
            f"motif.name: expected a Kubernetes name (RFC 1123 label: lowercase letters, digits and '-', starting "
            f"and ending with a letter or digit, at most {NAME_MAX} characters), got {name!r}"
        )


def _positive(where: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: expected {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_parallel(s: StageConfig) -> None:
    p = s.parallel
    if p.zero_stage is not None and p.engine != "deepspeed":
        raise ConfigError(
            f"motif.parallel.zero_stage: {p.zero_stage} needs motif.parallel.engine: deepspeed (got {p.engine}; "
            "fsdp shards like ZeRO-3 by itself)"
        )
    if p.engine == "deepspeed":
        if p.zero_stage not in (None, 3):
            raise ConfigError(
                f"motif.parallel.zero_stage: expected 3, got {p.zero_stage} (the deepspeed engine runs ZeRO-3, "
                "which shards weights, gradients and Adam state; for replicated weights use engine ddp)"
            )
        if s.train.compile:
            # DeepSpeed's ZeRO-3 parameter hooks fetch weights inside forward: torch.compile breaks there.
            raise ConfigError("motif.train.compile: true needs motif.parallel.engine: fsdp or ddp (not deepspeed)")
    _positive("motif.parallel.replicate", p.replicate)
    _positive("motif.parallel.network.intra_node_gb_s", p.network.intra_node_gb_s)
    _positive("motif.parallel.network.inter_node_gb_s", p.network.inter_node_gb_s)
    if p.replicate > 1:
        if p.engine != "fsdp":
            raise ConfigError(f"motif.parallel.replicate: {p.replicate} (HSDP) needs motif.parallel.engine: fsdp")
        if p.world_size % p.replicate:
            raise ConfigError(
                f"motif.parallel.replicate: {p.replicate} does not divide the world size {p.world_size} "
                "(nodes x procs_per_node)"
            )
    _positive("motif.data.shards", s.data.shards)
    if s.data.shards is not None and s.data.shards < p.world_size:
        raise ConfigError(
            f"motif.data.shards: {s.data.shards} is fewer than the {p.world_size} ranks of motif.parallel "
            "(nodes x procs_per_node): every rank reads at least one shard"
        )


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
    _check_name(s.name)
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
    _positive("motif.checkpoint.storage_gb_s", s.checkpoint.storage_gb_s)
    _positive("motif.parallel.nodes", s.parallel.nodes)
    _positive("motif.parallel.procs_per_node", s.parallel.procs_per_node)
    _positive("motif.parallel.collective_timeout_s", s.parallel.collective_timeout_s)
    _check_parallel(s)
    _check_eval(s)
    _check_seeds(s)
    _positive("motif.train.max_skipped_steps", s.train.max_skipped_steps, allow_zero=True)
    _check_paths(s)
    if not 1 <= s.metrics.port <= 65535:
        raise ConfigError(f"motif.metrics.port: expected 1-65535, got {s.metrics.port}")
    _positive("motif.metrics.trainjob_status_every_s", s.metrics.trainjob_status_every_s)
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


SEED_LIMIT = 2**32  # growth mixes a seed with a tensor name into one 64-bit generator seed


def _check_seeds(s: StageConfig) -> None:
    seeds = {"motif.train.seed": s.train.seed, "motif.data.seed": s.data.seed}
    if s.growth is not None:
        seeds["motif.growth.seed"] = s.growth.seed
    for key, seed in seeds.items():
        if not 0 <= seed < SEED_LIMIT:
            raise ConfigError(f"{key}: expected 0 <= seed < 2**32 ({SEED_LIMIT}), got {seed}")


_STEP_NAMES = ("step_", ".step_")  # training checkpoint directories (motif.train.checkpoint)


def _check_paths(s: StageConfig) -> None:
    """No directory a stage writes may overlap another it uses, judged by key, before anything runs.

    output and growth.output are replaced whole by their final write: neither may equal or contain
    another key's path. Nothing is written inside input. output and growth.output may live inside
    checkpoint.dir (the chart's layout: one writable directory per stage), but not under a name
    of the training checkpoints kept there (step_*).
    """
    paths = {"motif.output": s.output, "motif.input": s.input, "motif.checkpoint.dir": s.checkpoint.dir}
    if s.growth is not None:
        paths["motif.growth.output"] = s.growth.output
    real = {k: Path(os.path.realpath(v)) for k, v in paths.items() if v is not None}
    keys = list(real)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if real[a] == real[b]:
                raise ConfigError(f"{a}: {paths[a]} is also {b}; each must be a directory of its own")
    for replaced in ("motif.output", "motif.growth.output"):
        for other in keys:
            if replaced in real and other != replaced and real[replaced] in real[other].parents:
                raise ConfigError(
                    f"{replaced}: {paths[replaced]} contains {other} ({paths[other]}); the final write "
                    "replaces it whole, which would delete that: use separate directories"
                )
    if "motif.input" in real:
        for other in keys:
            if other != "motif.input" and real["motif.input"] in real[other].parents:
                raise ConfigError(
                    f"{other}: {paths[other]} is inside motif.input ({paths['motif.input']}); "
                    "nothing is written inside a stage's input"
                )
        if real["motif.checkpoint.dir"] in real["motif.input"].parents:
            raise ConfigError(
                f"motif.input: {paths['motif.input']} is inside motif.checkpoint.dir ({s.checkpoint.dir}), "
                "whose contents the trainer manages: start from a directory outside it"
            )
    for key in ("motif.output", "motif.growth.output"):
        if key in real and real["motif.checkpoint.dir"] in real[key].parents:
            first = real[key].relative_to(real["motif.checkpoint.dir"]).parts[0]
            if first.startswith(_STEP_NAMES):
                raise ConfigError(
                    f"{key}: {paths[key]} is named like a training checkpoint ({first}) inside "
                    "motif.checkpoint.dir; choose another name (e.g. final)"
                )
