"""`motif plan`: shapes, parameter counts and memory per GPU of every stage of a recipe.

A recipe is a directory of stage files, run in file-name order. The shape a stage starts from is
its `motif.model` when given, else the shape produced by the earlier stage whose `output` is this
stage's `input`, else the input checkpoint's config.json. Nothing here reads a weight.

Memory per device is a model of what the engines allocate, tensor class by tensor class, checked
against measured peak memory per rank at 1, 2 and 4 ranks (`make bench`, bench/scale.py):

- **ddp**: every rank holds everything: fp32 weights (4 B/param; bf16 is autocast), fp32 gradients,
  and DDP's gradient buckets beside them once there are peers (4 B per trainable param each), Adam's
  two moments (8 B per trainable param).
- **fsdp** (FSDP2, sharded over S = world_size / parallel.replicate ranks): fp32 master weights,
  fp32 gradients and the moments, each 1/S: 16 B per trainable param / S. Working set: the gathered
  compute copies of the current and the prefetched group and the unsharded gradient of one group
  (3 x compute bytes x the largest group: a block, or the embedding or head), plus an fp32 copy of
  that gradient for the reduction when compute is bf16.
- **deepspeed** (ZeRO-3 over W ranks): the compute-dtype partition of every weight and the fp32 master
  of the trained ones, the gradient partition in compute dtype and its fp32 copy for the optimizer,
  and the moments: (c + 4 + c + 4 + 8) B per param / W. Working set as fsdp's (two gathered groups,
  one reduce bucket, all sized to the largest group by the engine's config).
- **activations**, counted tensor by tensor for a block with fused (flash) attention (no seq_len^2
  term): with activation checkpointing every block's input plus one recomputed block; the logits
  and their fp32 copy for the loss once.
- **overhead**: on GPU a fixed 4 GiB (CUDA context, NCCL buffers, allocator fragmentation); on CPU
  the host-side allowance the benchmark measures beyond the above (the data pipeline, gloo buffers).
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
OVERHEAD_BYTES = {"cuda": 4 * GIB, "cpu": 160 * MIB}  # see the module docstring


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="directory of stage files (e.g. jobs/llama3-motif-102b)")
    parser.add_argument("--json", action="store_true", help="machine-readable output with exact integer counts")


@dataclass
class Memory:
    """Bytes per GPU."""

    weights: int
    grads: int
    optimizer: int
    activations_checkpointed: int
    activations_full: int
    gathered: int  # ZeRO-3: whole blocks gathered for compute
    overhead: int
    activation_checkpointing: bool

    @property
    def total(self) -> int:
        act = self.activations_checkpointed if self.activation_checkpointing else self.activations_full
        return self.weights + self.grads + self.optimizer + act + self.gathered + self.overhead


def memory_per_gpu(args: Any, trainable: int, stage: Any) -> Memory:
    """Estimate (see module docstring) for `args` (ModelArgs) trained as `stage` (StageConfig) says."""
    p = stage.parallel
    n, t = args.num_params(), trainable
    c = 2 if stage.train.precision == "bf16" else 4  # bytes of a compute-dtype element
    group = args.largest_group_params()
    # The sharded engines' working set: two gathered groups and one unsharded gradient (+ its fp32 copy).
    gathered = 3 * c * group + (4 * group if c != 4 else 0)
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
    logits = tokens * args.vocab_size * (c + 4)  # logits and the fp32 copy the loss uses
    layers = args.num_hidden_layers
    full = layers * per_block + logits
    checkpointed = layers * c * tokens * d + per_block + logits  # block inputs + one recomputed block
    overhead = OVERHEAD_BYTES[p.device]
    return Memory(
        weights, grads, optimizer, checkpointed, full, gathered, overhead, stage.train.activation_checkpointing
    )


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
        mem = memory_per_gpu(after, trainable, stage)
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
                "memory_bytes": {
                    "weights": mem.weights,
                    "grads": mem.grads,
                    "optimizer": mem.optimizer,
                    "activations_checkpointed": mem.activations_checkpointed,
                    "activations_full": mem.activations_full,
                    "gathered_blocks": mem.gathered,
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
