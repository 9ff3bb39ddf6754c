"""Growth operators (LlamaPro depth, Masked Structure Growth depth and width) and their drivers.

grow_model(model, targets)        an in-memory Llama -> a grown Llama (+ provenance)
grow_checkpoint(src, dst, ...)    a checkpoint on disk -> a grown one, streamed tensor by tensor
grow_stage(stage)                 the growth step of a stage file (idempotent)
OPERATORS                         name -> pure operator on a growth plan

Names are imported on first use (PEP 562): the config needs `motif.growth.targets` alone, without
the operators and torch.
"""

from motif.lazy import lazy_exports

_EXPORTS = {
    "grow_model": "motif.growth.apply",
    "OPERATORS": "motif.growth.operators",
    "GrowthPlan": "motif.growth.operators",
    "plan_growth": "motif.growth.operators",
    "masked_weight_decay_": "motif.growth.optimizer_state",
    "transfer_adamw": "motif.growth.optimizer_state",
    "grow_stage": "motif.growth.stage",
    "grow_checkpoint": "motif.growth.streamed",
    "GrowthTargets": "motif.growth.targets",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
