"""One tensor grown by its plan entry: the only place where growth touches weight values.

New entries are random (normal with the source tensor's std) or, for norm gains, the mean gain.
The generator is seeded from the run's seed and the tensor's name, and rows are produced in fixed
chunks, so a tensor grows to the same values whether the model is in memory or streamed from disk,
and whatever order tensors are processed in. Memory stays at the source, the output and one chunk.
"""

from __future__ import annotations

import zlib

import torch

from motif.growth.operators import Axis, TensorPlan

CHUNK_BYTES = 32 << 20  # fp32 scratch per chunk of rows


def generator_for(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed << 32) ^ zlib.crc32(name.encode()))


def grow_tensor(tp: TensorPlan, source: torch.Tensor, name: str, seed: int = 0, new: str | None = None) -> torch.Tensor:
    """The grown tensor for plan entry `tp`, from `source` (not modified; may be returned as is).

    `new` overrides how new entries are filled: "zeros" for optimizer moments.
    """
    if tp.zero:
        return torch.zeros(tp.shape, dtype=source.dtype)
    if tp.is_copy:
        return source
    fill = new or tp.init
    if source.dim() == 1:  # norm gains: a column
        return _grow_2d(source[:, None], (tp.shape[0], 1), tp.axes[0], None, fill, name, seed)[:, 0]
    return _grow_2d(source, tp.shape, tp.axes[0], tp.axes[1], fill, name, seed)


def _grow_2d(
    src: torch.Tensor,
    shape: tuple[int, ...],
    row_axis: Axis | None,
    col_axis: Axis | None,
    fill: str,
    name: str,
    seed: int,
) -> torch.Tensor:
    rows, cols = shape
    out = torch.empty(shape, dtype=src.dtype)
    row_pos = row_axis.positions() if row_axis else None
    col_pos = col_axis.positions() if col_axis else None
    new_rows = row_axis.new_positions() if row_axis else torch.empty(0, dtype=torch.int64)
    new_cols = col_axis.new_positions() if col_axis else torch.empty(0, dtype=torch.int64)
    gen = generator_for(seed, name)
    mean, std = _mean_std(src) if fill in ("normal", "mean") else (0.0, 1.0)
    if fill != "mean":
        mean = 0.0

    def new_values(n: int, m: int) -> torch.Tensor:
        if fill == "normal":
            return (torch.randn(n, m, generator=gen) * std).to(src.dtype)
        return torch.full((n, m), mean, dtype=src.dtype)  # "mean", or 0.0 for "zeros"

    step = max(1, CHUNK_BYTES // (4 * cols))
    for a in range(0, src.shape[0], step):
        block = src[a : a + step]
        if col_pos is not None:
            wide = torch.empty(block.shape[0], cols, dtype=src.dtype)
            wide.index_copy_(1, col_pos, block)
            if len(new_cols):
                wide[:, new_cols] = new_values(block.shape[0], len(new_cols))
            block = wide
        if row_pos is None:
            out[a : a + block.shape[0]] = block
        else:
            out.index_copy_(0, row_pos[a : a + block.shape[0]], block)
    for a in range(0, len(new_rows), step):
        idx = new_rows[a : a + step]
        out[idx] = new_values(len(idx), cols)
    return out


def _mean_std(src: torch.Tensor) -> tuple[float, float]:
    """Mean and std in chunks: an fp32 copy of a whole bf16 embedding would double peak memory."""
    flat = src.reshape(-1)
    n, total, squares = flat.numel(), 0.0, 0.0
    step = CHUNK_BYTES // 8
    for a in range(0, n, step):
        chunk = flat[a : a + step].double()
        total += chunk.sum().item()
        squares += chunk.square().sum().item()
    mean = total / max(n, 1)
    var = (squares - n * mean * mean) / max(n - 1, 1)
    return mean, max(var, 0.0) ** 0.5
