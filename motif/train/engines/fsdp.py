"""`fsdp`: PyTorch FSDP2, the way torchtitan trains Llama 3.

- **Build without storage.** The model is made on the meta device, every transformer block is
  `fully_shard`ed, then the root; only then does each rank allocate its shards (`to_empty`) and
  read into them its rows of every tensor (`Shard(0)`), from the start checkpoint's safetensors.
- **Mixed precision** on bf16 stages: bf16 compute copies of the gathered blocks, fp32 sharded
  master weights, gradients reduced in fp32. fp32 stages compute in fp32.
- **HSDP** with `parallel.replicate = R > 1`: a 2-D mesh (R replicas x W/R shards), so the
  forward's all-gathers stay inside a shard group (a node) and only the gradient reduction
  crosses the replicas.
- **Checkpoints through torch.distributed.checkpoint** with its Hugging Face storage: each rank
  writes its own shards as safetensors (the shard offsets in the safetensors header, JSON), and a
  load reads the pieces it needs from whichever files hold them, so a job resumed on another
  world size reshards natively. No pickle is written or read. Frozen weights (LlamaPro's original
  blocks) are not checkpointed: they are the start checkpoint's, read again on resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch.distributed.tensor import DTensor

from motif.config import StageConfig
from motif.model import Llama, ModelArgs
from motif.train import optimizer as optim
from motif.train.dist import World
from motif.train.engines import StepResult, loss_sums
from motif.train.engines.ddp import compile_blocks
from motif.train.start import MOMENTS, MomentSource, WeightSource

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from motif.data.mixture import Batch
    from motif.storage.integrity import ReadVerifier

CHECKPOINT_DIR = "fsdp"  # the DCP directory inside a training checkpoint


FILES_PER_RANK = 8  # DCP files each rank writes per checkpoint (see `_file_of`)


def _file_of(state: dict[str, torch.Tensor], layers: int) -> dict[str, int]:
    """DCP file index (1-based) of every key: the blocks in 7 runs of consecutive blocks, the rest in file 1.

    DCP's safetensors writer builds a whole file in memory before writing it, and every rank reads
    every file's header when a checkpoint is loaded: 8 files per rank keep the first transient at
    1/8 of a rank's state and the second at 8 x world_size small reads.
    """
    runs = FILES_PER_RANK - 1
    out = {}
    for key in state:
        parts = key.split(".")
        out[key] = 2 + int(parts[parts.index("layers") + 1]) * runs // layers if "layers" in parts else 1
    return out


def device_mesh(stage: StageConfig, world: World) -> DeviceMesh:
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import init_device_mesh

    replicate = stage.parallel.replicate
    # The mesh's rank table is bookkeeping read back as Python ints: it is made of real tensors even
    # when the step runs on fake ones (`motif simulate`), where reading a fake tensor's values fails.
    with unset_fake_temporarily():
        if replicate > 1:
            return init_device_mesh(
                world.device.type, (replicate, world.world_size // replicate), mesh_dim_names=("replicate", "shard")
            )
        return init_device_mesh(world.device.type, (world.world_size,), mesh_dim_names=("shard",))


def local_rows(p: DTensor) -> tuple[int, int]:
    """The rows [start, stop) of the full tensor that this rank's shard of `p` holds.

    Plain arithmetic on the mesh coordinate (torch.chunk's split: ceil(rows / n) per rank, the last
    ones shorter or empty), so it also holds for fake tensors, whose values cannot be read.
    """
    if len(p.shape) == 0:
        return 0, 1
    mesh, coordinate = p.device_mesh, p.device_mesh.get_coordinate()
    assert coordinate is not None  # None only for a rank outside the mesh, and the mesh is every rank
    start, stop = 0, p.shape[0]
    for dim, placement in enumerate(p.placements):
        if placement.is_shard(0):
            rows, n = stop - start, mesh.size(dim)
            chunk = -(-rows // n)
            start, stop = start + min(coordinate[dim] * chunk, rows), start + min((coordinate[dim] + 1) * chunk, rows)
    return start, stop


def sharded_llama(
    args: ModelArgs, stage: StageConfig, world: World, mesh: DeviceMesh, weights: WeightSource, frozen: set[str]
) -> Llama:
    """A Llama sharded with FSDP2 and holding the start weights, built without ever allocating it whole."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    with torch.device("meta"):
        model = Llama(args)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    model.set_activation_checkpointing(stage.train.activation_checkpointing)
    if stage.train.compile:
        compile_blocks(model)
    mp = None
    if stage.train.precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    policy = mp or MixedPrecisionPolicy()
    # As torchtitan: the embedding, each block, and the final norm with the head are their own
    # groups, so at most one of them is gathered at a time (the root alone would keep embedding and
    # head whole from the forward to the end of the backward).
    if not args.tie_word_embeddings:
        fully_shard(model.model.embed_tokens, mesh=mesh, mp_policy=policy)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if not args.tie_word_embeddings:
        fully_shard([model.model.norm, model.lm_head], mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=world.device)
    model.init_buffers(world.device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            start, stop = local_rows(p)
            local = p.to_local()
            if local.numel():
                row = math.prod(p.shape[1:])
                weights.flat_into(name, start * row, stop * row, local.view(-1))
    return model


class FsdpEngine:
    name: ClassVar[str] = "fsdp"

    def __init__(
        self, stage: StageConfig, world: World, weights: WeightSource, moments: MomentSource, frozen: set[str]
    ):
        self.stage, self.world = stage, world
        self.mesh = device_mesh(stage, world)
        self.model = sharded_llama(weights.args, stage, world, self.mesh, weights, frozen)
        self.model.train()
        # Parameters are taken before the first forward: FSDP2's root keeps its parameters unsharded
        # between a forward and its backward, and those are not the ones to optimize.
        self.sharded = dict(self.model.named_parameters())
        self.params = {n: p for n, p in self.sharded.items() if p.requires_grad}
        self.optimizer = optim.adamw([{"params": list(self.params.values())}], stage.optim, fused=True)
        with torch.no_grad():
            for name, p in self.params.items():
                state = optim.init_state(self.optimizer, p, moments.step(name), fused=True)
                if moments.has(name):
                    moments.check_shape(name, tuple(p.shape))
                    start, stop = local_rows(p)
                    for key in MOMENTS:
                        local = cast(DTensor, state[key]).to_local()  # made like `p`: a DTensor
                        if local.numel():
                            row = math.prod(p.shape[1:])
                            moments.flat_into(key, name, start * row, stop * row, local.view(-1))
        self.bytes_read = weights.bytes_read + moments.bytes_read

    # ---- stepping --------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(tokens)
        if not torch.is_grad_enabled():
            self.model.reshard()  # the root reshards after its backward; without one, do it now
        return logits

    def accumulate(self, last: bool) -> AbstractContextManager[None]:
        # Gradients are reduce-scattered after every micro-batch: holding unsharded gradients
        # across micro-batches would break the memory contract.
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        (loss / grad_accum).backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        params = list(self.params.values())
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
        if isinstance(norm, DTensor):
            full: torch.Tensor = norm.full_tensor()
            return full
        return norm

    def step(self, lr: float, finite: bool) -> StepResult:
        if finite:
            optim.set_lr(self.optimizer, lr)
            optim.decay_(self._local_views(), self.model.args, lr, self.stage.optim.weight_decay)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(stepped=finite)

    def _local_views(self) -> Iterator[tuple[str, torch.Tensor, int, tuple[int, ...]]]:
        for name, p in self.params.items():
            if p.grad is None:
                continue
            start, _ = local_rows(p)
            yield name, p.detach().to_local().view(-1), start * math.prod(p.shape[1:]), tuple(p.shape)

    def trainable(self) -> list[str]:
        return list(self.params)

    # ---- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict[str, torch.Tensor]:
        """The DCP state: trained weights, their moments and step counts (sharded DTensors, no copies)."""
        out = {}
        for name, p in self.params.items():
            state = self.optimizer.state[p]
            out[name] = p
            out[f"exp_avg.{name}"] = state["exp_avg"]
            out[f"exp_avg_sq.{name}"] = state["exp_avg_sq"]
            out[f"step.{name}"] = state["step"]
        return out

    def save(self, directory: Path) -> dict[str, str]:
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
        from torch.distributed.checkpoint.state_dict_saver import save

        state = self._state()
        files = _file_of(state, self.model.args.num_hidden_layers)
        writer = HuggingFaceStorageWriter(
            str(directory / CHECKPOINT_DIR), fqn_to_index_mapping=files, save_distributed=True
        )
        save(state, storage_writer=writer)
        return {}  # DCP's files: the checkpoint manager hashes them, each rank a share

    def load(self, directory: Path, verifier: ReadVerifier) -> None:
        # DCP reads the files itself: the checkpoint manager verifies them after this, in a pass of their own.
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
        from torch.distributed.checkpoint.state_dict_loader import load

        load(self._state(), storage_reader=HuggingFaceStorageReader(str(directory / CHECKPOINT_DIR)))

    # ---- the stage's output --------------------------------------------------------------------

    def full_tensors(self, frozen: WeightSource, carried: MomentSource) -> Iterator[tuple[str, torch.Tensor | None]]:
        main = self.world.is_main
        shapes = self.model.args.tensor_shapes()
        for name in shapes:
            full = self.sharded[name].full_tensor()  # collective: one whole tensor at a time
            yield name, full if main else None
            del full
        for name in shapes:
            if name in self.params:
                state = self.optimizer.state[self.params[name]]
                for key in MOMENTS:
                    full = state[key].full_tensor()
                    yield f"{key}.{name}", full if main else None
                    del full
                yield f"step.{name}", state["step"].float().reshape(()) if main else None
            elif carried.has(name):
                for key in MOMENTS:
                    yield f"{key}.{name}", carried.full(key, name) if main else None
                yield f"step.{name}", torch.tensor(carried.step(name)) if main else None

    def input_loss(self, checkpoint: str, batches: list[Batch]) -> torch.Tensor:
        """The un-grown input, sharded the same way (1/W of it per rank), on this rank's batches."""
        from motif.model.checkpoint import read_args

        with WeightSource.open(read_args(checkpoint), checkpoint, seed=0) as source:
            model = sharded_llama(source.args, self.stage, self.world, self.mesh, source, frozen=set(source.shapes))
        model.eval()
        sums = loss_sums(model, batches, self.world.device)
        del model
        return sums

    def close(self) -> None:
        pass
