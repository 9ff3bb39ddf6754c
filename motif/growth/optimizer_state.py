"""Optimizer state at a growth event, and weight decay that spares masked weights.

Adam moments are grown with the same plan as the weights: old slices carried unchanged, new
slices zero (MSG's choice). Two traps, and the choices made here (docs/growth.md explains them):

* **Step count.** Adam divides by (1 - beta^step). A new tensor with zero moments but an old, large
  step count takes a first update of (1 - beta1) / sqrt(1 - beta2) times the learning rate (about
  3x for betas 0.9/0.999) instead of 1x. So a wholly new tensor (a block inserted by depth growth)
  restarts at step 0. A partly new tensor keeps its step: the old elements need it, and Adam has
  one step per tensor; its new elements see no gradient while m = 0 and small ones as m ramps.
* **Weight decay.** Decoupled decay shrinks every weight, including masked ones that get no
  gradient at m = 0. `masked_weight_decay_` scales each element's decay by its mask (1 for old
  elements, m for new ones); train with AdamW(weight_decay=0) and call it before `step()`. For old
  elements it performs AdamW's own multiplication, so they move exactly as under plain AdamW.

Checkpoint form: `optimizer.safetensors` next to the weights, keys `exp_avg.<param>`,
`exp_avg_sq.<param>` (fp32, the parameter's shape) and `step.<param>` (0-d fp32).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from motif.errors import CheckpointError
from motif.growth.operators import FFN_DIM, HEAD_DIM, HIDDEN_DIM, KV_DIM, GrowthPlan, kind, layer_of, plan_growth
from motif.growth.targets import GrowthTargets
from motif.growth.tensors import grow_tensor
from motif.model.args import ModelArgs
from motif.model.model import Llama, new_head_flags
from motif.model.safetensors_io import SafetensorsWriter, read_header, read_tensor
from motif.model.verify import feed_tensor
from motif.storage.integrity import SequentialHash
from motif.storage.reading import open_sequential

MOMENTS = ("exp_avg", "exp_avg_sq")


# ---- which elements are new ------------------------------------------------------------------


def new_element_flags(name: str, args: ModelArgs) -> tuple[torch.Tensor | None, torch.Tensor | None] | bool:
    """Which elements of a weight are new while MSG masks are pending.

    Returns False (nothing new), True (the whole tensor: an MSG depth block), or a pair of boolean
    vectors (new rows, new columns; None where that dimension has nothing new).
    """
    g = args.growth
    if g is None:
        return False
    if layer_of(name) in g.blend_layers:
        return True
    k = kind(name)
    flags: list[torch.Tensor | None] = [None, None]

    # Whether a dimension has new elements is decided from the shapes (plain Python), never read
    # back from a tensor: the flags are then also made on fake tensors (`motif simulate`).
    def mark(dim: int | None, grew: bool, new: torch.Tensor) -> None:
        if dim is not None and grew:
            old = flags[dim]
            flags[dim] = new if old is None else old | new

    if g.hidden is not None:
        mark(HIDDEN_DIM.get(k), g.hidden < args.hidden_size, torch.arange(args.hidden_size) >= g.hidden)
    if g.intermediate is not None:
        grew = g.intermediate < args.intermediate_size
        mark(FFN_DIM.get(k), grew, torch.arange(args.intermediate_size) >= g.intermediate)
    if g.heads is not None and g.kv_heads is not None:  # both or neither (GrowthState)
        heads = new_head_flags(g.heads, g.kv_heads, args.num_attention_heads, args.num_key_value_heads)
        mark(HEAD_DIM.get(k), g.heads < args.num_attention_heads, heads.repeat_interleave(args.head_dim))
        kv = args.num_key_value_heads * args.head_dim
        mark(KV_DIM.get(k), g.kv_heads < args.num_key_value_heads, torch.arange(kv) >= g.kv_heads * args.head_dim)
    if flags == [None, None]:
        return False
    return flags[0], flags[1]


@torch.no_grad()
def masked_weight_decay_(model: Llama, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay, each element's rate scaled by its growth mask (1 old, m new).

    Use with AdamW(weight_decay=0), called before `optimizer.step()`: for old elements this is
    exactly AdamW's `p.mul_(1 - lr * weight_decay)`. Parameters without a gradient are skipped, as
    AdamW skips them.
    """
    if lr == 0 or weight_decay == 0:
        return
    factor = 1 - lr * weight_decay
    new_factor = 1 - lr * weight_decay * model.growth_mask
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        flags = new_element_flags(name, model.args)
        if flags is False:
            p.mul_(factor)
        elif flags is True:
            p.mul_(new_factor)
        else:
            rows, cols = (None if f is None else f.nonzero().flatten().to(p.device) for f in flags)
            saved_rows = p[rows].clone() if rows is not None else None
            saved_cols = p[:, cols].clone() if cols is not None else None
            p.mul_(factor)
            if saved_cols is not None:
                p[:, cols] = saved_cols * new_factor
            if saved_rows is not None:
                p[rows] = saved_rows * new_factor


