"""One tensor grown by its plan entry: the only place where growth touches weight values.

New entries are random (normal with the source tensor's std) or, for norm gains, the mean gain.
A tensor's new entries are split into regions of whole rows, at most `DRAW_ELEMENTS` entries each,
fixed by the tensor's shape alone; each region has a generator of its own, seeded from the run's
seed, the tensor's name and the region. So a tensor grows to the same values whether the
model is in memory or streamed from disk, whatever order tensors or regions are processed in, and
the regions can be drawn on several threads at once (a seeded generator is sequential, and
drawing is most of width growth's compute). Memory stays at the source, the output and one region
of fp32 draws per thread (`SCRATCH_BYTES`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from motif.growth.operators import Axis, TensorPlan

CHUNK_BYTES = 32 << 20  # source rows copied per job (as fp32: the same rows for any dtype)
DRAW_ELEMENTS = 1 << 18  # new entries per region, each drawn by a generator of its own
DRAW_THREADS = min(2, os.cpu_count() or 1)  # jobs in flight at once
SCRATCH_BYTES = DRAW_THREADS * DRAW_ELEMENTS * 4  # the fp32 draws in flight: all the memory growth adds

Selector = slice | torch.Tensor


def generator_for(seed: int, name: str, region: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{name}/{region}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def grow_tensor(
    tp: TensorPlan,
    source: torch.Tensor,
    name: str,
    seed: int = 0,
    new: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The grown tensor for plan entry `tp`, from `source` (not modified; may be returned as is).

    `new` overrides how new entries are filled: "zeros" for optimizer moments. `out`, when given,
    is where the grown tensor is written (`tp.shape`, the source's dtype): a caller growing many
    tensors reuses one buffer instead of faulting in fresh memory for each.
    """
    if tp.zero:
        return torch.zeros(tp.shape, dtype=source.dtype) if out is None else out.zero_()
    if tp.is_copy:
        return source if out is None else out.copy_(source)
    out = torch.empty(tp.shape, dtype=source.dtype) if out is None else out
    fill = new or tp.init
    if source.dim() == 1:  # norm gains: a column
        _grow_2d(source[:, None], out[:, None], tp.axes[0], None, fill, name, seed)
    else:
        _grow_2d(source, out, tp.axes[0], tp.axes[1], fill, name, seed)
    return out


def _grow_2d(
    src: torch.Tensor,
    out: torch.Tensor,
    row_axis: Axis | None,
    col_axis: Axis | None,
    fill: str,
    name: str,
    seed: int,
) -> None:
    rows, cols = out.shape
    old_rows, new_rows = _selectors(row_axis, rows)
    old_cols, new_cols = _selectors(col_axis, cols)
    mean, std = _mean_std(src) if fill in ("normal", "mean") else (0.0, 1.0)
    if fill != "mean":
        mean = 0.0

    def new_values(region: int, rows: Selector, cols: Selector, shape: tuple[int, int]) -> Callable[[], None]:
        def job() -> None:
            if fill == "normal":
                # Drawn in fp32, whose sampler is vectorized (bf16's is scalar, 1.3x slower here),
                # then rounded to the tensor's dtype as it is placed.
                values = torch.empty(shape, dtype=torch.float32)
                values.normal_(0.0, std, generator=generator_for(seed, name, region))
            else:  # "mean", or 0.0 for "zeros"
                values = torch.full(shape, mean, dtype=out.dtype)
            _place(out, rows, cols, values)

        return job

    def old_values(a: int, n: int) -> Callable[[], None]:
        return lambda: _place(out, _part(old_rows, a, n), old_cols, src[a : a + n])

    # Old entries in chunks of source rows; new entries in regions of whole rows, small enough that
    # the threads finish together (a region of ~1 ms of drawing).
    jobs = []
    step = max(1, CHUNK_BYTES // (4 * cols))
    for a in range(0, src.shape[0], step):
        jobs.append(old_values(a, min(step, src.shape[0] - a)))
    region = 0
    for rows_of, cols_of, width in ((old_rows, new_cols, _count(new_cols)), (new_rows, slice(0, cols), cols)):
        if not width:
            continue
        step = max(1, DRAW_ELEMENTS // width)
        for a in range(0, _count(rows_of), step):
            n = min(step, _count(rows_of) - a)
            jobs.append(new_values(region, _part(rows_of, a, n), cols_of, (n, width)))
            region += 1
    _run(jobs)


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads: it starts its own


os.register_at_fork(after_in_child=_forget_pool)


def _run(jobs: list[Callable[[], None]]) -> None:
    """Run jobs that write disjoint parts of one tensor, on DRAW_THREADS threads (torch releases
    the GIL while it draws and copies; each thread keeps to one core of its own)."""
    global _POOL
    if DRAW_THREADS < 2 or len(jobs) < 2:
        for job in jobs:
            job()
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(DRAW_THREADS, "motif-grow", initializer=torch.set_num_threads, initargs=(1,))
    for done in [_POOL.submit(job) for job in jobs]:
        done.result()


def _place(out: torch.Tensor, rows: Selector, cols: Selector, values: torch.Tensor) -> None:
    """out[rows, cols] = values, for rows and columns that are each a slice or a list of indices.

    Indices come in runs (a head's 128 rows or columns), and a copy per run is an order of magnitude
    faster than an indexed write of every element."""
    for r, row, nrows in _runs(rows):
        for c, col, ncols in _runs(cols):
            out[row : row + nrows, col : col + ncols] = values[r : r + nrows, c : c + ncols]


def _runs(sel: Selector) -> list[tuple[int, int, int]]:
    """(position in the selector, index it selects, length) of each run of consecutive indices."""
    if isinstance(sel, slice):
        return [(0, sel.start, sel.stop - sel.start)]
    if not len(sel):
        return []
    starts = [0, *((sel[1:] - sel[:-1] != 1).nonzero().flatten() + 1).tolist(), len(sel)]
    return [(a, int(sel[a]), b - a) for a, b in itertools.pairwise(starts)]


def _part(sel: Selector, a: int, n: int) -> Selector:
    """Entries a .. a + n of a selector."""
    if isinstance(sel, slice):
        return slice(sel.start + a, sel.start + a + n)
    return sel[a : a + n]


def _selectors(axis: Axis | None, size: int) -> tuple[Selector, Selector]:
    """Where old and new entries go: slices when old entries come first (hidden, FFN, KV heads)."""
    if axis is None:
        return slice(0, size), slice(size, size)
    if axis.index is None:
        return slice(0, axis.old), slice(axis.old, axis.new)
    return axis.positions(), axis.new_positions()


def _count(sel: Selector) -> int:
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
