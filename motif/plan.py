"""`motif plan`: shapes, parameter counts and memory per GPU of every stage of a recipe.

A recipe is a directory of stage files, run in file-name order. The shape a stage starts from is
its `motif.model` when given, else the shape produced by the earlier stage whose `output` is this
stage's `input`, else the input checkpoint's config.json. Nothing here reads a weight.

Memory per device is a model of what the engines allocate, tensor class by tensor class, checked
against `motif simulate` (the engine's own step on fake tensors at the real size) and against
measured peak memory per rank at 1, 2 and 4 ranks (`make bench`, bench/scale.py). The peak is the
largest of three phases, never the sum of every maximum (they do not coincide). In the first two,
gradients count only from the second micro-batch on: a first micro-batch peaks early in its
backward, before any exists.

- **block backward**: the states, what the forward saved, the sharded engines' gathered working
  set, and one block's backward work (its recomputed activations under checkpointing and the
  gradients of its MLP's [tokens x intermediate] tensors, ~3 live at once);
- **loss**: the states, what the forward saved, and the loss's backward: log-softmax's fp32
  output, the gradient arriving at it and the one it makes for the logits (12 B x tokens x
  vocabulary). The head is resharded by then: nothing is gathered;
- **optimizer step**: the end of the last backward, through the step: every state, the gradients
  complete, with the last group's gathered weights and reduce buffer (what sets the peak when
  activations are small: short sequences, a small vocabulary).

Tensor classes:

- **ddp**: every rank holds everything: fp32 weights (4 B/param; bf16 is autocast), fp32 gradients,
  and DDP's gradient buckets beside them once there are peers (4 B per trainable param each), Adam's
  two moments (8 B per trainable param).
- **fsdp** (FSDP2, sharded over S = world_size / parallel.replicate ranks): fp32 master weights,
  fp32 gradients and the moments, each 1/S: 16 B per trainable param / S. Working set: the gathered
  compute copies of the current and the prefetched group (2 x compute bytes x the largest group: a
  block, or the embedding or head), and the fp32 gradient of the largest trained group being
  reduce-scattered.
- **deepspeed** (ZeRO-3 over W ranks): the compute-dtype partition of every weight and the fp32 master
  of the trained ones, the gradient partition in compute dtype and its fp32 copy for the optimizer,
  and the moments: (c + 4 + c + 4 + 8) B per param / W. Working set as fsdp's.
- **activations**, counted tensor by tensor for a block with fused (flash) attention (no seq_len^2
  term): with activation checkpointing every block's input (plus the final norm's output),
  without it every block's saved tensors; from the first trained block on (LlamaPro's frozen blocks
  before it save nothing; the frozen ones after it are counted as trained ones, which save more).
- **overhead**: on GPU 2 GiB (CUDA context with its kernels, ~0.6 GiB; NCCL's channel buffers,
  ~1.4 GiB) plus 5% of the tensor peak for the caching allocator's fragmentation (FSDP2's
  per-parameter shards make same-sized blocks it reuses); on CPU the host-side allowance the
  benchmark measures beyond the tensors (the interpreter, the data pipeline, gloo buffers).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELP = "shapes, parameter counts and memory per GPU of each stage of a recipe"
DESCRIPTION = """\
Print, for every stage file in RECIPE (a directory, processed in file-name order): the shape before
and after growth, exact parameter counts, trainable parameters (LlamaPro freezes all but the new
blocks), and memory per GPU for the stage's engine and world size (weights, gradients and Adam state
sharded over the ranks by fsdp and deepspeed), against its GPU memory.

Example:
  motif plan jobs/llama3-motif-102b
  motif plan jobs/llama3-motif-102b --json
