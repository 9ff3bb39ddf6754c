"""Engines: how the model is laid out over the ranks and stepped, chosen by name (`parallel.engine`).

    ddp        replicated weights, gradients all-reduced by torch DDP: small models (tiny recipe, tests)
    fsdp       PyTorch FSDP2, as torchtitan trains Llama 3: every block `fully_shard`ed, then the root;
               weights, gradients and Adam state sharded over the ranks (HSDP with `replicate`)
    deepspeed  DeepSpeed ZeRO-3: the same sharding, by DeepSpeed (`zero.Init`, partitioned Adam)

The sharded engines keep one memory contract in every phase (docs/training.md): no rank ever holds
more than its 1/W share of weights, gradients and Adam state, plus a bounded working set. The model
is built without storage and each rank reads from the start checkpoint only the bytes of its own
shards; a checkpoint is each rank writing its own shard; the stage's output is written tensor by
tensor (one whole tensor gathered at a time).

Every engine is growth-aware in the same way: Adam moments carried from the previous stage are put
into its (sharded) state before the first step, decay spares the elements an MSG mask hides, a
non-finite step can be skipped, and the loss of the un-grown input on the first batch is computed
with the same sharding.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from motif.errors import MotifError

if TYPE_CHECKING:
    from motif.config import StageConfig
    from motif.data.mixture import Batch
    from motif.model import Llama
    from motif.storage.integrity import ReadVerifier
    from motif.train.dist import World
    from motif.train.start import MomentSource, WeightSource


@dataclass
class StepResult:
    stepped: bool  # false: the step was skipped (a non-finite loss or gradient)
    grad_norm: float | None = None  # the global norm, for engines that measure it inside the step


# The writer of one rank's checkpoint files, as of the step it was taken at (`Engine.snapshot`):
# writes them into a directory and returns {name relative to it: checksum taken while writing}.
Snapshot = Callable[[Path], dict[str, str]]


def held(tensor: torch.Tensor, copy: bool) -> torch.Tensor:
    """`tensor` as a checkpoint writes it. With `copy`, a host copy of its own (an asynchronous write
    reads it while the next steps change the original; from a GPU it is the copy to host memory
    torchtitan stages); without, the tensor itself, which the writer moves to the host one at a time."""
    t = tensor.detach()
    return t.to("cpu", copy=True) if copy else t


def loss_sums(
    forward: Callable[[torch.Tensor], torch.Tensor], batches: list[Batch], device: torch.device
) -> torch.Tensor:
    """[loss sum, token count] of `forward` (tokens -> logits) on `batches`, without gradients."""
    import torch.nn.functional as F

    sums = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            logits = forward(batch.inputs.to(device))
            t = batch.targets.to(device)
            sums[0] += F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), reduction="sum").double()
            sums[1] += t.numel()
    return sums


class Engine(Protocol):
    """What the trainer asks of an engine."""

    name: ClassVar[str]
    model: Llama  # the (possibly sharded) module: its args and growth masks are the model's
    bytes_read: int  # bytes this rank read from the start checkpoint and its optimizer state

    def __init__(
        self, stage: StageConfig, world: World, weights: WeightSource, moments: MomentSource, frozen: set[str]
    ) -> None:
        """Build the model laid out over the ranks, holding the start weights and carried moments;
        the parameters named in `frozen` do not train. Every engine is built so (`build_engine`)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V]. Collective on the sharded engines: every rank calls it as often."""

    def accumulate(self, last: bool) -> AbstractContextManager[None]:
        """Context of one micro-batch: gradients are reduced on the last one only."""

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None: ...

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor | None:
        """Clip and return the global gradient norm, or None if the engine clips inside `step`."""

    def step(self, lr: float, finite: bool) -> StepResult:
        """Apply the optimizer step, or skip it when `finite` is false (or the engine finds the gradient
        non-finite itself)."""

    def trainable(self) -> list[str]:
        """Names of the parameters this stage trains."""

    def snapshot(self, copy: bool) -> Snapshot:
        """This rank's part of the weights and Adam state of a training checkpoint, ready to write:
        called between steps, it returns the writer of those files, which returns the checksums of the
        files it hashed while writing them ({name relative to the directory: checksum}). `copy`: the
        tensors are copies (host memory), so the writer may run while training goes on; without it,
        the writer reads the live state and must run before the next step."""

    def load(self, directory: Path, verifier: ReadVerifier) -> None:
        """Read this rank's part of a checkpoint written by any world size, feeding `verifier` the
        bytes of each file it reads (so their checksums cost no second pass)."""

    def full_tensors(self, frozen: WeightSource, carried: MomentSource) -> Iterator[tuple[str, torch.Tensor | None]]:
        """Collective: every weight, then every Adam tensor (`exp_avg.<name>` ...), whole, in
        checkpoint order, one at a time; the tensor on rank 0, None elsewhere."""

    def input_loss(self, checkpoint: str, batches: list[Batch]) -> torch.Tensor:
        """[loss sum, token count] of the un-grown input model on `batches`, sharded like this engine."""

    def close(self) -> None: ...


# The registry: engine name -> its class, imported on use (so `ddp` never imports DeepSpeed).
ENGINES: dict[str, str] = {
    "ddp": "motif.train.engines.ddp:DdpEngine",
    "fsdp": "motif.train.engines.fsdp:FsdpEngine",
    "deepspeed": "motif.train.engines.deepspeed:DeepSpeedEngine",
}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise MotifError(f"motif.parallel.engine: {name!r} is not an engine (expected one of: {', '.join(ENGINES)})")
    module, cls = ENGINES[name].split(":")
    engine: type[Engine] = getattr(importlib.import_module(module), cls)
    return engine


def build_engine(
    stage: StageConfig, world: World, weights: WeightSource, moments: MomentSource, frozen: set[str]
) -> Engine:
    """The engine `stage.parallel.engine` names, with the model built and its start state loaded."""
    return engine_class(stage.parallel.engine)(stage, world, weights, moments, frozen)
