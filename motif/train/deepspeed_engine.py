"""DeepSpeed ZeRO (stages 0-3) behind the trainer's `Engine` interface: the path of the 102B recipe.

DeepSpeed owns gradient accumulation, clipping and the fp32 master weights (partitioned across
ranks from ZeRO-1 on), so this engine drives `engine.backward`/`engine.step` for every micro-batch
and reads the gradient norm after the step. Checkpoints stay pickle-free: each rank writes its
ZeRO optimizer partition as safetensors plus a JSON skeleton (`motif.train.state`), and resumes
with the same world size. The stage's final output gathers full fp32 weights and Adam moments
per parameter (`safe_get_full_*`), in the same layout the DDP engine writes.

Differences from the DDP engine (docs/training.md): decay is AdamW's own (the fp32 master copy
lives in DeepSpeed, out of `masked_weight_decay_`'s reach), moments carried from the previous
stage are not loaded at the start (ZeRO creates its flat optimizer state lazily), and Adam's step
count is one per flat group, not per tensor.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from motif.config import StageConfig
from motif.errors import MotifError
from motif.train.dist import World
from motif.train.engine import MODEL_FILE, Engine, optimizer_tensors
from motif.train.state import load_state, save_state

log = logging.getLogger(__name__)

# Parts of a ZeRO optimizer state dict that are objects (loss scaler, fragment maps for universal
# checkpoints): not needed to resume fp32/bf16 training with the same world size.
_DROP = ("loss_scaler", "param_slice_mappings", "param_slice_mappings_ds_autotp")


def ds_config(stage: StageConfig) -> dict:
    t, o = stage.train, stage.optim
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": stage.parallel.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, stage: StageConfig, world: World):
        import deepspeed

        if stage.train.nan_policy == "skip":
            raise MotifError("motif.train.nan_policy: skip is not available with engine deepspeed (use stop)")
        if stage.train.compile:
            raise MotifError("motif.train.compile: not available with engine deepspeed (use engine ddp)")
        self.module = model
        self.stage = stage
        self.world = world
        self.carried = {}
        o = stage.optim
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay, foreach=True
        )
        self.runner, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config(stage), dist_init_required=False
        )
        self.autocast_dtype = None  # DeepSpeed casts the module itself
        self.last_grad_norm: float | None = None
        self.steps_taken = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.runner(tokens)

    def accumulate(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        self.runner.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        if not self.runner.is_gradient_accumulation_boundary():
            self.runner.step()  # only advances DeepSpeed's micro-step counter

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        # DeepSpeed clips inside step(); from ZeRO-1 on the norm is known only after it. Under ZeRO-0
        # the gradients are whole and already all-reduced here: measure them (without clipping).
        if self.stage.parallel.zero_stage == 0:
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            return torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        return torch.zeros(())

    def step(self, lr: float) -> float | None:
        self.set_lr(lr)
        self.runner.step()
        self.steps_taken += 1
        if self.stage.parallel.zero_stage == 0:
            return None  # measured before the step
        norm = self.runner.get_global_grad_norm()
        self.last_grad_norm = None if norm is None else float(norm)
        return self.last_grad_norm

    def skip_step(self) -> None:
        raise MotifError("non-finite step with engine deepspeed: nan_policy stop is the only policy")

    # ---- state -------------------------------------------------------------------------------

    def _gathered(self):
        if self.stage.parallel.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def model_state(self) -> dict[str, torch.Tensor]:
        with self._gathered():
            return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v for k, v in self.optimizer.state_dict().items() if k not in _DROP}
        save_state(state, directory / f"zero_rank_{self.world.rank:05d}")
        model = self.model_state()  # collective under ZeRO-3
        if self.world.is_main:
            save_file(model, str(directory / MODEL_FILE))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        states = [load_state(directory / f"zero_rank_{r:05d}") for r in range(self.world.world_size)]
        if isinstance(self.optimizer, torch.optim.Optimizer):  # ZeRO-0 in fp32: the torch optimizer itself
            self.optimizer.load_state_dict(states[self.world.rank])
        else:
            for state in states:  # the objects left out at save time, as this run has them
                state.setdefault("loss_scaler", getattr(self.optimizer, "loss_scaler", None))
            # The fp32 master partitions come from the checkpoint...
            self.optimizer.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)
        # ...but DeepSpeed refreshes the module's (compute) copy only after the next step: load it too.
        weights = load_file(str(directory / MODEL_FILE))
        dtype = next(self.module.parameters()).dtype
        if self.stage.parallel.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=0):
                if self.world.is_main:
                    self._copy_in(weights, dtype)
        else:
            self._copy_in(weights, dtype)

    @torch.no_grad()
    def _copy_in(self, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        for name, p in self.module.named_parameters():
            p.data.copy_(weights[name].to(dtype))  # in place: the parameters are views of DeepSpeed's buffers

    def load_optimizer(self, path: Path) -> int:
        log.warning(
            "engine deepspeed: Adam moments in %s are not carried into ZeRO's flat optimizer state; they start at zero",
            path,
        )
        return 0

    def final_state(self):
        """Full fp32 weights and per-parameter moments, gathered on every rank (collective)."""
        weights = self.model_state()
        if isinstance(self.optimizer, torch.optim.Optimizer):  # ZeRO-0 in fp32: whole tensors already
            optimizer = optimizer_tensors(self.module, self.optimizer)
        else:
            optimizer = self._gather_partitions(weights)
        if not self.world.is_main:
            return None, None
        from motif.model import Llama

        return Llama.from_state_dict(self.module.args, weights, "cpu"), optimizer

    def _gather_partitions(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """fp32 master weights (into `weights`) and Adam moments of the trained parameters, from ZeRO's partitions."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        optimizer = {}
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            full = safe_get_full_fp32_param(p)
            if full is not None:
                weights[name] = full.detach().float().cpu().clone()
            for key in ("exp_avg", "exp_avg_sq"):
                value = safe_get_full_optimizer_state(p, key)
                if value is not None:
                    optimizer[f"{key}.{name}"] = value.detach().float().cpu().clone()
            if f"exp_avg.{name}" in optimizer:
                optimizer[f"step.{name}"] = torch.tensor(float(self.steps_taken))
        return optimizer