"""

GIB = 2**30
MIB = 2**20
# See the module docstring ("overhead").
CUDA_FIXED_BYTES = 2 * GIB
CUDA_FRAGMENTATION = 0.05
CPU_OVERHEAD_BYTES = 160 * MIB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="directory of stage files (e.g. jobs/llama3-motif-102b)")
    parser.add_argument("--json", action="store_true", help="machine-readable output with exact integer counts")


@dataclass
class Memory:
    """Bytes per GPU."""

    weights: int
    grads: int
    optimizer: int
    activations_checkpointed: int  # saved for backward at the loss: every block's input
    activations_full: int  # the same without checkpointing: every block's saved tensors
    gathered: int  # sharded engines: two gathered groups and one reduce buffer
    overhead: int
    activation_checkpointing: bool
    micro_batches: int
    block_temporaries: int  # one block's backward: its recomputed activations and their gradients
    loss: int  # the loss region: logits, their fp32 copy, log-softmax and its gradient

    @property
    def states(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def saved(self) -> int:
        return self.activations_checkpointed if self.activation_checkpointing else self.activations_full

    @property
    def held_grads(self) -> int:
        """Gradients held at the peak: a first micro-batch peaks early in its backward, before any
        gradient is made; later ones hold the earlier micro-batches' gradients."""
        return self.grads if self.micro_batches > 1 else 0

    @property
    def block_phase(self) -> int:
        """A block's backward: states, what the forward saved, the gathered groups, the block's work."""
        return self.weights + self.held_grads + self.optimizer + self.saved + self.gathered + self.block_temporaries

    @property
    def loss_phase(self) -> int:
        """The loss and its gradient, after the head has been resharded: nothing gathered."""
        return self.weights + self.held_grads + self.optimizer + self.saved + self.loss

    @property
    def step_phase(self) -> int:
        """The end of the last backward and the optimizer step: every state, gradients complete, with
        the last group's gathered weights and reduce buffer (it sets the peak of small-activation runs)."""
        return self.states + self.gathered

    @property
    def phases(self) -> dict[str, int]:
        return {"block backward": self.block_phase, "loss": self.loss_phase, "optimizer step": self.step_phase}

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    @property
    def total(self) -> int:
        return self.peak + self.overhead


def overhead_bytes(device: str, peak: int) -> int:
    """What tensors do not show (see the module docstring); `motif simulate` adds the same."""
    if device == "cpu":
        return CPU_OVERHEAD_BYTES
    return CUDA_FIXED_BYTES + int(CUDA_FRAGMENTATION * peak)


def memory_per_gpu(
    args: Any, trainable: int, stage: Any, trainable_group: int | None = None, first_trained_layer: int = 0
) -> Memory:
    """Estimate (see module docstring) for `args` (ModelArgs) trained as `stage` (StageConfig) says.

    `trainable_group`: parameters of the largest group that gets a gradient (default: the largest group).
    `first_trained_layer`: the blocks before it (frozen, fed by a frozen embedding) save nothing for backward.
    """
    p = stage.parallel
    n, t = args.num_params(), trainable
    c = 2 if stage.train.precision == "bf16" else 4  # bytes of a compute-dtype element
    group = args.largest_group_params()
    reduced = group if trainable_group is None else trainable_group
    # The sharded engines' working set: the group in use and the prefetched one, gathered in the
    # compute dtype, and one group's gradient in fp32 for the reduction.
    gathered = 2 * c * group + 4 * reduced
    if p.engine == "ddp":
        weights, grads, optimizer, gathered = 4 * n, 4 * t * (2 if p.world_size > 1 else 1), 8 * t, 0
    elif p.engine == "fsdp":
        shards = p.world_size // p.replicate
        weights, grads, optimizer = 4 * n // shards, 4 * t // shards, 8 * t // shards
    else:  # deepspeed, ZeRO-3
        w = p.world_size
        weights, grads, optimizer = (c * n + 4 * t) // w, (c + 4) * t // w, 8 * t // w
    tokens = stage.train.micro_batch_size * stage.data.seq_len
    d, f = args.hidden_size, args.intermediate_size
    q, kv = args.num_attention_heads * args.head_dim, args.num_key_value_heads * args.head_dim
    # Saved for backward in one block: 2 norm inputs + 2 norm outputs, q, k, v, attention output,
    # rotated q and k, gate, up, silu(gate) and the product fed to down_proj.
    per_block = c * tokens * (4 * d + 3 * q + 3 * kv + 4 * f)
    layers = args.num_hidden_layers - first_trained_layer
    full = layers * per_block + c * tokens * d  # + the final norm's output
    checkpointed = layers * c * tokens * d + c * tokens * d
    # A block's backward: with checkpointing its activations recomputed, and the gradients of the
    # MLP's [tokens x intermediate] tensors (gate, up, their product: ~3 of them live at once).
    block_temporaries = (per_block if stage.train.activation_checkpointing else 0) + 3 * c * tokens * f
    # The loss's backward: log-softmax's fp32 output (saved), the gradient arriving at it and the
    # gradient it makes for the logits, three fp32 [tokens x vocabulary] tensors (the bf16 logits
    # and their fp32 copy are freed by then): 12 B per token and vocabulary entry.
    loss = 12 * tokens * args.vocab_size
    mem = Memory(
        weights,
        grads,
        optimizer,
        checkpointed,
        full,
        gathered,
        0,
        stage.train.activation_checkpointing,
        stage.train.grad_accum_steps,
        block_temporaries,
        loss,
    )
    mem.overhead = overhead_bytes(p.device, mem.peak)
    return mem


