"""`fsdp`: PyTorch FSDP2, the way torchtitan trains Llama 3.

- **Build without storage.** The model is made on the meta device, every transformer block is
  `fully_shard`ed, then the root; only then does each rank allocate its shards (`to_empty`) and
  read into them its rows of every tensor (`Shard(0)`), from the start checkpoint's safetensors.
- **Mixed precision** on bf16 stages: bf16 compute copies of the gathered blocks, fp32 sharded
  master weights, gradients reduced in fp32. fp32 stages compute in fp32.
- **HSDP** with `parallel.replicate = R > 1`: a 2-D mesh (R replicas x W/R shards), so the
  forward's all-gathers stay inside a shard group (a node) and only the gradient reduction
  crosses the replicas.
- **Checkpoints in torch.distributed.checkpoint's Hugging Face layout**, written and read here
  directly: each rank streams its shards into one safetensors file, hashed as it is written, with
  each shard's first row in DCP's header metadata; a load reads, straight into each shard, the
  rows it needs from whichever files hold them (a job resumed on another world size reshards),
  in file order so the checksums are taken on the way. DCP's own reader loads these files too
  (tested). Going through DCP itself cost a planning round, a whole file built in memory before
  it is written and a read-back to hash it: 4-6x a plain copy (docs/benchmarks.md). No pickle is
  written or read. Frozen weights (LlamaPro's original blocks) are not checkpointed: they are the
  start checkpoint's, read again on resume.
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
from motif.errors import CheckpointError
from motif.model import Llama, ModelArgs
from motif.train import optimizer as optim
from motif.train.dist import World
from motif.train.engines import Snapshot, StepResult, held, loss_sums
from motif.train.engines.ddp import compile_blocks
from motif.train.start import MOMENTS, MomentSource, WeightSource

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from motif.data.mixture import Batch
    from motif.storage.integrity import ReadVerifier
    from motif.train.slices import TensorReader

CHECKPOINT_DIR = "fsdp"  # the DCP directory inside a training checkpoint


# DCP's Hugging Face layout, kept so `torch.distributed.checkpoint`'s HuggingFaceStorageReader reads
# these checkpoints too (tests/train/test_sharded.py checks it): a rank's shards in one safetensors
# file, the row offset of each shard in the header's metadata as DCP's JSON.
SHARD_FILE = "shard-{index:05d}-model-00001-of-00001.safetensors"  # DCP's _gen_file_name, one file per rank
SHARDING_KEY = "DCP_SHARDING_INFO"  # torch.distributed.checkpoint._hf_utils.CUSTOM_METADATA_KEY
OFFSETS_KEY = "saved_offsets"  # ... SAVED_OFFSETS_KEY


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

    def snapshot(self, copy: bool) -> Snapshot:
        """This rank's shards, streamed into one safetensors file and hashed as they are written (no
        file built in memory, no read-back, no planning round): the rows each holds in DCP's
        metadata. A shard another rank also holds (HSDP's replicas, the step counts) is written once."""
        import json

        from motif.train.slices import write_tensors

        tensors: dict[str, torch.Tensor] = {}
        offsets: dict[str, list[int]] = {}
        for key, value in self._state().items():
            local, start, writes = _shard_of(value, self.world.rank)
            if writes and local.numel():
                tensors[key] = held(local, copy)
                offsets[key] = [start] + [0] * (local.dim() - 1) if local.dim() else []  # DCP's: one per dim
        name = f"{CHECKPOINT_DIR}/{SHARD_FILE.format(index=self.world.rank + 1)}"
        metadata = {SHARDING_KEY: json.dumps({key: {OFFSETS_KEY: o} for key, o in offsets.items()})}

        def write(directory: Path) -> dict[str, str]:
            (directory / CHECKPOINT_DIR).mkdir(exist_ok=True)
            return {name: write_tensors(directory / name, tensors, metadata)}

        return write

    @torch.no_grad()
    def load(self, directory: Path, verifier: ReadVerifier) -> None:
        """This rank's rows of every tensor, read straight into its shards from the saved shards that
        hold them (any world size), in file order so the checksums are taken on the way."""
        from motif.train.slices import from_fewest_files, read_all, reading_threads

        path, rank = directory / CHECKPOINT_DIR, self.world.rank
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no safetensors shards (not a checkpoint of engine fsdp)")
        # Saved by this world size, a rank's rows are in its own file and the step counts in rank 0's.
        few = sorted({path / SHARD_FILE.format(index=1), path / SHARD_FILE.format(index=rank + 1)} & set(files))

        def load_from(wanted: list[Path]) -> None:
            chunks = _saved_chunks(files, wanted, verifier, rank, self.world.world_size)
            try:
                reads = []
                for key, value in self._state().items():
                    local, start, _ = _shard_of(value, rank)
                    reads += _reads_for(chunks, key, local, start, directory)
                read_all(reads, reading_threads(self.stage.parallel.procs_per_node))
            finally:
                for reader in {c[0] for found in chunks.values() for c in found}:
                    reader.close()

        from_fewest_files([few, files] if few else [files], load_from)

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


def _shard_of(value: torch.Tensor, rank: int) -> tuple[torch.Tensor, int, bool]:
    """(this rank's local tensor, its first row in the whole tensor, whether this rank writes it).

    A replicated copy (HSDP's replicas of a shard, a plain step count) is written by the ranks at
    coordinate 0 of the replicating mesh dimensions (rank 0 for a plain tensor), as DCP dedups it."""
    if not isinstance(value, DTensor):
        return value.detach(), 0, rank == 0
    start, _ = local_rows(value)
    coordinate = value.device_mesh.get_coordinate()
    assert coordinate is not None  # every rank is in the mesh
    writes = all(c == 0 for c, p in zip(coordinate, value.placements, strict=True) if p.is_replicate())
    local: torch.Tensor = value.to_local().detach()  # the shard's own memory: a load fills it in place
    return local, start, writes


def _saved_chunks(
    files: list[Path], wanted: list[Path], verifier: ReadVerifier, rank: int, world: int
) -> dict[str, list[tuple[TensorReader, int]]]:
    """{key: [(reader of the file holding a saved shard, its first row)]} over the `wanted` ones of
    the saved `files` (each file hashed by the rank `verifier.share` names among all of them)."""
    import json

    from motif.model.safetensors_io import read_header
    from motif.train.slices import TensorReader

    chunks: dict[str, list[tuple[TensorReader, int]]] = {}
    for f, hashes in zip(files, verifier.share(files, rank, world), strict=True):
        if f not in wanted:
            continue
        entries, metadata = read_header(f)
        try:
            info = json.loads(metadata[SHARDING_KEY])
            offsets = {key: [int(o) for o in info[key][OFFSETS_KEY]] for key in entries}
        except (KeyError, IndexError, TypeError, ValueError, json.JSONDecodeError):
            raise CheckpointError(
                f"{f}: no {SHARDING_KEY} offsets for its tensors (not written by engine fsdp)"
            ) from None
        for key, o in offsets.items():
            if len(o) != len(entries[key].shape) or any(o[1:]):
                raise CheckpointError(f"{f}: {key}: saved at offsets {o}, not a range of rows (fsdp shards rows)")
        reader = TensorReader(entries, str(f), hashes)
        for key, o in offsets.items():
            chunks.setdefault(key, []).append((reader, o[0] if o else 0))
    return chunks


def _reads_for(
    chunks: dict[str, list[tuple[TensorReader, int]]], key: str, local: torch.Tensor, start: int, directory: Path
) -> list[tuple[TensorReader, str, int, int, torch.Tensor]]:
    """The reads that fill `local` (rows [start, start + len) of `key`) from the saved shards."""
    from motif.train.slices import NotInFiles, overlaps

    rows = local.shape[0] if local.dim() else 1
    per_row = math.prod(local.shape[1:]) if local.dim() else 1
    flat = local.reshape(-1) if local.dim() else local.view(1)
    saved = [
        (reader, first, first + (reader.shape(key)[0] if reader.shape(key) else 1))
        for reader, first in chunks.get(key, [])
    ]
    found = overlaps(saved, start, start + rows)
    if not local.dim():
        found = found[:1]  # a step count: one saved copy is enough
    reads = [
        (reader, key, a * per_row, b * per_row, flat[lo * per_row : hi * per_row]) for reader, a, b, lo, hi in found
    ]
    if sum(hi - lo for *_, lo, hi in found) < rows and local.numel():
        raise NotInFiles(f"{directory}: {key}: rows {start}..{start + rows} are not all in the saved shards (fsdp)")
    return reads
