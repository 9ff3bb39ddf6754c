"""Growth of a checkpoint on disk, one tensor at a time.

A 70B -> 102B growth reads ~140 GB and writes ~200 GB (bf16), so the whole model is never in
memory: peak memory is one source tensor, its grown form and a chunk of scratch. Tensors the plan
leaves unchanged (all of them for LlamaPro, which only adds blocks) are copied byte for byte with
`copy_file_range`, never decoded; LlamaPro's zeroed projections become holes in the file (zeros
that cost no disk write) without reading their source. Everything is checked (source headers,
shapes, targets, destination) before the first weight is read, and the output appears at `dst`
only once complete.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from motif.errors import CheckpointError
from motif.growth.operators import GrowthPlan, plan_growth
from motif.growth.optim import grow_optimizer_file
from motif.growth.provenance import make_provenance, source_fingerprint
from motif.growth.targets import GrowthTargets
from motif.growth.tensors import grow_tensor
from motif.model.checkpoint import (
    CONFIG_NAME,
    DEFAULT_SHARD_BYTES,
    GROWING_PREFIX,
    OPTIMIZER_NAME,
    PLAIN_PREFIX,
    PROVENANCE_NAME,
    Checkpoint,
    atomic_dir,
    open_checkpoint,
    plan_shards,
    shard_names,
    write_index,
    write_json,
)
from motif.model.safetensors_io import FILE_MODE, SafetensorsWriter, read_tensor


def grow_checkpoint(
    src: str | Path,
    dst: str | Path,
    targets: GrowthTargets,
    depth_method: str = "llamapro",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    max_shard_bytes: int | None = None,
) -> dict[str, Any]:
    """Grow the checkpoint at `src` into `dst`; return the provenance (also written to growth.json)."""
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)  # headers only: missing, truncated or mismatched shards fail here
    plan = plan_growth(ckpt.args, targets, depth_method)  # impossible targets fail here
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output must not be the source checkpoint")
    provenance = make_provenance(plan, targets, depth_method, seed, str(src.resolve()), source_fingerprint(ckpt))
    shard_bytes = max_shard_bytes or _source_shard_bytes(ckpt)
    out_bytes = sum(_nbytes(dtype, shape) for _, dtype, shape in _output_specs(plan, ckpt))
    with atomic_dir(dst, overwrite) as tmp, _progress_bar(out_bytes, progress, dst) as bar:
        _write_weights(ckpt, plan, tmp, seed, shard_bytes, bar)
        if (src / OPTIMIZER_NAME).exists():
            provenance["optimizer"] = grow_optimizer_file(src / OPTIMIZER_NAME, tmp / OPTIMIZER_NAME, plan)
        write_json(tmp / PROVENANCE_NAME, provenance)
        _copy_side_files(src, tmp)
    return provenance


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


def _write_weights(ckpt: Checkpoint, plan: GrowthPlan, tmp: Path, seed: int, shard_bytes: int, bar: Any) -> None:
    specs = _output_specs(plan, ckpt)
    shards = plan_shards(specs, shard_bytes)
    names = shard_names(plan.args, len(shards))
    fds: dict[Path, int] = {}
    try:
        for shard, file in zip(shards, names, strict=True):
            writer = SafetensorsWriter(tmp / file, shard)
            for name, dtype, _ in shard:
                tp = plan.tensors[name]
                entry = ckpt.entries[tp.source]
                if entry.path not in fds:
                    fds[entry.path] = os.open(entry.path, os.O_RDONLY)
                if tp.zero:
                    writer.zeros(name)
                elif tp.is_copy:
                    writer.copy(name, fds[entry.path], entry.offset)
                else:
                    source = read_tensor(entry, fds[entry.path])
                    writer.write(name, grow_tensor(tp, source, name, seed).to(dtype))
                    del source
                bar.update(_nbytes(dtype, tp.shape))
            writer.close()
    finally:
        for fd in fds.values():
            os.close(fd)
    write_index(tmp, plan.args, shards, names)


def _copy_side_files(src: Path, tmp: Path) -> None:
    """Tokenizer and generation files travel with the weights; weights, config and state do not."""
    skip = {CONFIG_NAME, PROVENANCE_NAME, OPTIMIZER_NAME}
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


def _progress_bar(total: int, enabled: bool, dst: Path) -> Any:
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"grow {dst.name}", file=sys.stderr)