@dataclass
class StageShape:
    """A stage file with the shapes it trains: before growth, after it (masks pending), and what trains."""

    file: Path
    stage: Any  # StageConfig
    before: Any  # ModelArgs
    grown: Any  # ModelArgs as trained: an MSG stage's pending masks included
    new_layers: list[int]
    trainable: int

    @property
    def after(self) -> Any:
        return self.grown.replace(growth=None)

    def largest_trainable_group(self) -> int:
        """Parameters of the largest group a sharded engine reduces a gradient for."""
        if self.stage.train.freeze != "new_blocks":
            return self.grown.largest_group_params()
        return sum(math.prod(s) for n, s in self.grown.tensor_shapes().items() if n.startswith("model.layers.0."))

    def first_trained_layer(self) -> int:
        """The first block that gets a gradient: autograd saves nothing for the frozen ones before it."""
        return min(self.new_layers) if self.stage.train.freeze == "new_blocks" and self.new_layers else 0

    def frozen(self) -> set[str]:
        """Names of the weights `train.freeze` keeps fixed (LlamaPro: all but the new blocks)."""
        if self.stage.train.freeze != "new_blocks":
            return set()
        keep = tuple(f"model.layers.{i}." for i in self.new_layers)
        return {n for n in self.grown.tensor_shapes() if not n.startswith(keep)}


