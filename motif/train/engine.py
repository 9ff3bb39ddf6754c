"""How the model is replicated and stepped: one process, torch DDP, or DeepSpeed ZeRO.

The trainer talks to an `Engine` only: `forward`, `backward`, `clip_grad_norm`, `step`, and the
model/optimizer state for checkpoints. Engines are registered by name (`parallel.engine`).

Optimizer state on disk, whatever the engine, is the per-parameter layout `motif grow` reads and
grows (METHODS 4): `exp_avg.<name>`, `exp_avg_sq.<name>` (fp32, the parameter's shape) and
`step.<name>` (0-d fp32) in `optimizer.safetensors`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from motif.config import StageConfig
from motif.errors import CheckpointError
from motif.train.dist import World

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"
MODEL_FILE = "model.safetensors"


def build_optimizer(params: list[torch.nn.Parameter], stage: StageConfig) -> torch.optim.AdamW:
    o = stage.optim
    # weight_decay=0: decay is applied by `masked_weight_decay_`, scaled by the growth mask, so
    # weights that a mask still hides (and that get no gradient) are not shrunk toward zero.
    # fused: one kernel per parameter group (CPU and CUDA); elementwise, so still bit-reproducible.
    return torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=0.0, fused=True)


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's Adam moments in the per-parameter on-disk layout."""
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if not state:
            continue
        out[f"exp_avg.{name}"] = state["exp_avg"].detach().float().cpu().contiguous()
        out[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().float().cpu().contiguous()
        out[f"step.{name}"] = torch.as_tensor(state["step"], dtype=torch.float32).detach().cpu().reshape(())
    return out


def load_optimizer_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], source: str
) -> int:
    """Put per-parameter moments into `optimizer`; returns how many parameters got state."""
    loaded = 0
    for name, p in model.named_parameters():
        if p not in optimizer.state and not any(p is q for g in optimizer.param_groups for q in g["params"]):
            continue
        key = f"exp_avg.{name}"
        if key not in tensors:
            continue
        m, v = tensors[key], tensors[f"exp_avg_sq.{name}"]
        if m.shape != p.shape or v.shape != p.shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(m.shape)}, the parameter has {tuple(p.shape)} "
                "(was the optimizer state grown with the checkpoint? `motif grow` does both)"
            )
        # `tensors` are fresh buffers read from the file (no mmap views), owned by nobody else: the
        # optimizer can keep them as they are, without another copy.
        optimizer.state[p] = {
            "step": tensors[f"step.{name}"].float().reshape(()).clone(),
            "exp_avg": m.to(device=p.device, dtype=torch.float32).contiguous(),
            "exp_avg_sq": v.to(device=p.device, dtype=torch.float32).contiguous(),
        }
        loaded += 1
    return loaded


class Engine:
    """One process, or torch DDP across processes (gradients all-reduced in buckets during backward)."""

    name = "ddp"

    def __init__(self, model: torch.nn.Module, stage: StageConfig, world: World, compile: bool = False):
        self.module = model
        self.stage = stage
        self.world = world
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, stage)
        runner = model
        if compile:
            runner = torch.compile(model)
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # broadcast_buffers=False: the only buffers (RoPE tables, growth masks) are computed
            # identically on every rank; a broadcast per forward would only cost time.
            runner = DDP(
                runner,
                device_ids=[world.local_rank] if world.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.runner = runner
        self.carried: dict[str, torch.Tensor] = {}
        self.steps_taken = 0
        self.autocast_dtype = torch.bfloat16 if stage.train.precision == "bf16" else None

    # ---- stepping --------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.runner(tokens)
        with torch.autocast(self.world.device.type, dtype=self.autocast_dtype):
            return self.runner(tokens)

    def accumulate(self, last: bool):
        """Context for one micro-batch: gradients are all-reduced only on the last one."""
        if self.world.distributed and not last:
            return self.runner.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        (loss / grad_accum).backward()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self, lr: float) -> float | None:
        self.set_lr(lr)
        wd = self.stage.optim.weight_decay
        if wd and self.module.args.growth is None:
            # No mask pending: plain decoupled decay, one foreach call (what AdamW itself does).
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            with torch.no_grad():
                torch._foreach_mul_(params, 1.0 - lr * wd)
        elif wd:
            from motif.growth.optim import masked_weight_decay_

            masked_weight_decay_(self.module, lr, wd)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return None

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # ---- state -------------------------------------------------------------------------------

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """Per-parameter moments: the trained parameters', plus those carried unchanged for frozen ones."""
        return {**self.carried, **optimizer_tensors(self.module, self.optimizer)}

    def final_state(self) -> tuple[torch.nn.Module | None, dict[str, torch.Tensor] | None]:
        """The model and optimizer tensors for the stage's output, on rank 0 (None elsewhere)."""
        if not self.world.is_main:
            return None, None
        return self.module, self.optimizer_state()

    def save(self, directory: Path) -> None:
        """Model + optimizer files of a training checkpoint (replicated state: rank 0 writes)."""
        if not self.world.is_main:
            return
        save_file(self.model_state(), str(directory / MODEL_FILE))
        save_file(self.optimizer_state(), str(directory / OPTIMIZER_FILE))

    def load(self, directory: Path) -> None:
        state = load_file(str(directory / MODEL_FILE), device=str(self.world.device))
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{directory}: model weights do not match the model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.load_optimizer(directory / OPTIMIZER_FILE)

    def load_optimizer(self, path: Path) -> int:
        tensors = load_file(str(path))
        trained = {n for n, p in self.module.named_parameters() if p.requires_grad}
        # Moments of frozen parameters pass through this stage unchanged, for the next one.
        self.carried = {k: v for k, v in tensors.items() if k.split(".", 1)[1] not in trained}
        return load_optimizer_tensors(self.module, self.optimizer, tensors, str(path))


ENGINES: dict[str, type[Engine]] = {"ddp": Engine, "none": Engine}


def make_engine(model: torch.nn.Module, stage: StageConfig, world: World) -> Engine:
    name = stage.parallel.engine
    if name == "deepspeed":
        from motif.train.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, stage, world)
    if name not in ENGINES:
        from motif.errors import MotifError

        raise MotifError(f"motif.parallel.engine: {name!r} is not available in motif train (use ddp or deepspeed)")
    return ENGINES[name](model, stage, world, compile=stage.train.compile)
