"""Growth of a checkpoint on disk, one tensor at a time.

A 70B -> 102B growth reads ~140 GB and writes ~200 GB (bf16), so the whole model is never in
memory: peak memory is one source tensor, its grown form and a chunk of scratch. Tensors the plan
leaves unchanged (all of them for LlamaPro, which only adds blocks) are copied byte for byte with
`copy_file_range`, never decoded; LlamaPro's zeroed projections become holes in the file (zeros
that cost no disk write) without reading their source. Everything is checked (source headers,
shapes, targets, destination) before the first weight is read, and the output appears at `dst`
only once complete.

Before writing, under an exclusive lease on `dst` (a second grow into it fails at once, naming
the first): memory (the largest tensor's source and grown forms must fit) and disk space (the
whole output size is known) are checked, and the input is read once in full to verify it
(checksums against its record, NaN/inf) and to fingerprint its content, recorded in growth.json.
The output gets its own checksum record, computed while it is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from motif.errors import CheckpointError
from motif.growth.operators import GrowthPlan, TensorPlan, plan_growth
from motif.growth.optimizer_state import grow_optimizer_file
from motif.growth.provenance import make_provenance, source_fingerprint
from motif.growth.targets import GrowthTargets, check_seed
from motif.growth.tensors import SCRATCH_BYTES, grow_tensor
from motif.model.checkpoint import (
    CHECKSUMS_NAME,
    CONFIG_NAME,
    DEFAULT_SHARD_BYTES,
    GROWING_PREFIX,
    OPTIMIZER_NAME,
    PLAIN_PREFIX,
    PROVENANCE_NAME,
    Checkpoint,
    open_checkpoint,
    plan_shards,
    record_checksums,
    shard_names,
    verify_checkpoint,
    write_index,
    write_json,
)
from motif.model.safetensors_io import (
    FILE_MODE,
    SafetensorsWriter,
    TensorEntry,
    Writeback,
    frombuffer_readonly,
    map_tensor,
    read_header,
)
from motif.model.verify import check_finite, check_record, feed_tensor
from motif.storage import direct, integrity
from motif.storage.atomic import atomic_dir, check_replaceable
from motif.storage.integrity import SequentialHash
from motif.storage.lease import Lease, acquire
from motif.storage.reading import open_sequential
from motif.storage.space import check_free_space, check_memory, check_writable


def grow_checkpoint(
    src: str | Path,
    dst: str | Path,
    targets: GrowthTargets,
    depth_method: str = "llamapro",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int | None = None,
    lease: Lease | None = None,
    dst_key: str = "DST",
) -> dict[str, Any]:
    """Grow the checkpoint at `src` into `dst`; return the provenance (also written to growth.json).

    `lease`: the caller's held lease on `dst` (`grow_stage` holds it across its reuse check);
    without one, the lease is taken here. `dst_key` names `dst` in errors (a stage file's key).
    """
    src, dst = Path(src), Path(dst)
    check_seed(seed)
    ckpt = open_checkpoint(src)  # headers only: missing, truncated or mismatched shards fail here
    plan = plan_growth(ckpt.args, targets, depth_method)  # impossible targets fail here
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --overwrite to replace it)")
    check_replaceable(dst, overwrite, sources=[src])  # never the source, its parent, or a non-checkpoint
    check_writable(dst, dst_key)
    preflight(ckpt, plan, dst)
    if lease is None:
        with acquire(dst, "motif grow") as held:
            return _grow(ckpt, plan, dst, targets, depth_method, seed, overwrite, progress, max_shard_bytes, held)
    return _grow(ckpt, plan, dst, targets, depth_method, seed, overwrite, progress, max_shard_bytes, lease)


def _grow(
    ckpt: Checkpoint,
    plan: GrowthPlan,
    dst: Path,
    targets: GrowthTargets,
    depth_method: str,
    seed: int,
    overwrite: bool,
    progress: bool,
    max_shard_bytes: int | None,
    lease: Lease,
) -> dict[str, Any]:
    src = ckpt.path
    record = integrity.read_record(src)  # a malformed record fails here, before anything is written
    provenance = make_provenance(plan, targets, depth_method, seed, str(src.resolve()))
    shard_bytes = max_shard_bytes or _source_shard_bytes(ckpt)
    out_bytes = sum(_nbytes(dtype, shape) for _, dtype, shape in _output_specs(plan, ckpt))
    with atomic_dir(dst, overwrite, sources=[src], lease=lease) as tmp, _progress_bar(out_bytes, progress, dst) as bar:
        # The input is verified from the bytes the growth reads (each hashed once, in file order):
        # a checksum mismatch or a NaN fails the growth before its output is renamed into place.
        known, source_sums = _write_weights(ckpt, plan, tmp, seed, shard_bytes, bar)
        if (src / OPTIMIZER_NAME).exists():
            provenance["optimizer"] = grow_optimizer_file(
                src / OPTIMIZER_NAME, tmp / OPTIMIZER_NAME, plan, known, source_sums
            )
        check_record(src, record, source_sums, others=True, optional=frozenset({OPTIMIZER_NAME}))
        provenance["source"]["fingerprint"] = source_fingerprint(ckpt, source_sums)
        write_json(tmp / PROVENANCE_NAME, provenance)
        _copy_side_files(src, tmp)
        record_checksums(tmp, known)
    return provenance


def input_fingerprint(ckpt: Checkpoint, progress: bool = False) -> str:
    """Verify the input in full (checksums, NaN/inf) and return its content fingerprint."""
    total = sum(f.stat().st_size for f in {e.path for e in ckpt.entries.values()})
    with _progress_bar(total, progress, ckpt.path, "verify") as bar:
        sums = verify_checkpoint(ckpt, progress=bar.update)
    return source_fingerprint(ckpt, sums)


def preflight(ckpt: Checkpoint, plan: GrowthPlan, dst: Path) -> None:
    """Refuse, before anything is written, a growth this machine cannot hold in memory or on disk."""
    specs = _output_specs(plan, ckpt)
    need, largest = 0, None
    for name, dtype, shape in specs:
        tp = plan.tensors[name]
        if tp.zero or tp.is_copy:
            continue  # a hole, or a kernel copy: no tensor in memory
        # the source tensor, its grown form, grow_tensor's draws and the direct writer's buffers
        here = ckpt.entries[tp.source].nbytes + _nbytes(dtype, shape) + SCRATCH_BYTES + direct.MEMORY_BYTES
        if here > need:
            need, largest = here, name
    optimizer = ckpt.path / OPTIMIZER_NAME
    opt_bytes = _optimizer_bytes(plan, optimizer) if optimizer.exists() else 0
    if opt_bytes:  # two fp32 moments of the largest tensor, source and grown, held at once
        biggest = max(plan.tensors.values(), key=lambda tp: math.prod(tp.shape))
        source = math.prod(ckpt.entries[biggest.source].shape)
        opt_need = 2 * 4 * (math.prod(biggest.shape) + source) + SCRATCH_BYTES
        if opt_need > need:
            need, largest = opt_need, f"optimizer moments of {biggest.source}"
    if largest is not None:
        check_memory(need, f"growing {ckpt.path} into {dst}: tensor {largest}")
    written = sum(_nbytes(dtype, shape) for name, dtype, shape in specs if not plan.tensors[name].zero)
    side = sum(p.stat().st_size for p in ckpt.path.iterdir() if p.is_file() and not p.name.endswith(".safetensors"))
    check_free_space(dst.parent, written + opt_bytes + side, f"the grown checkpoint {dst}")


def _optimizer_bytes(plan: GrowthPlan, optimizer: Path) -> int:
    entries, _ = read_header(optimizer)
    params = {k.split(".", 1)[1] for k in entries if k.startswith("step.")}
    return sum(4 * (2 * math.prod(tp.shape) + 1) for tp in plan.tensors.values() if tp.source in params)


def _output_specs(plan: GrowthPlan, ckpt: Checkpoint) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    # Each grown tensor keeps its source's dtype (bf16 in, bf16 out).
    return [(name, ckpt.entries[tp.source].dtype, tp.shape) for name, tp in plan.tensors.items()]


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return dtype.itemsize * math.prod(shape)


def _source_shard_bytes(ckpt: Checkpoint) -> int:
    files = {e.path for e in ckpt.entries.values()}
    if len(files) == 1:
        return DEFAULT_SHARD_BYTES
    return max(f.stat().st_size for f in files)


def _write_weights(
    ckpt: Checkpoint, plan: GrowthPlan, tmp: Path, seed: int, shard_bytes: int, bar: Any
) -> tuple[dict[str, str], dict[str, str]]:
    """Write the grown weight files. Returns their checksums, computed while writing, and the
    source weight files' checksums, computed from the bytes read (every source tensor is checked
    for NaN/inf as it passes)."""
    specs = _output_specs(plan, ckpt)
    shards = plan_shards(specs, shard_bytes)
    names = shard_names(plan.args, len(shards))
    known: dict[str, str] = {}
    buffer = _GrowthBuffer(plan, specs)
    fds: dict[Path, int] = {}
    hashes: dict[Path, SequentialHash] = {}
    try:
        for path in sorted({e.path for e in ckpt.entries.values()}):
            fds[path] = open_sequential(path)
            hashes[path] = SequentialHash(path, fds[path])
        # A closed shard is handed to the disk while the next is written. The growth's threads draw
        # in parallel; this thread's own torch calls keep to one core, so that its idle OpenMP
        # team does not spin against them.
        with Writeback() as writeback, _intra_op_threads(1):
            for shard, file in zip(shards, names, strict=True):
                # A shard grown in memory is written past the page cache while the next tensor grows;
                # one of byte-for-byte copies is written by kernel copies, which cost no CPU.
                grown_only = not any(plan.tensors[name].is_copy for name, _, _ in shard)
                writer = SafetensorsWriter(tmp / file, shard, writeback=writeback, direct=grown_only)
                try:
                    for name, dtype, _ in shard:
                        _write_tensor(writer, name, plan.tensors[name], ckpt, fds, hashes, buffer.take(dtype), seed)
                        bar.update(_nbytes(dtype, plan.tensors[name].shape))
                    known[file] = writer.close()
                except BaseException:
                    writer.abort()  # its thread and its file; the caller removes the directory
                    raise
        # Tensors no output needs (a tied checkpoint's head, zeroed sources) are read here, once.
        source_sums = {path.name: h.finish() for path, h in hashes.items()}
    finally:
        for fd in fds.values():
            os.close(fd)
    write_index(tmp, plan.args, shards, names)
    return known, source_sums


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_tensor(
    writer: SafetensorsWriter,
    name: str,
    tp: TensorPlan,
    ckpt: Checkpoint,
    fds: dict[Path, int],
    hashes: dict[Path, SequentialHash],
    out: Callable[[tuple[int, ...]], torch.Tensor],
    seed: int,
) -> None:
    """One tensor of the output: a hole, a kernel copy, or grown from its mapped source."""
    entry = ckpt.entries[tp.source]
    if tp.zero:
        writer.zeros(name)
    elif tp.is_copy:
        writer.copy(name, fds[entry.path], entry.offset, _checked(hashes[entry.path], entry))
    else:
        source = map_tensor(entry, fds[entry.path])  # unmapped when this returns
        feed_tensor(hashes[entry.path], entry.offset, source)
        check_finite(source, str(entry.path), entry.name)
        writer.write(name, grow_tensor(tp, source, name, seed, out=out(tp.shape)))


class _GrowthBuffer:
    """One buffer, the size of the largest grown tensor, that every grown tensor is built in: a
    fresh tensor each time would fault in new pages for every byte written (a third of the time the
    writes themselves take here)."""

    def __init__(self, plan: GrowthPlan, specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None:
        made = [(d, shape) for name, d, shape in specs if not (plan.tensors[name].zero or plan.tensors[name].is_copy)]
        grown = [_nbytes(d, shape) for d, shape in made]
        self._bytes = torch.empty(max(grown, default=0), dtype=torch.uint8)

    def take(self, dtype: torch.dtype) -> Callable[[tuple[int, ...]], torch.Tensor]:
        """A tensor of `dtype` and a given shape, in the buffer (valid until the next one)."""
        return lambda shape: self._bytes[: _nbytes(dtype, shape)].view(dtype).view(shape)


def _checked(hashed: SequentialHash, entry: TensorEntry) -> Callable[[int, memoryview], None]:
    """What a copy does with the source bytes it reads: count them in the source's checksum, and
    refuse NaN/inf (chunks are whole elements: 16 MB from the tensor's start)."""

    def on_read(offset: int, data: memoryview) -> None:
        hashed.feed(offset, data)
        check_finite(frombuffer_readonly(data, entry.dtype), str(entry.path), entry.name)

    return on_read


def _copy_side_files(src: Path, tmp: Path) -> None:
    """Tokenizer and generation files travel with the weights; weights, config and state do not."""
    skip = {CONFIG_NAME, PROVENANCE_NAME, OPTIMIZER_NAME, CHECKSUMS_NAME}
    for path in sorted(src.iterdir()):
        name = path.name
        if name in skip or name.startswith((PLAIN_PREFIX + ".", PLAIN_PREFIX + "-", GROWING_PREFIX)):
            continue
        if path.is_file() and not name.startswith(".") and path.suffix not in (".safetensors", ".bin", ".pt"):
            shutil.copyfile(path, tmp / name)
            os.chmod(tmp / name, FILE_MODE)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(total: int, enabled: bool, dst: Path, verb: str = "grow") -> Any:
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{verb} {dst.name}", file=sys.stderr)
