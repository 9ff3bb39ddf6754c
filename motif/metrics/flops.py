"""Peak FLOP/s of a device, the denominator of MFU.

GPUs: the vendor's dense peak for the training precision (table below). CPUs have no such table
entry worth trusting, so we measure fp32 GEMMs for a fraction of a second with the threads this
process has. A measurement on a busy machine comes out low (and MFU high), so the best figure seen
on this machine is kept in `~/.cache/motif/cpu_peak_flops.json` and used when it is higher.
`motif.metrics.peak_flops` in the stage file overrides all of this.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense (no sparsity) peak FLOP/s per GPU, by substring of torch.cuda.get_device_name().
GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM; PCIe is lower (756e12): set peak_flops there
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
}


def measure_gemm_flops(size: int = 1024, seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of repeated `size`x`size` matmuls on the CPU, best of a few timed rounds."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, page faults
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "motif" / "cpu_peak_flops.json"


def cpu_peak_flops() -> float:
    """Best of this measurement and the best one recorded on this machine for this thread count."""
    key = f"{platform.node()}/{platform.processor() or platform.machine()}/threads={torch.get_num_threads()}"
    measured = max(measure_gemm_flops(512, 0.3), measure_gemm_flops(1024, 0.3))
    path = _cache_file()
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    best = max(measured, float(cache.get(key, 0.0)))
    if best > cache.get(key, 0.0):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**cache, key: best}, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: use this run's figure
    return best


def peak_flops(device: torch.device, precision: str, configured: float | None = None) -> float:
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[precision]
        return GPU_PEAKS["H100"][precision]
    return cpu_peak_flops()