# ---- growing the state -----------------------------------------------------------------------


def grow_param_state(plan: GrowthPlan, name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adam state of grown parameter `name` from its source's state (moments, step)."""
    tp = plan.tensors[name]
    out: dict[str, torch.Tensor] = {}
    for key in MOMENTS:
        if tp.fresh:
            out[key] = torch.zeros(tp.shape, dtype=state[key].dtype, device=state[key].device)
        else:
            moment = state[key].detach().cpu()
            grown = grow_tensor(tp, moment, name, new="zeros")
            out[key] = (grown.clone() if grown is moment else grown).to(state[key].device)
    step = state["step"]
    out["step"] = torch.zeros_like(step) if tp.fresh else step.clone()
    return out


def grow_optimizer_file(
    src: Path,
    dst: Path,
    plan: GrowthPlan,
    checksums: dict[str, str] | None = None,
    source_checksums: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Grow `optimizer.safetensors` tensor by tensor; returns a summary for the provenance.
    `checksums`: gets the written file's checksum, computed while writing (no read back);
    `source_checksums`: gets the source file's, computed from the bytes read (no second read)."""
    entries, _ = read_header(src)
    params = {k.split(".", 1)[1] for k in entries if k.startswith("step.")}
    known = set(plan.source.tensor_shapes())
    unknown = sorted(params - known)
    if unknown:
        raise CheckpointError(f"{src}: step.{unknown[0]}: not a parameter of the source model")
    for p in params:
        for key in MOMENTS:
            if f"{key}.{p}" not in entries:
                raise CheckpointError(f"{src}: {key}.{p} missing (step.{p} is present)")
    grown = [(n, tp) for n, tp in plan.tensors.items() if tp.source in params]
    specs = []
    for name, tp in grown:
        specs += [(f"{k}.{name}", torch.float32, tp.shape) for k in MOMENTS] + [(f"step.{name}", torch.float32, ())]
    writer = SafetensorsWriter(dst, specs)
    fd = open_sequential(src)
    hashed = SequentialHash(src, fd)
    fresh = 0
    try:
        for name, tp in grown:
            state = {}
            for k in (*MOMENTS, "step"):
                entry = entries[f"{k}.{tp.source}"]
                state[k] = read_tensor(entry, fd)
                feed_tensor(hashed, entry.offset, state[k])
            new = grow_param_state(plan, name, state)
            fresh += tp.fresh
            for key in (*MOMENTS, "step"):
                writer.write(f"{key}.{name}", new[key].float())
        if source_checksums is not None:
            source_checksums[src.name] = hashed.finish()
    finally:
        os.close(fd)
    checksum = writer.close()
    if checksums is not None:
        checksums[dst.name] = checksum
    return {"params": len(grown), "fresh": fresh}


def transfer_adamw(
    optimizer: torch.optim.Optimizer, old_model: Llama, new_model: Llama, provenance: dict[str, Any]
) -> torch.optim.AdamW:
    """A torch AdamW over `new_model` with the hyperparameters and grown state of `optimizer`.

    `provenance` is what `grow_model` returned for old_model -> new_model; parameter groups keep
    their settings and contain the grown counterparts of their parameters.
    """
    plan = plan_growth(old_model.args, GrowthTargets(**provenance["targets"]), provenance["depth_method"])
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    new_params = dict(new_model.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        members = {old_names[id(p)] for p in group["params"]}
        settings = {k: v for k, v in group.items() if k != "params"}
        params = [new_params[n] for n, tp in plan.tensors.items() if tp.source in members and n in new_params]
        groups.append({**settings, "params": params})
    new_opt = torch.optim.AdamW(groups)
    by_name = {n: p for n, p in old_model.named_parameters()}
    for name, tp in plan.tensors.items():
        if name not in new_params:
            continue
        state = optimizer.state.get(by_name[tp.source])
        if state:
            new_opt.state[new_params[name]] = grow_param_state(plan, name, state)
    return new_opt
