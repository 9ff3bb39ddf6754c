"""Learning-rate schedule: linear warm-up, then cosine decay to `min_lr` at `max_steps`.

A growth event re-warms the learning rate (MSG): the stage's growth happens before its first step,
so in a stage that grows the warm-up at step 0 lasts `optim.rewarm_steps` when that is set, and
`optim.warmup_steps` otherwise. The function is pure in the step, so a resumed run needs no
scheduler state beyond the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from motif.config import OptimConfig


@dataclass(frozen=True)
class Schedule:
    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int

    @classmethod
    def from_config(cls, optim: OptimConfig, max_steps: int, grows: bool) -> Schedule:
        warmup = optim.rewarm_steps if grows and optim.rewarm_steps > 0 else optim.warmup_steps
        return cls(optim.lr, optim.min_lr, warmup, max_steps)

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            # (step + 1): the first step already moves the weights.
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def mask_value(step: int, ramp_steps: int) -> float:
    """MSG mask m after `step` optimizer steps: linear 0 -> 1 over `ramp_steps`, then 1."""
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, step / ramp_steps)
