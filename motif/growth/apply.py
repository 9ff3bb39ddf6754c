"""Growth of an in-memory model: the plan applied tensor by tensor to a state dict."""

from __future__ import annotations

from typing import Any

import torch

from motif.growth.operators import GrowthPlan, plan_growth
from motif.growth.provenance import make_provenance
from motif.growth.targets import GrowthTargets
from motif.growth.tensors import grow_tensor
from motif.model.model import Llama


@torch.no_grad()
def grow_model(
    model: Llama, targets: GrowthTargets, depth_method: str = "llamapro", seed: int = 0
) -> tuple[Llama, dict[str, Any]]:
    """A new, grown `Llama` (same dtype, device and train/eval mode) and its provenance.

    The grown model computes exactly the source's function: LlamaPro blocks are identities, and MSG
    parts are masked with m = 0 (`model.growth_mask`).
    """
    plan = plan_growth(model.args, targets, depth_method)
    return apply_plan(model, plan, seed), make_provenance(plan, targets, depth_method, seed)


@torch.no_grad()
def apply_plan(model: Llama, plan: GrowthPlan, seed: int = 0) -> Llama:
    """The grown model a plan describes (any composition of `OPERATORS`), from `model`'s weights."""
    state = model.state_dict()
    device = state["model.embed_tokens.weight"].device
    grown = {}
    for name, tp in plan.tensors.items():
        source = state[tp.source].detach().cpu()
        out = grow_tensor(tp, source, name, seed)
        grown[name] = (out.clone() if out is source else out).to(device)
    new = Llama.from_state_dict(plan.args, grown, device)
    new.set_activation_checkpointing(model.activation_checkpointing)
    return new.train(model.training)