def stage_files(recipe: str | Path) -> list[Path]:
    from motif.errors import MotifError

    recipe = Path(recipe)
    files = sorted(p for p in recipe.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if recipe.is_dir() else []
    if not files:
        raise MotifError(f"{recipe}: no stage files (*.yaml) in this directory")
    return files


def resolve_stages(files: list[Path]) -> list[StageShape]:
    """The shapes of stage files run in this order (see the module docstring: nothing reads a weight)."""
    from motif.config import load_stage
    from motif.errors import MotifError
    from motif.growth.operators import plan_growth
    from motif.model.args import ModelArgs
    from motif.model.checkpoint import read_args

    produced: dict[str, ModelArgs] = {}
    out = []
    for file in files:
        stage = load_stage(file)
        if stage.model is not None:
            args = stage.model
        elif stage.input in produced:
            args = produced[stage.input]
        else:
            try:
                args = read_args(stage.input)
            except MotifError as e:
                raise MotifError(
                    f"{file}: motif.input: {stage.input} is neither an earlier stage's output nor a readable "
                    f"checkpoint ({e}); set motif.model to the shape it has"
                ) from None
        grown, new_layers = args, []
        if stage.growth is not None:
            try:
                plan = plan_growth(args, stage.growth.targets(), stage.growth.depth_method)
            except MotifError as e:
                raise MotifError(f"{file}: motif.growth: {e}") from None
            grown, new_layers = plan.args, plan.new_layers
        produced[stage.output] = grown.replace(growth=None)
        trainable = grown.num_params()
        if stage.train.freeze == "new_blocks":
            shapes = grown.tensor_shapes()
            trainable = sum(
                math.prod(s)
                for n, s in shapes.items()
                if n.startswith("model.layers.") and int(n.split(".")[2]) in new_layers
            )
        out.append(StageShape(Path(file), stage, args, grown, new_layers, trainable))
    return out


def plan_recipe(recipe: str | Path) -> list[dict[str, Any]]:
    from motif.growth.targets import shape_dict

    rows = []
    for shape in resolve_stages(stage_files(recipe)):
        file, stage, args, after, new_layers, trainable = (
            shape.file,
            shape.stage,
            shape.before,
            shape.after,
            shape.new_layers,
            shape.trainable,
        )
        mem = memory_per_gpu(after, trainable, stage, shape.largest_trainable_group(), shape.first_trained_layer())
        capacity = int(stage.parallel.gpu_memory_gib * GIB)
        rows.append(
            {
                "file": str(file),
                "stage": stage.name,
                "before": shape_dict(args),
                "after": shape_dict(after),
                "params": after.num_params(),
                "trainable_params": trainable,
                "new_layers": new_layers,
                "world_size": stage.parallel.world_size,
                "engine": stage.parallel.engine,
                "shards": _shards(stage.parallel),
                "activation_checkpointing": stage.train.activation_checkpointing,
                "peak_phase": mem.peak_phase,
                "memory_bytes": {
                    "weights": mem.weights,
                    "grads": mem.grads,
                    "optimizer": mem.optimizer,
                    "activations_checkpointed": mem.activations_checkpointed,
                    "activations_full": mem.activations_full,
                    "gathered_blocks": mem.gathered,
                    "block_temporaries": mem.block_temporaries,
                    "loss": mem.loss,
                    "block_phase": mem.block_phase,
                    "loss_phase": mem.loss_phase,
                    "step_phase": mem.step_phase,
                    "overhead": mem.overhead,
                    "total": mem.total,
                },
                "gpu_memory_bytes": capacity,
                "fits": mem.total <= capacity,
            }
        )
    return rows


def _shards(p: Any) -> int:
    """Ranks the weights, gradients and Adam state are split over (1: replicated)."""
    return 1 if p.engine == "ddp" else p.world_size // (p.replicate if p.engine == "fsdp" else 1)


def _shape(s: dict[str, int]) -> str:
    return f"L{s['layers']} d{s['hidden']} f{s['intermediate']} h{s['heads']}/{s['kv_heads']}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'stage':<14} {'shape before -> after':<58} {'params':>9} {'trainable':>9} {'GPUs':>5} {'engine':>9} "
        f"{'w+g+opt':>8} {'act ckpt/full':>13} {'total':>7} {'GPU':>5}  fits"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r["memory_bytes"]
        shape = _shape(r["before"]) + (" -> " + _shape(r["after"]) if r["after"] != r["before"] else "")
        states = (m["weights"] + m["grads"] + m["optimizer"]) / GIB
        act = f"{m['activations_checkpointed'] / GIB:.1f}/{m['activations_full'] / GIB:.1f}"
        act += "*" if r["activation_checkpointing"] else " "
        layout = f"{r['engine']}/{r['shards']}"
        lines.append(
            f"{r['stage']:<14} {shape:<58} {r['params'] / 1e6:>8,.0f}M {r['trainable_params'] / 1e6:>8,.0f}M "
            f"{r['world_size']:>5} {layout:>9} {states:>7.1f}G {act:>13} {m['total'] / GIB:>6.1f}G "
            f"{r['gpu_memory_bytes'] / GIB:>4.0f}G  {'yes' if r['fits'] else 'NO'}"
        )
    lines.append("Memory per GPU in GiB; * marks the activation setting the stage uses (checkpointing on or off).")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = plan_recipe(args.recipe)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0 if all(r["fits"] for r in rows) else 1
