"""The host allocator policy a training rank runs with: freed tensors go back to the OS.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB), so after a few
steps the shards, gathered blocks and gradients a step allocates and frees come from the heap,
which keeps the memory: measured on the 113M scale benchmark (bench/scale.py), a rank's peak RSS
grew by 1 GB over two steps that way (0.66 GiB at W = 1). Fixing the threshold (which also
disables the adjustment) keeps a rank's memory at what it holds.

What it costs: every tensor of 128 KiB or more is a fresh mapping, its pages faulted in and zeroed
on first touch. On that CPU benchmark a step takes 4.8 s instead of 3.1 s (2026-12-07, W = 1,
quiet). It stays: the memory a rank reports is then what it holds, which the memory contract and
`motif simulate`'s calibration rely on, and on a GPU rank the host allocates little per step.
`motif simulate` replays a CPU step's operators under the same policy, so the prediction pays
the same faults (`motif/simulate/replay.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

# glibc's mallopt parameter: allocations of at least this many bytes get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's own starting value
_MMAP_THRESHOLD_MAX = 32 << 20  # the most glibc's adjustment raises it to (64-bit)


def return_freed_memory() -> None:
    """Apply the policy to this process, for good. A libc without mallopt is left as it is."""
    _set_threshold(_MMAP_THRESHOLD_BYTES)


@contextlib.contextmanager
def training_policy() -> Iterator[None]:
    """The policy for a while (`motif simulate` timing a step's operators as a rank runs them). glibc
    has no way back to its adjusting threshold: after, the threshold is left where that adjustment
    ends in a long-running process (32 MiB), so the process keeps reusing its heap as before."""
    _set_threshold(_MMAP_THRESHOLD_BYTES)
    try:
        yield
    finally:
        _set_threshold(_MMAP_THRESHOLD_MAX)


def _set_threshold(nbytes: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, nbytes)
