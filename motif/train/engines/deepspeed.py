"""`deepspeed`: DeepSpeed ZeRO-3, held to the same memory contract as `fsdp`.

- **Build partitioned.** The model is constructed under `deepspeed.zero.Init`, so every parameter
  is partitioned as soon as its module exists; ZeRO-3 gives rank r the elements
  [r * P, (r + 1) * P) of each flattened tensor (P = ceil(numel / W)), and that is exactly the
  range each rank reads from the start checkpoint into its partition.
- **Adam state is DeepSpeed's**, one flat fp32 partition per parameter group; per-tensor step
  counts are kept by grouping the parameters by the step they carry from the previous stage (a
  wholly new LlamaPro or MSG block restarts at 0, the old tensors continue). Moments carried from
  `motif grow` are written into the partitions with DeepSpeed's local-state API before step 1.
- **Decay follows the growth mask**: the torch optimizer inside runs without decay and
  `optimizer.decay_` is applied to each rank's fp32 master partition before the step.
- **A non-finite step is skipped by DeepSpeed itself** (its global norm is not finite); the
  engine checks that its verdict and the trainer's agree.
- **Checkpoints are this rank's partitions**, fp32 master weights and moments, as one safetensors
  file per rank with the element range of every tensor in its JSON metadata. A load assembles the
  range this rank owns now from whichever files hold it, so a job resumed on another world size
  reshards (no DeepSpeed pickle checkpoint, no offline conversion).
- **The stage's output** gathers one parameter at a time (`safe_get_full_fp32_param`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import torch

from motif.config import StageConfig
from motif.errors import CheckpointError, MotifError
from motif.model import Llama, ModelArgs
from motif.train import optimizer as optim
from motif.train.dist import World
from motif.train.engines import Snapshot, StepResult, held, loss_sums
from motif.train.slices import NotInFiles, Read, TensorReader, from_fewest_files, overlaps, write_tensors
from motif.train.start import MOMENTS, MomentSource, WeightSource

if TYPE_CHECKING:
    from motif.data.mixture import Batch
    from motif.storage.integrity import ReadVerifier

# DeepSpeed 0.19 calls collectives torch 2.13 deprecated; the warning would repeat at every step.
warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)

RANK_FILE = "zero_rank_{rank:05d}.safetensors"
META_KEY = "motif_zero3"


def ds_config(stage: StageConfig, args: ModelArgs, with_optimizer: bool = True) -> dict[str, Any]:
    t, o = stage.train, stage.optim
    group = args.largest_group_params()
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "zero_optimization": {
            "stage": 3,
            # Every parameter partitioned, however small: nothing is kept whole on every rank, and a
            # rank's partition is always the range the loader read for it.
            "stage3_param_persistence_threshold": 0,
            # The working set in units of the model's largest gathered group, not DeepSpeed's GPU
            # defaults (5e8 elements of reduce bucket alone is 2 GB in fp32): one group reduced at a
            # time, one prefetched, at most two gathered.
            "reduce_bucket_size": group,
            "stage3_prefetch_bucket_size": group,
            "stage3_max_live_parameters": 2 * group,
            "stage3_max_reuse_distance": group,
        },
        "bf16": {"enabled": t.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if with_optimizer:
        cfg["gradient_clipping"] = o.grad_clip
    return cfg


class ZeroParameter(Protocol):
    """What `deepspeed.zero.Init` adds to every parameter it partitions (torch's types do not know it)."""

    ds_tensor: torch.Tensor  # this rank's partition: flat, padded to the same size on every rank
    ds_numel: int  # elements of the whole tensor
    ds_shape: torch.Size  # the whole tensor's shape


def zero(p: torch.nn.Parameter) -> ZeroParameter:
    """`p` seen as the partitioned parameter it is (built under `zero_init`)."""
    return cast(ZeroParameter, p)


def partition(p: torch.nn.Parameter, rank: int) -> tuple[int, int, int]:
    """(start, stop, size): the flat elements of `p` in this rank's partition, and its padded size."""
    size = zero(p).ds_tensor.numel()
    start = rank * size
    return start, max(start, min(start + size, zero(p).ds_numel)), size


def partition_dtype(stage: StageConfig) -> torch.dtype:
    """The dtype every partition holds: the stage's `train.precision`."""
    return torch.bfloat16 if stage.train.precision == "bf16" else torch.float32


def zero_init(stage: StageConfig, args: ModelArgs) -> AbstractContextManager[object]:
    """`deepspeed.zero.Init` whose partitions hold the stage's precision on every accelerator.

    The dtype is left to the config's `bf16.enabled` on purpose: DeepSpeed 0.19's `Init._set_dtype`
    reads an explicit `dtype` as `dtype or torch.float16 if accelerator.is_fp16_supported() else
    torch.bfloat16 ...`, so by operator precedence the requested dtype counts only where the accelerator
    reports fp16 support. The CPU accelerator asks mkldnn, which says no on many CPUs (AMD EPYC among
    them), and an fp32 stage silently became bf16. Without `dtype`, `_set_dtype` takes bf16 when the
    config enables it and fp32 otherwise, whatever the accelerator answers. `check_partition_dtypes`
    proves the result after set-up.
    """
    import deepspeed

    init: AbstractContextManager[object] = deepspeed.zero.Init(config_dict_or_path=ds_config(stage, args))
    return init


def check_partition_dtypes(model: torch.nn.Module, expected: torch.dtype) -> None:
    """Refuse to train a model whose partitions are not `expected`: a cast would change every weight."""
    wrong = {str(zero(p).ds_tensor.dtype) for p in model.parameters() if zero(p).ds_tensor.dtype != expected}
    if wrong:
        raise MotifError(
            f"deepspeed built the model's partitions in {', '.join(sorted(wrong))}, "
            f"expected {expected} (motif.train.precision); refusing to train on silently cast weights"
        )


def partitioned_llama(
    args: ModelArgs, stage: StageConfig, world: World, weights: WeightSource, frozen: set[str]
) -> Llama:
    """A Llama built under `zero.Init`, each rank's partitions filled from `weights`."""
    with zero_init(stage, args):
        model = Llama(args)
    check_partition_dtypes(model, partition_dtype(stage))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
            start, stop, _ = partition(p, world.rank)
            if stop > start:
                weights.flat_into(name, start, stop, zero(p).ds_tensor.data[: stop - start])
    return model


class DeepSpeedEngine:
    name: ClassVar[str] = "deepspeed"

    def __init__(
        self, stage: StageConfig, world: World, weights: WeightSource, moments: MomentSource, frozen: set[str]
    ):
        import deepspeed

        self.stage, self.world = stage, world
        model = partitioned_llama(weights.args, stage, world, weights, frozen)
        model.set_activation_checkpointing(stage.train.activation_checkpointing)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.steps = {n: moments.step(n) for n in self.params}
        # One parameter group per carried step count: ZeRO keeps one Adam step per group.
        by_step: dict[float, list[torch.nn.Parameter]] = {}
        for name, p in self.params.items():
            by_step.setdefault(self.steps[name], []).append(p)
        self.group_steps = sorted(by_step)
        groups = [{"params": by_step[s]} for s in self.group_steps]
        inner = optim.adamw(groups, stage.optim, fused=True)
        self.runner, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=inner, config=ds_config(stage, weights.args), dist_init_required=False
        )
        self.model = model
        check_partition_dtypes(model, partition_dtype(stage))  # and still so after DeepSpeed's own set-up
        model.init_buffers(world.device)  # RoPE tables and masks in fp32, whatever DeepSpeed cast
        model.train()
        self._init_optimizer_state()
        if stage.train.precision == "bf16":  # the fp32 masters were made from bf16 partitions: make them exact
            self._set_local("param", weights.flat_into)
        for name in self.params:
            if moments.has(name):
                moments.check_shape(name, tuple(weights.shapes[name]))
        for key in MOMENTS:
            self._set_local(key, functools.partial(moments.flat_into, key), only=moments.has)
        self.bytes_read = weights.bytes_read + moments.bytes_read

    def _init_optimizer_state(self) -> None:
        """Adam state of each flat fp32 partition, made now (torch makes it lazily at the first step)."""
        inner = self.optimizer.optimizer
        for i, flat in enumerate(self.optimizer.fp32_partitioned_groups_flat):
            step = self.group_steps[self.optimizer.sub_group_to_group_id[i]]
            inner.state[flat] = {
                "step": torch.tensor(step, dtype=torch.float32, device=flat.device),
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
            }

    @torch.no_grad()  # DeepSpeed's fp32 partitions are leaves that require grad: filled in place here
    def _set_local(
        self,
        key: str,
        fill: Callable[[str, int, int, torch.Tensor], None],
        only: Callable[[str], bool] = lambda name: True,
    ) -> None:
        """Write this rank's partition of `key` ("param" or a moment) for every trained parameter.

        `fill(name, start, stop, out)` writes elements [start, stop) of that tensor into `out`.
        """
        for name, p, start, stop, value, owned in self._partitions(key, only):
            if stop > start:
                fill(name, start, stop, value[: stop - start])
            self._finish_partition(key, p, value, owned)

    @torch.no_grad()
    def _partitions(
        self, key: str, only: Callable[[str], bool] = lambda name: True
    ) -> Iterator[tuple[str, torch.nn.Parameter, int, int, torch.Tensor, bool]]:
        """(name, parameter, first and last element, the memory to fill, whether it is DeepSpeed's own)
        of this rank's partition of `key` for each trained parameter; the padding is zeroed already."""
        for name, p in self.params.items():
            if not only(name):
                continue
            start, stop, size = partition(p, self.world.rank)
            own = self._own_partition(key, p, size)
            value = own if own is not None else torch.empty(size, dtype=torch.float32)
            value[stop - start :] = 0.0  # the partition's padding
            yield name, p, start, stop, value, own is not None

    @torch.no_grad()
    def _finish_partition(self, key: str, p: torch.nn.Parameter, value: torch.Tensor, owned: bool) -> None:
        """Hand a filled partition to DeepSpeed (`owned`: filled in place, only the compute copy is left)."""
        from deepspeed.utils import safe_set_local_fp32_param, safe_set_local_optimizer_state

        value = value.to(self.world.device)
        if not owned:  # a host buffer: DeepSpeed copies it into its own memory
            if key == "param":
                safe_set_local_fp32_param(p, value)
            else:
                safe_set_local_optimizer_state(p, value, key)
        if key == "param":
            zero(p).ds_tensor.data.copy_(value.to(zero(p).ds_tensor.dtype))  # the copy forward gathers

    def _own_partition(self, key: str, p: torch.nn.Parameter, size: int) -> torch.Tensor | None:
        """DeepSpeed's own fp32 memory of this rank's partition of `key`, to be filled in place (a
        checkpoint's bytes are read straight into it: no buffer, no second copy); None where that
        memory is not a plain host view (GPU, or swapped to NVMe), which then gets a host buffer."""
        from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_optimizer_state

        own = safe_get_local_fp32_param(p) if key == "param" else safe_get_local_optimizer_state(p, key)
        usable = (
            own is not None
            and own._is_view()  # a narrow of DeepSpeed's flat partition, not a copy of it
            and own.device.type == "cpu"
            and own.dtype == torch.float32
            and own.is_contiguous()
            and own.numel() == size
        )
        return own if usable else None

    # ---- stepping --------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.runner(tokens)
        return logits

    def accumulate(self, last: bool) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        self.runner.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        if not self.runner.is_gradient_accumulation_boundary():
            self.runner.step()  # only advances DeepSpeed's micro-step counter

    def clip_grad_norm(self, max_norm: float) -> None:
        return None  # ZeRO-3 knows the global norm only inside its step, where it clips

    def step(self, lr: float, finite: bool) -> StepResult:
        from deepspeed.utils import safe_get_local_fp32_param

        optim.set_lr(self.optimizer, lr)
        if finite:
            views = []
            for name, p in self.params.items():
                start, stop, _ = partition(p, self.world.rank)
                views.append((name, safe_get_local_fp32_param(p)[: stop - start], start, tuple(zero(p).ds_shape)))
            optim.decay_(views, self.model.args, lr, self.stage.optim.weight_decay)
        self.runner.step()
        # DeepSpeed skips a step whose global gradient norm is not finite (only it sees that norm);
        # a non-finite loss always makes one.
        stepped = not getattr(self.optimizer, "overflow", False)
        if stepped and not finite:
            raise MotifError("engine deepspeed: DeepSpeed took a step whose loss was not finite")
        norm = self.runner.get_global_grad_norm()
        return StepResult(stepped, None if norm is None or not stepped else float(norm))

    def trainable(self) -> list[str]:
        return list(self.params)

    # ---- checkpoints -------------------------------------------------------------------------

    def _local(self, key: str, p: torch.nn.Parameter, copy: bool) -> torch.Tensor:
        from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_optimizer_state

        start, stop, _ = partition(p, self.world.rank)
        value: torch.Tensor = safe_get_local_fp32_param(p) if key == "param" else safe_get_local_optimizer_state(p, key)
        return held(value[: stop - start].float(), copy)

    def snapshot(self, copy: bool) -> Snapshot:
        tensors: dict[str, torch.Tensor] = {}
        ranges: dict[str, list[object]] = {}  # name: [start, stop, whole shape]
        for name, p in self.params.items():
            start, stop, _ = partition(p, self.world.rank)
            ranges[name] = [start, stop, list(zero(p).ds_shape)]
        for key in ("param", *MOMENTS):  # in the order `load` reads them: the file front to back
            for name, p in self.params.items():
                tensors[f"{key}.{name}"] = self._local(key, p, copy)
        steps = {name: self._group_step(p) for name, p in self.params.items()}
        meta = {"world_size": self.world.world_size, "ranges": ranges, "steps": steps}
        name = RANK_FILE.format(rank=self.world.rank)
        return lambda directory: {name: write_tensors(directory / name, tensors, {META_KEY: json.dumps(meta)})}

    def _group_step(self, p: torch.nn.Parameter) -> float:
        inner = self.optimizer.optimizer
        for i, flat in enumerate(self.optimizer.fp32_partitioned_groups_flat):
            if any(q is p for q in self.optimizer.fp16_groups[i]):
                return float(inner.state[flat]["step"])
        raise MotifError("engine deepspeed: a parameter is in no ZeRO group")

    def load(self, directory: Path, verifier: ReadVerifier) -> None:
        """This rank's partitions, assembled from the files of the ranks that saved them (any count)."""
        from motif.model.safetensors_io import read_header

        files = sorted(directory.glob("zero_rank_*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory}: no zero_rank_*.safetensors (not a checkpoint of engine deepspeed)")
        hashing = dict(zip(files, verifier.share(files, self.world.rank, self.world.world_size), strict=True))
        # Saved by this world size, a rank's partitions (and every step count) are in its own file.
        own = directory / RANK_FILE.format(rank=self.world.rank)

        def load_from(wanted: list[Path]) -> None:
            saved = []
            try:
                for f in wanted:
                    entries, metadata = read_header(f)
                    try:
                        saved.append((TensorReader(entries, str(f), hashing[f]), json.loads(metadata[META_KEY])))
                    except (KeyError, json.JSONDecodeError):
                        raise CheckpointError(
                            f"{f}: no {META_KEY} metadata (not written by engine deepspeed)"
                        ) from None
                self._read_partitions(saved, directory)
                steps = {n: s for _, meta in saved for n, s in meta["steps"].items()}
                self._load_steps(steps, directory)
            finally:
                for reader, _ in saved:
                    reader.close()

        from_fewest_files([[own], files] if own in hashing else [files], load_from)

    @torch.no_grad()
    def _read_partitions(self, saved: list[tuple[TensorReader, dict[str, Any]]], directory: Path) -> None:
        """Every partition this rank owns, read in file order on as many threads as it has cores to
        itself, straight into DeepSpeed's memory; a partition that lives elsewhere (a GPU) goes
        through a host buffer, one at a time."""
        from motif.train.slices import read_all, reading_threads

        reads, filled = [], []
        for key in ("param", *MOMENTS):
            for name, p, start, stop, value, owned in self._partitions(key):
                found = _reads(saved, directory, key, name, start, stop, value[: stop - start])
                if owned:
                    reads += found
                    filled.append((key, p, value))
                    continue
                read_all(found, 1)
                self._finish_partition(key, p, value, owned)
        threads = reading_threads(self.stage.parallel.procs_per_node)
        read_all(reads, threads)
        # The compute copies (a third of the bytes read, at fp32) on as many threads as read them.
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(self._finish_partition, key, p, value, True) for key, p, value in filled]:
                done.result()

    def _load_steps(self, steps: dict[str, float], directory: Path) -> None:
        inner = self.optimizer.optimizer
        for i, flat in enumerate(self.optimizer.fp32_partitioned_groups_flat):
            names = [n for n, p in self.params.items() if any(q is p for q in self.optimizer.fp16_groups[i])]
            values = {steps.get(n) for n in names}
            if len(values) != 1 or None in values:
                raise CheckpointError(f"{directory}: step counts of one ZeRO group differ or are missing: {values}")
            inner.state[flat]["step"].fill_(values.pop())

    # ---- the stage's output --------------------------------------------------------------------

    def full_tensors(self, frozen: WeightSource, carried: MomentSource) -> Iterator[tuple[str, torch.Tensor | None]]:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        main = self.world.is_main
        shapes = self.model.args.tensor_shapes()
        for name in shapes:
            if name in self.params:
                full = safe_get_full_fp32_param(self.params[name])  # collective: one whole tensor at a time
                yield name, full.cpu() if main else None
                del full
            else:  # frozen: the start checkpoint's own values (the compute copy may be bf16)
                yield name, frozen.full(name) if main else None
        for name in shapes:
            if name in self.params:
                p = self.params[name]
                for key in MOMENTS:
                    full = safe_get_full_optimizer_state(p, key)
                    yield f"{key}.{name}", full.cpu() if main else None
                    del full
                yield f"step.{name}", torch.tensor(self._group_step(p)) if main else None
            elif carried.has(name):
                for key in MOMENTS:
                    yield f"{key}.{name}", carried.full(key, name) if main else None
                yield f"step.{name}", torch.tensor(carried.step(name)) if main else None

    def input_loss(self, checkpoint: str, batches: list[Batch]) -> torch.Tensor:
        """The un-grown input, partitioned the same way and run by a ZeRO-3 engine without optimizer."""
        import deepspeed

        from motif.model.checkpoint import read_args

        with WeightSource.open(read_args(checkpoint), checkpoint, seed=0) as source:
            model = partitioned_llama(source.args, self.stage, self.world, source, frozen=set(source.shapes))
        config = ds_config(self.stage, source.args, with_optimizer=False)
        runner, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
        model.init_buffers(self.world.device)
        model.eval()
        sums = loss_sums(runner, batches, self.world.device)
        runner.destroy()
        return sums

    def close(self) -> None:
        pass


def _reads(
    saved: list[tuple[TensorReader, dict[str, Any]]],
    directory: Path,
    key: str,
    name: str,
    start: int,
    stop: int,
    out: torch.Tensor,
) -> list[Read]:
    """The reads that put elements [start, stop) of `key.name` into `out`, from the saved partitions
    that overlap them."""
    ranges: list[tuple[TensorReader, int, int]] = []
    for reader, meta in saved:
        if name in meta["ranges"]:
            a, b, _ = meta["ranges"][name]  # elements [a, b) of the whole tensor, and its shape
            ranges.append((reader, a, b))
    found = overlaps(ranges, start, stop)
    if sum(hi - lo for *_, lo, hi in found) != stop - start:
        raise NotInFiles(f"{directory}: {key}.{name}: elements {start}..{stop} are not all in the saved partitions")
    return [(reader, f"{key}.{name}", a, b, out[lo:hi]) for reader, a, b, lo, hi in found]
