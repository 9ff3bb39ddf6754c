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
    old_rows, new_rows = _selectors(row_axis, rows)
    old_cols, new_cols = _selectors(col_axis, cols)
    gen = generator_for(seed, name)
    mean, std = _mean_std(src) if fill in ("normal", "mean") else (0.0, 1.0)
    if fill != "mean":
        mean = 0.0

    def new_values(n: int, m: int) -> torch.Tensor:
        if fill == "normal":  # drawn in the tensor's dtype: no fp32 temporary to convert
            return torch.empty(n, m, dtype=src.dtype).normal_(0.0, std, generator=gen)
        return torch.full((n, m), mean, dtype=src.dtype)  # "mean", or 0.0 for "zeros"

    step = max(1, CHUNK_BYTES // (4 * cols))
    for a in range(0, src.shape[0], step):
        block = src[a : a + step]
        n = block.shape[0]
        # Old rows first (hidden, FFN, KV heads): write straight into the output; interleaved query
        # heads: assemble the rows, then scatter them.
        target = out[a : a + n] if isinstance(old_rows, slice) else torch.empty(n, cols, dtype=src.dtype)
        target[:, old_cols] = block
        if _count(new_cols):
            target[:, new_cols] = new_values(n, _count(new_cols))
        if not isinstance(old_rows, slice):
            out.index_copy_(0, old_rows[a : a + n], target)
    if isinstance(new_rows, slice):
        for a in range(new_rows.start, rows, step):
            out[a : a + step] = new_values(min(step, rows - a), cols)
    else:
        for a in range(0, len(new_rows), step):
            idx = new_rows[a : a + step]
            out[idx] = new_values(len(idx), cols)
    return out


def _selectors(axis: Axis | None, size: int) -> tuple[slice | torch.Tensor, slice | torch.Tensor]:
    """Where old and new entries go: slices when old entries come first (hidden, FFN, KV heads)."""
    if axis is None:
        return slice(0, size), slice(size, size)
    if axis.index is None:
        return slice(0, axis.old), slice(axis.old, axis.new)
    return axis.positions(), axis.new_positions()


def _count(sel: slice | torch.Tensor) -> int:
    return sel.stop - sel.start if isinstance(sel, slice) else len(sel)


def _mean_std(src: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the source (from an evenly strided sample of at most 2^16 entries: they only
    scale the random init, and a float64 pass over a whole 2 GB embedding costs seconds)."""
    flat = src.reshape(-1)
    flat = flat[:: max(1, flat.numel() >> 16)]
    n, total, squares = flat.numel(), 0.0, 0.0
    step = CHUNK_BYTES // 8
    for a in range(0, n, step):
        chunk = flat[a : a + step].double()
        total += chunk.sum().item()
        squares += chunk.square().sum().item()
    mean = total / max(n, 1)
    var = (squares - n * mean * mean) / max(n - 1, 1)
    return mean, max(var, 0.0) ** 0.5
