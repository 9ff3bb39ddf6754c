"""A CPU's time for the step's own operators: each distinct call replayed on real tensors and timed.

A roofline at one large GEMM's rate is a poor model of a CPU step: its matmuls are small and odd-
shaped ([256 x 768] @ [768 x 2048] runs at a fraction of 1024^3's rate), attention is a CPU kernel
of its own, and most operators are elementwise passes whose cost is the call as much as the bytes.
So for `device: cpu` the rates are not a table but measurements of the step itself: every distinct
`counter.Call` of the record (operator, argument shapes, strides and dtypes; the sixteen blocks of
a model repeat the same few dozen) is run on real tensors of those shapes, filled with small random
values (integers zero: indices stay in range), and timed, in the same run as the prediction.

A call that cannot be replayed (an argument that is not hashable, more than `max_bytes`, or an
operator that refuses made-up values) keeps the roofline at the machine's measured GEMM rate and
copy bandwidth; `MeasuredCpu.fallback_calls` counts them so a reader knows how much is measured.

The calls are replayed under the allocator policy of a training rank (`motif/train/allocator.py`:
every output of 128 KiB or more a fresh mapping, its pages faulted in), which costs a CPU step a
third of its time: replayed with glibc's default heap reuse instead, a 113M step was predicted
at 3.1 s where the trainer took 4.8 s.

The calls are replayed by one rank alone. W ranks of a CPU run share its cores: how much of its
alone rate a rank keeps is measured at the same time, as many threads as run at once (W, or the
cores if fewer) running the step's main GEMM (and a copy) together against one
(`devices.measure_cpu`); ranks beyond the cores take turns on them, a share of cores / W. A call's
time is divided by that share (the GEMM's for a matmul or attention, the copy's for the rest).
Four threads multiplying at once on two vCPUs measured 0.19 of one alone, and a step predicted
from it came out 30% over the measurement: ranks seldom all multiply at the same moment (one
waits in a collective while another computes), and their turns are milliseconds long.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from motif.simulate.counter import Call, Event, Record, TensorSpec
from motif.simulate.devices import Device, measure_cpu
from motif.train.allocator import training_policy

SHARE_RUNS = 40  # GEMMs and copies timed for a rank's share of the machine
MAX_BYTES = 4 * 2**30  # a call that reads and writes more than this is not replayed (its roofline is used)


def distinct_calls(record: Record, max_bytes: int = MAX_BYTES) -> list[Call]:
    """The record's replayable calls, each once, in first-seen order."""
    seen: dict[Call, None] = {}
    for e in record.events:
        if e.kind == "compute" and e.call is not None and e.bytes <= max_bytes:
            seen.setdefault(e.call, None)
    return list(seen)


def _tensor(spec: TensorSpec) -> torch.Tensor:
    """A tensor of the spec's shape and strides (stride 0 and overlaps allowed: a base buffer viewed)."""
    extent = 1 + sum((n - 1) * s for n, s in zip(spec.shape, spec.stride, strict=True) if n > 0)
    if any(n == 0 for n in spec.shape):
        extent = 0
    if spec.dtype.is_floating_point or spec.dtype.is_complex:
        base = (torch.randn(extent) * 0.02).to(spec.dtype)
    else:
        base = torch.zeros(extent, dtype=spec.dtype)
    return base.as_strided(spec.shape, spec.stride)


def _real(x: Any) -> Any:
    if isinstance(x, TensorSpec):
        return _tensor(x)
    if isinstance(x, tuple):
        return [_real(v) for v in x]  # schema lists (int[], Tensor[]) accept lists
    return x


def arguments(call: Call) -> tuple[list, dict]:
    """Real arguments for a call: tensors of its shapes, lists where it had lists."""
    return [_real(a) for a in call.args], {k: _real(v) for k, v in call.kwargs}


def last_level_cache_bytes() -> int:
    """The CPU's last-level cache (sysfs), 64 MiB where it cannot be read."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=64 * 2**20)


class Evict:
    """Writes a buffer twice the last-level cache: what a call reads afterwards comes from memory."""

    def __init__(self):
        self.buffer = torch.empty(2 * last_level_cache_bytes() // 4)

    def __call__(self) -> None:
        self.buffer.fill_(1.0)


def time_call(call: Call, rounds: int = 5, evict: Callable[[], None] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds per call (this thread's CPU time: what the call costs whether or not
    others hold a core meanwhile): the medians of `rounds` timed calls, each after `evict`.

    A step's working set (weights, gradients, saved activations, Adam's moments) is many times any
    cache, so each call is timed with its arguments evicted to memory first, as the step mostly
    finds them; a call timed back to back on the same arguments would run from cache.
    """
    args, kwargs = arguments(call)
    call.op(*args, **kwargs)  # first call: allocations, lazy initialisation
    wall, cpu = [], []
    for _ in range(rounds):
        if evict is not None:
            evict()
        t0, c0 = time.perf_counter(), time.thread_time()
        call.op(*args, **kwargs)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return statistics.median(wall), statistics.median(cpu)


