"""Growth events as the trainer sees them: the grown checkpoint, LlamaPro freezing, the MSG ramp.

- The stage trains from `growth.output`. If it is missing, rank 0 grows it (`grow_stage`, which
  is idempotent and writes atomically) while the other ranks wait on the rendezvous store, so
  training starts only on a complete grown checkpoint, and a failed growth stops every rank with
  rank 0's message.
- `train.freeze: new_blocks`: LlamaPro trains only the inserted blocks; their indices come from the
  grown checkpoint's provenance, not from re-deriving the growth arithmetic.
- MSG: the mask rises linearly 0 -> 1 over `growth.ramp_steps` optimizer steps; when it reaches 1
  the masks are removed and the model is a plain Llama of the grown shape.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from motif.config import StageConfig
from motif.errors import GrowthError, MotifError
from motif.train import dist
from motif.train.dist import World
from motif.train.schedule import mask_value

if TYPE_CHECKING:
    from motif.model import Llama

log = logging.getLogger(__name__)

GROW_KEY = "motif/grow"
# Growing a 70B checkpoint streams ~140 GB; the other ranks wait this long before giving up.
GROW_WAIT = datetime.timedelta(hours=6)


def ensure_grown(stage: StageConfig, world: World) -> None:
    """Make sure `stage.growth.output` exists; rank 0 grows it, the others wait for its word.

    While it grows, rank 0 beats a counter in the rendezvous store every second; a waiting rank
    that sees the counter stand still for `ALIVE_S` (or the store gone) knows rank 0 was lost and
    exits 3 at once, as for any lost rank, instead of waiting hours for a word that never comes.
    """
    g = stage.growth
    if g is None:
        return
    if world.is_main:
        from motif.growth import grow_stage

        beating = _beat_while_growing(world)
        try:
            grow_stage(stage, overwrite=False, progress=True, wait_s=GROW_WAIT.total_seconds())
        except BaseException as e:
            if world.distributed:
                dist.store().set(GROW_KEY, f"error: {e}")
            raise
        finally:
            beating.set()
        if world.distributed:
            dist.store().set(GROW_KEY, "ok")
        return
    answer = _wait_for_rank0(g.output, world)
    if answer != "ok":
        raise GrowthError(f"rank 0 could not grow {g.output}: {answer.removeprefix('error: ')}")


ALIVE_KEY = "motif/grow/alive"
ALIVE_S = 30.0  # rank 0's beat standing still this long: it is gone (a growth step never blocks that long)


def _beat_while_growing(world: World) -> threading.Event:
    stop = threading.Event()
    if not world.distributed:
        return stop
    store = dist.store()

    def beat() -> None:
        n = 0
        while not stop.wait(1.0):
            n += 1
            try:
                store.set(ALIVE_KEY, str(n))
            except Exception:  # the store is gone: the waiting ranks see that themselves
                return

    threading.Thread(target=beat, daemon=True, name="motif-grow-heartbeat").start()
    return stop


@dataclass
class _Seen:
    """What the polling thread has seen of rank 0, for the waiting loop (monotonic times)."""

    beat_at: float
    contact_at: float
    answer: str | None = None
    error: Exception | None = None
    beat: str | None = None


def _wait_for_rank0(grown: str, world: World) -> str:
    """Rank 0's word on the growth of `grown`. The store is polled from a thread: when rank 0 hosts
    the store (a PyTorchJob without torchrun) and hangs, a store call can block for good."""
    store = dist.store()
    now = time.monotonic()
    seen = _Seen(beat_at=now, contact_at=now)

    def poll() -> None:
        try:
            while not store.check([GROW_KEY]):
                beat = store.get(ALIVE_KEY).decode() if store.check([ALIVE_KEY]) else None
                if beat != seen.beat:
                    seen.beat, seen.beat_at = beat, time.monotonic()
                seen.contact_at = time.monotonic()
                time.sleep(0.5)
            seen.answer = store.get(GROW_KEY).decode()
        except Exception as e:  # the store's host is gone
            seen.error = e

    thread = threading.Thread(target=poll, daemon=True, name="motif-grow-wait")
    thread.start()
    deadline = now + GROW_WAIT.total_seconds()
    while time.monotonic() < deadline:
        thread.join(0.5)
        if seen.answer is not None:
            return seen.answer
        if seen.error is not None:
            _lost_rank0(grown, world, f"the rendezvous store no longer answers: {_one_line(seen.error)}")
        if time.monotonic() - seen.contact_at > ALIVE_S:
            _lost_rank0(grown, world, f"the rendezvous store did not answer for {ALIVE_S:.0f}s")
        if time.monotonic() - seen.beat_at > ALIVE_S:
            _lost_rank0(grown, world, f"its heartbeat stood still for {ALIVE_S:.0f}s")
    raise GrowthError(f"rank 0 did not finish growing {grown} within {GROW_WAIT}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _lost_rank0(grown: str, world: World, why: str) -> NoReturn:
    import logging as _logging
    import os
    import sys

    print(
        f"motif train: rank {world.rank}/{world.world_size}: lost rank 0 while it grew {grown} "
        f"({why}); exiting with status {dist.EXIT_LOST_RANK} so the job restarts (the growth resumes from scratch, "
        "its partial output is never used)",
        file=sys.stderr,
        flush=True,
    )
    _logging.shutdown()
    os._exit(dist.EXIT_LOST_RANK)


def new_block_indices(checkpoint: str | Path) -> list[int]:
    from motif.model.checkpoint import read_provenance

    prov = read_provenance(checkpoint)
    if not prov or "new_layers" not in prov:
        raise MotifError(
            f"{checkpoint}: no growth provenance with new_layers (growth.json); "
            "motif.train.freeze: new_blocks needs a checkpoint grown by LlamaPro"
        )
    return [int(i) for i in prov["new_layers"]]


def freeze_all_but(model: Llama, layers: list[int]) -> int:
    """Freeze every parameter outside `model.model.layers[i]` for i in `layers`; returns trainable count."""
    trainable: set[int] = set()
    for i in layers:
        trainable.update(id(p) for p in model.model.layers[i].parameters())
    count = 0
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
        count += p.numel() if p.requires_grad else 0
    return count


def apply_mask(model: Llama, step: int, ramp_steps: int) -> float:
    """Set the MSG mask for optimizer step `step`; remove the masks once it reaches 1."""
    if model.args.growth is None:
        return 1.0
    m = mask_value(step, ramp_steps)
    model.set_growth_mask(m)
    if m >= 1.0:
        model.remove_growth_masks()
    return m
