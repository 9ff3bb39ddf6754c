"""The stage's output: the Hugging Face layout plus `optimizer.safetensors`, written tensor by tensor.

Why it is built this way: at 102B the output is 400 GB of fp32 weights and 800 GB of moments, so no
rank may assemble it. The engine yields one whole tensor at a time (gathered from its shards: a
collective every rank joins), rank 0 writes it straight into its place in the output file (the
header is written first, so every tensor's offset is known before any data), and drops it. The
files appear only complete (`atomic_dir`). A tensor that is not finite is not written: the write
is abandoned and no output appears, so a non-finite model never becomes the next stage's input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from motif.errors import MotifError
from motif.model import ModelArgs
from motif.model.checkpoint import (
    DEFAULT_SHARD_BYTES,
    Spec,
    plan_shards,
    record_checksums,
    shard_names,
    write_index,
    write_json,
)
from motif.model.safetensors_io import SafetensorsWriter
from motif.storage.atomic import atomic_dir
from motif.storage.space import check_free_space
from motif.train import dist
from motif.train.dist import World
from motif.train.guards import TRAINED_FILE
from motif.train.start import MOMENTS, OPTIMIZER_FILE, MomentSource, WeightSource

if TYPE_CHECKING:
    from motif.storage.lease import Lease
    from motif.train.engines import Engine


class NonFiniteOutput(MotifError):
    """The model to be written holds NaN or infinite values."""


def write_output(
    path: str | Path,
    engine: Engine,
    frozen: WeightSource,
    carried: MomentSource,
    world: World,
    *,
    record: dict[str, Any],
    sources: Iterable[str] = (),
    lease: Lease | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> None:
    """Collective: every rank streams the engine's tensors; rank 0 writes them to `path`.

    `record`: written as `trained.json` (which stage, how many steps); `sources`: directories the
    output must not be or contain; `lease`: the job's lease, checked before the output appears.
    """
    args, weight_specs, state_specs = _specs(engine, carried)
    shards = plan_shards(weight_specs, max_shard_bytes)
    files = shard_names(args, len(shards))
    order = [name for shard in shards for name, _, _ in shard] + [k for k, _, _ in state_specs]
    if world.is_main:
        check_free_space(Path(path).parent, _nbytes(weight_specs + state_specs), f"the output {path}")

    problem: str | None = None
    known: dict[str, str] = {}
    writing = atomic_dir(path, overwrite=True, sources=sources, lease=lease) if world.is_main else None
    with writing or contextlib.nullcontext() as tmp:
        # `tmp`: where rank 0 writes; None on the other ranks, which only join the engine's collectives.
        writers: list[tuple[SafetensorsWriter, int]] = []
        if tmp is not None:
            writers = [(SafetensorsWriter(tmp / f, shard), len(shard)) for f, shard in zip(files, shards, strict=True)]
            writers.append((SafetensorsWriter(tmp / OPTIMIZER_FILE, state_specs), len(state_specs)))
        current, written = 0, 0
        for i, (name, tensor) in enumerate(engine.full_tensors(frozen, carried)):
            if name != order[i]:
                raise MotifError(f"output: engine yielded {name} where {order[i]} was expected")
            if tmp is None:
                continue
            assert tensor is not None  # rank 0 gets every whole tensor (`Engine.full_tensors`)
            if problem is None and not bool(torch.isfinite(tensor).all()):
                problem = f"{name} holds NaN or infinite values"
            if problem is not None:
                continue  # keep joining the engine's collectives; nothing more is written
            writer, count = writers[current]
            writer.write(name, tensor.float())
            written += 1
            if written == count:
                known[writer.path.name] = writer.close()
                current, written = current + 1, 0
        failed = _agree(world, problem)
        if failed:
            raise NonFiniteOutput(f"{path}: not written: {failed}")
        if tmp is not None:
            write_index(tmp, args, shards, files)
            write_json(tmp / TRAINED_FILE, record)
            record_checksums(tmp, known)
    dist.barrier(world)


def output_bytes(engine: Engine, carried: MomentSource) -> int:
    """What the stage's output takes on disk: fp32 weights, and the moments and step of every tensor
    with optimizer state (trained here or carried from the previous stage)."""
    _, weight_specs, state_specs = _specs(engine, carried)
    return _nbytes(weight_specs + state_specs)


def _nbytes(specs: list[Spec]) -> int:
    return sum(math.prod(shape) * 4 for _, _, shape in specs)  # every output tensor is fp32


def _specs(engine: Engine, carried: MomentSource) -> tuple[ModelArgs, list[Spec], list[Spec]]:
    """(args, weight specs, optimizer-state specs) of the output, in the order they are written."""
    args = engine.model.args.replace(torch_dtype="float32")
    shapes = args.tensor_shapes()
    trained = set(engine.trainable())
    weight_specs: list[Spec] = [(n, torch.float32, s) for n, s in shapes.items()]
    state_specs: list[Spec] = []
    for n in (n for n in shapes if n in trained or carried.has(n)):
        state_specs += [(f"{k}.{n}", torch.float32, shapes[n]) for k in MOMENTS] + [(f"step.{n}", torch.float32, ())]
    return args, weight_specs, state_specs


def _agree(world: World, problem: str | None) -> str | None:
    """Rank 0's verdict on the stream, known to every rank."""
    if not world.distributed:
        return problem
    import torch.distributed as tdist

    box = [problem]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
