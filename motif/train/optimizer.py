"""AdamW as every engine runs it: growth-aware decay, per-tensor step counts, state made eagerly.

Why it is built this way:
- **Decay follows the growth mask.** The optimizer runs with `weight_decay=0`; `decay_` applies
  decoupled decay itself, each element's rate scaled by its MSG mask (1 for old elements, m for
  new ones), so weights that a mask still hides (and that get no gradient at m = 0) do not shrink
  toward zero. For an old element it is AdamW's own `p *= 1 - lr * wd`, bit for bit. It works on
  a rank's *local* elements, given as a flat range of the full tensor, which is what every engine
  holds: the whole tensor (DDP), a range of rows (FSDP2), a flat range (ZeRO-3).
- **State is made before the first step**, from the moments carried from the previous stage
  (`motif grow` grew them with the weights), so they are used from step 1 and a resume can load
  into it. A wholly new tensor carries step 0 (its bias correction starts afresh: METHODS 4).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from motif.config import OptimConfig
from motif.growth.optimizer_state import new_element_flags
from motif.model.args import ModelArgs


def adamw(param_groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool) -> torch.optim.AdamW:
    # weight_decay=0: `decay_` applies it, scaled by the growth mask (see the module docstring).
    # fused: one kernel per parameter group; elementwise, so still bit-reproducible.
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=0.0, **kind
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def init_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, step: float, fused: bool
) -> dict[str, torch.Tensor]:
    """Zero moments and `step` for one parameter, in the form torch's AdamW keeps them."""
    device = param.device if fused else "cpu"
    state = {
        "step": torch.tensor(float(step), dtype=torch.float32, device=device),
        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
    }
    optimizer.state[param] = state
    return state


def new_flags_flat(name: str, args: ModelArgs, shape: tuple[int, ...], start: int, stop: int) -> torch.Tensor | bool:
    """Which of elements [start, stop) of a flattened weight are new while MSG masks are pending.

    False: none; True: all (an MSG depth block); else a boolean vector over the range.
    """
    flags = new_element_flags(name, args)
    if flags is False or flags is True:
        return flags
    rows, cols = flags
    ncols = shape[1] if len(shape) == 2 else 1
    index = torch.arange(start, stop)
    new = torch.zeros(stop - start, dtype=torch.bool)
    if rows is not None:
        new |= rows[index // ncols]
    if cols is not None:
        new |= cols[index % ncols]
    return new


@torch.no_grad()
def decay_(
    locals_: Iterable[tuple[str, torch.Tensor, int, tuple[int, ...]]], args: ModelArgs, lr: float, wd: float
) -> None:
    """Decoupled weight decay on local elements, scaled by the growth mask.

    `locals_`: (name, flat view of this rank's elements, offset of the first one in the flattened
    full tensor, full shape) for every parameter that got a gradient this step.
    """
    if lr == 0 or wd == 0:
        return
    factor = 1 - lr * wd
    items = list(locals_)
    if args.growth is None:  # no mask pending: one foreach multiplication, as AdamW itself does
        views = [flat for _, flat, _, _ in items if flat.numel()]
        if views:
            torch._foreach_mul_(views, factor)
        return
    new_factor = 1 - lr * wd * args.growth.mask
    for name, flat, offset, shape in items:
        if not flat.numel():
            continue
        new = new_flags_flat(name, args, shape, offset, offset + flat.numel())
        if new is False:
            flat.mul_(factor)
        elif new is True:
            flat.mul_(new_factor)
        else:
            scale = torch.where(new.to(flat.device), torch.tensor(new_factor, dtype=flat.dtype), factor)
            flat.mul_(scale.to(flat.dtype))
