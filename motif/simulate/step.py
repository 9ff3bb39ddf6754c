"""One optimizer step of a stage, run by the fsdp engine's own code on fake tensors, seen from rank 0.

The step is the trainer's: the engine is built as `motif train` builds it (meta model, FSDP2
groups, each rank's rows of the start weights, frozen blocks, MSG masks, Adam state made before
the first step as for carried moments), then `grad_accum_steps` micro-batches of
`Trainer.forward_loss` and `FsdpEngine.backward`, the clip and the optimizer step with its
growth-masked decay. Start weights are drawn from the seeded initialiser: on fake tensors only
their shapes matter, and those are the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from motif.plan import StageShape
from motif.simulate.counter import OpCounter, Record
from motif.simulate.tracker import StepMemTracker, propagating

CATEGORIES = {  # FSDPMemTracker's categories -> the report's
    "Sharded Param": "sharded_params",
    "Unsharded Param": "unsharded_params",
    "Buffer": "buffers",
    "Sharded Grad": "sharded_grads",
    "Unsharded Grad": "unsharded_grads",
    "OptState": "optimizer_state",
    "Activation": "activations",
    "Inputs": "inputs",
    "Temp": "temporaries",
    "All Gather": "gathered_groups",
    "Reduce Scatter": "reduce_buffers",
}


@dataclass
class StepMemory:
    peak_bytes: int
    peak_at: str
    by_category_bytes: dict[str, int]
    checkpoint_bytes: int = 0  # what rank 0 holds of the training state a checkpoint saves


def layout(stage: Any, world_size: int | None, seq_len: int | None, micro_batches: int | None) -> Any:
    """The stage with the command line's overrides (a world that is not a whole number of nodes is one node)."""
    p, t, d = stage.parallel, stage.train, stage.data
    if world_size is not None:
        per_node = p.procs_per_node if world_size % p.procs_per_node == 0 else world_size
        p = dataclasses.replace(p, nodes=world_size // per_node, procs_per_node=per_node)
    if micro_batches is not None:
        t = dataclasses.replace(t, grad_accum_steps=micro_batches)
    if seq_len is not None:
        d = dataclasses.replace(d, seq_len=seq_len)
    return dataclasses.replace(stage, parallel=p, train=t, data=d)


def fake_world(world_size: int):
    """Rank 0 of a fake process group of `world_size` ranks (collectives return at once, move nothing)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from motif.train.dist import World

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    return World(0, world_size, 0, torch.device("cpu"), "fake")


def run_step(shape: StageShape, stage: Any, progress, fake: bool = True) -> tuple[StepMemory, Record]:
    """Build the engine and run one optimizer step; `fake=False` runs it on real tensors (tests)."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    from motif.train import growth_aware
    from motif.train.engines import build_engine
    from motif.train.start import MomentSource, WeightSource

    world = fake_world(stage.parallel.world_size)
    t0 = time.perf_counter()
    with FakeTensorMode() if fake else contextlib.nullcontext(), propagating():
        engine = build_engine(stage, world, WeightSource(shape.grown, None, 0), MomentSource(None), shape.frozen())
        ramp = stage.growth.ramp_steps if stage.growth is not None else 0
        growth_aware.apply_mask(engine.model, 0, min(ramp, stage.train.max_steps))
        progress(f"built the sharded model ({time.perf_counter() - t0:.0f}s)")
        memory, record = _step(engine, stage, world, progress)
    import torch.distributed as dist

    dist.destroy_process_group()
    return memory, record


def optimizer_step(engine, stage, world, phase=lambda name, batch: None, progress=lambda message: None) -> None:
    """One optimizer step of the trainer's own code: `grad_accum_steps` micro-batches (forward, loss,
    backward), the clip and the optimizer's step; `phase(name)` is told where it is."""
    from motif.data.mixture import Batch
    from motif.train.trainer import RunOptions, Trainer

    trainer = Trainer(stage, RunOptions(), world, metrics=None)
    trainer.engine = engine
    t = stage.train
    tokens = torch.zeros(t.micro_batch_size, stage.data.seq_len + 1, dtype=torch.long)
    batch = Batch(tokens, torch.zeros(t.micro_batch_size, dtype=torch.long))
    for i in range(t.grad_accum_steps):
        t0 = time.perf_counter()
        phase(f"micro-batch {i + 1}/{t.grad_accum_steps}", batch)
        loss, _ = trainer.forward_loss(batch)
        engine.backward(loss, t.grad_accum_steps)
        del loss
        progress(f"micro-batch {i + 1}/{t.grad_accum_steps}: forward and backward ({time.perf_counter() - t0:.0f}s)")
    t0 = time.perf_counter()
    phase("clip", None)
    engine.clip_grad_norm(stage.optim.grad_clip)
    phase("optimizer step", None)
    engine.step(1e-4, finite=True)
    progress(f"clip and optimizer step ({time.perf_counter() - t0:.0f}s)")


def _step(engine, stage, world, progress) -> tuple[StepMemory, Record]:
    tracker = StepMemTracker(engine.model, engine.optimizer)
    counter = OpCounter()

    def phase(name: str, batch) -> None:
        tracker.phase = name
        if batch is not None:
            tracker.track_inputs((batch.tokens,))

    with tracker, counter:
        optimizer_step(engine, stage, world, phase, progress)
    snapshot = tracker._peak_mem_snap[torch.device("cpu")]
    peak = snapshot["Total"]
    by_category = {CATEGORIES[str(k.value)]: int(v) for k, v in snapshot.items() if k != "Total" and v}
    return StepMemory(int(peak), tracker.peak_at, by_category, state_bytes(engine)), counter.record


def state_bytes(engine) -> int:
    """Rank 0's share of a checkpoint: its shards of every parameter (frozen ones too) and of the
    optimizer's state (Adam's moments and step), as the engine holds them after a step."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> int:
        shard = t.to_local() if isinstance(t, DTensor) else t
        return shard.numel() * shard.element_size()

    params = sum(local(p) for p in engine.model.parameters())
    moments = sum(local(v) for state in engine.optimizer.state.values() for v in state.values() if torch.is_tensor(v))
    return params + moments