def time_calls(
    calls: list[Call], threads: int | None = None, progress: Callable[[str], None] = lambda m: None
) -> tuple[dict[Call, float], dict[Call, float], int]:
    """Wall and CPU seconds per call for every call that replays on this machine, with `threads`
    torch threads (default: torch's), and how many calls could not be replayed."""
    before = torch.get_num_threads()
    flush = torch.set_flush_denormal(True)  # in-place updates repeated on small values must not go denormal
    if threads is not None:
        torch.set_num_threads(threads)
    wall: dict[Call, float] = {}
    cpu: dict[Call, float] = {}
    failed = 0
    t0 = time.perf_counter()
    evict = Evict()
    try:
        with torch.no_grad():
            for call in calls:
                try:
                    wall[call], cpu[call] = time_call(call, evict=evict)
                except Exception:  # an operator that refuses made-up values: its roofline stays
                    failed += 1
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False) if flush else None
    progress(f"replayed {len(wall)} distinct operator calls ({time.perf_counter() - t0:.0f}s)")
    return wall, cpu, failed


@dataclass
class MeasuredCpu:
    """This machine as one rank of W sees it, measured: the time model's `device` for a CPU stage."""

    gemm: Device  # the step's main GEMM and a copy, one rank alone: the fallback roofline, and MFU's peak
    op_seconds: dict[Call, float] = field(default_factory=dict)  # a call's wall seconds, one rank alone
    op_cpu_seconds: dict[Call, float] = field(default_factory=dict)  # its CPU seconds
    flops_share: float = 1.0  # a rank's GEMM rate with W ranks computing at once, over its rate alone
    bytes_share: float = 1.0  # the same for the copy bandwidth
    fallback_calls: int = 0  # distinct calls not replayed (their roofline is used)
    name: str = "cpu"

    def flops_peak(self, precision: str) -> float:
        return self.gemm.flops_peak(precision)

    def compute_seconds(self, event: Event, precision: str) -> float:
        seconds = self.op_seconds.get(event.call) if event.call is not None else None
        if seconds is None:
            seconds = self.gemm.compute_seconds(event, precision)
        return seconds / (self.flops_share if event.flops else self.bytes_share)

    def cpu_clock(self) -> MeasuredCpu:
        """The same machine timed in CPU seconds, with a core always free: what the step costs a rank,
        however many others wait for the cores (a load-independent check of the model)."""
        return dataclasses.replace(self, op_seconds=self.op_cpu_seconds, flops_share=1.0, bytes_share=1.0)

    def summary(self) -> dict[str, float | int]:
        """The measured inputs, for the `--json` row."""
        return {
            "gemm_flops_per_s": self.gemm.fp32_flops,
            "copy_bytes_per_s": self.gemm.memory_bytes_per_s,
            "flops_share": self.flops_share,
            "bytes_share": self.bytes_share,
            "replayed_calls": len(self.op_seconds),
            "fallback_calls": self.fallback_calls,
        }


def main_gemm(record: Record) -> tuple[int, int, int]:
    """(m, k, n) of the 2-D matmul shape with the most FLOPs in the step (1024^3 if it has none)."""
    flops: dict[tuple[int, int, int], int] = {}
    for e in record.events:
        c = e.call
        if c is None or c.op._overloadpacket not in (torch.ops.aten.mm, torch.ops.aten.addmm):
            continue
        a, b = [x for x in c.args if isinstance(x, TensorSpec)][-2:]
        if len(a.shape) == len(b.shape) == 2:
            key = (a.shape[0], a.shape[1], b.shape[1])
            flops[key] = flops.get(key, 0) + e.flops
    return max(flops, key=flops.__getitem__) if flops else (1024, 1024, 1024)


def measure(
    record: Record, threads: int | None = None, ranks: int = 1, progress: Callable[[str], None] = lambda m: None
) -> MeasuredCpu:
    """Replay the step's calls on this machine and measure the share of it each of `ranks` ranks gets."""
    gemm = main_gemm(record)
    # Many runs (a second or so at this model's shapes): the share is what the ranks get over a
    # step of many seconds, not over the few milliseconds of one GEMM.
    alone = measure_cpu(threads, ranks=1, gemm=gemm, runs=SHARE_RUNS)
    with training_policy():  # each output a fresh mapping, its pages faulted in, as in a rank's step
        wall, cpu, failed = time_calls(distinct_calls(record), threads, progress)
    # Ranks beyond the cores take turns on them: what the ones running at once get from each other
    # (caches, memory bandwidth) is measured with as many threads as cores; the turns divide it.
    cores = len(os.sched_getaffinity(0))
    running = min(ranks, cores)
    together = measure_cpu(threads, ranks=running, gemm=gemm, runs=SHARE_RUNS) if running > 1 else alone
    turns = min(1.0, cores / ranks)
    # A rank never gets more than the machine alone: a share above 1 is the load moving between runs.
    flops_share = min(1.0, together.fp32_flops / alone.fp32_flops) * turns
    bytes_share = min(1.0, together.memory_bytes_per_s / alone.memory_bytes_per_s) * turns
    return MeasuredCpu(alone, wall, cpu, flops_share, bytes_share, failed)
