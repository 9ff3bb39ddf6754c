"""`ddp`: every rank holds the whole model; torch DDP all-reduces gradients during backward.

The small-model path (the tiny recipe, tests, single-GPU runs). Its checkpoint is the replicated
state written once by rank 0 (`model.safetensors`, `optimizer.safetensors` in the per-parameter
layout `motif grow` reads); any world size reads it back, since every rank needs all of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from motif.config import StageConfig
from motif.model import Llama
from motif.train import optimizer as optim
from motif.train.dist import World
from motif.train.engines import Snapshot, StepResult, held, loss_sums
from motif.train.slices import TensorReader, read_all, reading_threads, whole_reads, write_tensors
from motif.train.start import MOMENTS, MomentSource, WeightSource

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from motif.data.mixture import Batch
    from motif.storage.integrity import ReadVerifier

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def compile_blocks(model: Llama) -> None:
    """torch.compile each transformer block (torchtitan's choice): small graphs, compiled once, reused."""
    for block in model.model.layers:
        block.compile()


class DdpEngine:
    name: ClassVar[str] = "ddp"

    def __init__(
        self, stage: StageConfig, world: World, weights: WeightSource, moments: MomentSource, frozen: set[str]
    ):
        self.stage, self.world = stage, world
        args = weights.args
        self.model = Llama.from_state_dict(args, {n: weights.full(n) for n in weights.shapes}, world.device)
        self.bytes_read = weights.bytes_read
        for name, p in self.model.named_parameters():
            p.requires_grad_(name not in frozen)
        self.model.train()
        self.model.set_activation_checkpointing(stage.train.activation_checkpointing)
        if stage.train.compile:
            compile_blocks(self.model)
        self.ddp: DistributedDataParallel | None = None  # the DDP wrapper, in a process group
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # broadcast_buffers=False: the only buffers (RoPE tables, growth masks) are computed
            # identically on every rank; a broadcast per forward would only cost time.
            self.ddp = DDP(
                self.model,
                device_ids=[world.local_rank] if world.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.runner: torch.nn.Module = self.ddp if self.ddp is not None else self.model
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = optim.adamw([{"params": list(self.params.values())}], stage.optim, fused=True)
        for name, p in self.params.items():
            state = optim.init_state(self.optimizer, p, moments.step(name), fused=True)
            if moments.has(name):
                moments.check_shape(name, tuple(p.shape))
                for key in MOMENTS:
                    state[key].copy_(moments.full(key, name))
        self.bytes_read += moments.bytes_read
        self.autocast_dtype = torch.bfloat16 if stage.train.precision == "bf16" else None

    # ---- stepping --------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            logits: torch.Tensor = self.runner(tokens)
            return logits
        with torch.autocast(self.world.device.type, dtype=self.autocast_dtype):
            logits = self.runner(tokens)
            return logits

    def accumulate(self, last: bool) -> AbstractContextManager[None]:
        if self.ddp is not None and not last:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        (loss / grad_accum).backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        params = list(self.params.values())
        return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)

    def step(self, lr: float, finite: bool) -> StepResult:
        if finite:
            optim.set_lr(self.optimizer, lr)
            views = [(n, p.detach().view(-1), 0, tuple(p.shape)) for n, p in self.params.items() if p.grad is not None]
            optim.decay_(views, self.model.args, lr, self.stage.optim.weight_decay)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(stepped=finite)

    def trainable(self) -> list[str]:
        return list(self.params)

    # ---- checkpoints -------------------------------------------------------------------------

    def _optimizer_tensors(self, copy: bool) -> dict[str, torch.Tensor]:
        out = {}
        for name, p in self.params.items():
            state = self.optimizer.state[p]
            for key in MOMENTS:
                out[f"{key}.{name}"] = held(state[key], copy)
            out[f"step.{name}"] = held(state["step"].float(), copy).reshape(())
        return out

    def snapshot(self, copy: bool) -> Snapshot:
        """Rank 0 writes both files at once, on two threads (the writes release the GIL, and a
        volume takes two streams faster than one); returns their checksums, taken while writing."""
        if not self.world.is_main:
            return lambda directory: {}
        files = {
            MODEL_FILE: {k: held(v, copy) for k, v in self.model.state_dict().items()},
            OPTIMIZER_FILE: self._optimizer_tensors(copy),
        }

        def write(directory: Path) -> dict[str, str]:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(files)) as pool:
                sums = {name: pool.submit(write_tensors, directory / name, tensors) for name, tensors in files.items()}
            return {name: future.result() for name, future in sums.items()}

        return write

    def load(self, directory: Path, verifier: ReadVerifier) -> None:
        """Every rank reads both files (each holds them whole), in file order on as many threads as it
        has cores to itself, cut by bytes (the optimizer file is twice the model's); each file is
        hashed on the way by one rank only (the others leave it to that rank's checksum)."""
        files = [directory / MODEL_FILE, directory / OPTIMIZER_FILE]
        readers = []
        try:
            for f, hashes in zip(files, verifier.share(files, self.world.rank, self.world.world_size), strict=True):
                readers.append(TensorReader.file(f, hashes))
            reads = [read for reader in readers for read in whole_reads(reader, self._tensors_of(reader))]
            read_all(reads, reading_threads(self.stage.parallel.procs_per_node))
        finally:
            for reader in readers:
                reader.close()

    def _tensors_of(self, reader: TensorReader) -> list[tuple[str, torch.Tensor]]:
        """The memory each tensor of a checkpoint file is read into: the parameters, or Adam's state."""
        if Path(reader.source).name == MODEL_FILE:
            return [(key, p.data) for key, p in self.model.named_parameters()]
        out = []
        for key, p in self.params.items():
            state = self.optimizer.state[p]
            out += [(f"{m}.{key}", state[m]) for m in (*MOMENTS, "step")]
        return out

    # ---- the stage's output --------------------------------------------------------------------

    def full_tensors(self, frozen: WeightSource, carried: MomentSource) -> Iterator[tuple[str, torch.Tensor | None]]:
        main = self.world.is_main
        params = dict(self.model.named_parameters())
        for name in self.model.args.tensor_shapes():
            yield name, params[name].detach() if main else None
        for name in self.model.args.tensor_shapes():
            if name in self.params:
                state = self.optimizer.state[self.params[name]]
                for key in MOMENTS:
                    yield f"{key}.{name}", state[key] if main else None
                yield f"step.{name}", state["step"].float().reshape(()) if main else None
            elif carried.has(name):  # frozen here: its moments pass through to the next stage
                for key in MOMENTS:
                    yield f"{key}.{name}", carried.full(key, name) if main else None
                yield f"step.{name}", torch.tensor(carried.step(name)) if main else None

    def input_loss(self, checkpoint: str, batches: list[Batch]) -> torch.Tensor:
        from motif.model.checkpoint import load

        model = load(checkpoint, dtype=torch.float32, device=self.world.device)
        return loss_sums(model, batches, self.world.device)

    def close(self) -> None:
        pass
