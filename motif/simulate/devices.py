"""Device peaks for the time model: dense matmul FLOP/s in the compute dtype and memory bandwidth.

GPU figures are the vendors' datasheet peaks (dense, no sparsity):
- h100: H100 SXM5, 989 TFLOP/s bf16, 3.35 TB/s HBM3 (NVIDIA H100 Tensor Core GPU datasheet).
- h200: H200 SXM, 989 TFLOP/s bf16, 4.8 TB/s HBM3e (NVIDIA H200 datasheet).
- a100: A100 SXM4 80GB, 312 TFLOP/s bf16, 2.039 TB/s HBM2e (NVIDIA A100 datasheet).
- mi250x: AMD Instinct MI250X, 383 TFLOP/s bf16, 3.2 TB/s HBM2e (AMD MI250X data sheet).
- mi300x: AMD Instinct MI300X, 1307 TFLOP/s bf16, 5.3 TB/s HBM3 (AMD MI300X data sheet).

`efficiency` is the share of the matmul peak that large training GEMMs sustain (an assumption,
not a datasheet figure: cuBLAS reaches ~70-80% of the H100's dense bf16 peak at Llama-sized
shapes; the same share is assumed for the others). fp32 compute runs at the fp32 (non tensor core)
peak on GPUs. `cpu` is not a table entry but this machine, measured in the same run: every
distinct operator call of the step replayed at its own shape and timed (`replay.MeasuredCpu`),
with the roofline at the measured fp32 GEMM rate and copy bandwidth (`measure_cpu`) only for what
cannot be replayed (and the network of a one-machine CPU world is gloo's loopback, measured too:
`motif/simulate/loopback.py`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from motif.simulate.counter import Event

TERA, GIGA = 1e12, 1e9


@dataclass(frozen=True)
class Device:
    name: str
    bf16_flops: float  # dense matmul peak, FLOP/s
    fp32_flops: float
    memory_bytes_per_s: float
    efficiency: float  # share of the matmul peak sustained (see the module docstring)

    def flops_peak(self, precision: str) -> float:
        """The datasheet peak (what MFU is a share of)."""
        return self.bf16_flops if precision == "bf16" else self.fp32_flops

    def flops(self, precision: str) -> float:
        """What the time model assumes a matmul sustains."""
        return self.flops_peak(precision) * self.efficiency

    def compute_seconds(self, event: Event, precision: str) -> float:
        """The roofline: the slower of the operator's FLOPs at the sustained peak and its bytes at the bandwidth."""
        return max(event.flops / self.flops(precision), event.bytes / self.memory_bytes_per_s)


DEVICES = {
    "h100": Device("h100", 989 * TERA, 67 * TERA, 3350 * GIGA, 0.75),
    "h200": Device("h200", 989 * TERA, 67 * TERA, 4800 * GIGA, 0.75),
    "a100": Device("a100", 312 * TERA, 19.5 * TERA, 2039 * GIGA, 0.75),
    "mi250x": Device("mi250x", 383 * TERA, 47.9 * TERA, 3277 * GIGA, 0.75),
    "mi300x": Device("mi300x", 1307 * TERA, 163.4 * TERA, 5300 * GIGA, 0.75),
}
KINDS = (*DEVICES, "cpu")


def device(kind: str) -> Device:
    return DEVICES[kind] if kind in DEVICES else measure_cpu()


def measure_cpu(
    threads: int | None = None, ranks: int = 1, gemm: tuple[int, int, int] = (1024, 1024, 1024), runs: int = 5
) -> Device:
    """This machine's fp32 GEMM rate ([m x k] @ [k x n], `gemm`) and copy bandwidth (median of a few
    runs) as one of `ranks` processes computing at once sees them, each with `threads` threads
    (default: torch's, all cores; a rank of a CPU run under torchrun computes with one). The ranks
    run as Python threads (torch releases the GIL in both operators); the slowest one's rates are
    returned, since a step waits for it. Measured, not assumed: two ranks on two vCPUs can each get
    half of one. A CPU's rate depends on the shape: pass the step's own matmul shape. On a machine
    that others share, more `runs` sample more of their load."""
    import torch

    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure_cpu(ranks=ranks, gemm=gemm, runs=runs)
        finally:
            torch.set_num_threads(before)
    results: list[tuple[float, float]] = [(0.0, 0.0)] * ranks

    def rank(i: int) -> None:
        m, k, n = gemm
        a, b = torch.randn(m, k), torch.randn(k, n)
        src = torch.empty(32 * 2**20 // 4)
        dst = torch.empty_like(src)
        seconds = _median(lambda: a @ b, runs)
        copy = _median(lambda: dst.copy_(src), runs)
        results[i] = (2 * m * k * n / seconds, 2 * src.numel() * 4 / copy)

    workers = [threading.Thread(target=rank, args=(i,)) for i in range(ranks)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flops = min(r[0] for r in results)
    return Device("cpu", flops, flops, min(r[1] for r in results), 1.0)


def _median(fn, runs: int = 5) -> float:
    """The median of a few timed runs after a warm-up. Not the best: on a machine that others share,
    the best run is the one that had a core to itself, and a step of many seconds does not."""
    import statistics

    fn()
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)
