"""Growth operators (LlamaPro depth, Masked Structure Growth depth and width) and their drivers.

grow_model(model, targets)        an in-memory Llama -> a grown Llama (+ provenance)
grow_checkpoint(src, dst, ...)    a checkpoint on disk -> a grown one, streamed tensor by tensor
grow_stage(stage)                 the growth step of a stage file (idempotent)
OPERATORS                         name -> pure operator on a growth plan
"""

from motif.growth.apply import grow_model
from motif.growth.operators import OPERATORS, GrowthPlan, plan_growth
from motif.growth.optim import masked_weight_decay_, transfer_adamw
from motif.growth.stage import grow_stage
from motif.growth.stream import grow_checkpoint
from motif.growth.targets import GrowthTargets

__all__ = [
    "OPERATORS",
    "GrowthPlan",
    "GrowthTargets",
    "grow_checkpoint",
    "grow_model",
    "grow_stage",
    "masked_weight_decay_",
    "plan_growth",
    "transfer_adamw",
]
