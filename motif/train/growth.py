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
from pathlib import Path

import torch

from motif.config import StageConfig
from motif.errors import GrowthError, MotifError
from motif.train import dist
from motif.train.dist import World
from motif.train.schedule import mask_value

log = logging.getLogger(__name__)

GROW_KEY = "motif/grow"
# Growing a 70B checkpoint streams ~140 GB; the other ranks wait this long before giving up.
GROW_WAIT = datetime.timedelta(hours=6)


def ensure_grown(stage: StageConfig, world: World) -> None:
    """Make sure `stage.growth.output` exists; rank 0 grows it, the others wait for its word."""
    if stage.growth is None:
        return
    if world.is_main:
        from motif.growth import grow_stage

        try:
            grow_stage(stage, overwrite=False, progress=True)
        except BaseException as e:
            if world.distributed:
                dist.store().set(GROW_KEY, f"error: {e}")
            raise
        if world.distributed:
            dist.store().set(GROW_KEY, "ok")
        return
    store = dist.store()
    store.wait([GROW_KEY], GROW_WAIT)
    answer = store.get(GROW_KEY).decode()
    if answer != "ok":
        raise GrowthError(f"rank 0 could not grow {stage.growth.output}: {answer.removeprefix('error: ')}")


def new_block_indices(checkpoint: str | Path) -> list[int]:
    from motif.model.checkpoint import read_provenance

    prov = read_provenance(checkpoint)
    if not prov or "new_layers" not in prov:
        raise MotifError(
            f"{checkpoint}: no growth provenance with new_layers (growth.json); "
            "motif.train.freeze: new_blocks needs a checkpoint grown by LlamaPro"
        )
    return [int(i) for i in prov["new_layers"]]


def freeze_all_but(model: torch.nn.Module, layers: list[int]) -> int:
    """Freeze every parameter outside `model.model.layers[i]` for i in `layers`; returns trainable count."""
    trainable = set()
    for i in layers:
        trainable.update(id(p) for p in model.model.layers[i].parameters())
    count = 0
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
        count += p.numel() if p.requires_grad else 0
    return count


def apply_mask(model, step: int, ramp_steps: int) -> float:
    """Set the MSG mask for optimizer step `step`; remove the masks once it reaches 1."""
    if model.args.growth is None:
        return 1.0
    m = mask_value(step, ramp_steps)
    model.set_growth_mask(m)
    if m >= 1.0:
        model.remove_growth_masks()
    return m
