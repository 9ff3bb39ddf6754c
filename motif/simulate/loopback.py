"""gloo's bandwidth on this machine's loopback, measured: the network of a one-machine CPU world.

n gloo ranks (two by default), as threads of this process sharing a HashStore (gloo's TCP
transport over loopback, as the W processes of a CPU run use it), time an all-reduce of 16 MiB;
the best of a few runs, as bus bandwidth (a ring all-reduce sends 2 (n-1)/n of the buffer per rank).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

NBYTES = 16 * 2**20


def measure_loopback(runs: int = 5, ranks: int = 2) -> float:
    """Bytes per second each rank sends, as the time model counts it (bus bandwidth)."""
    import torch
    import torch.distributed as dist

    store = dist.HashStore()
    seconds: dict[int, float] = {}

    def rank(r: int) -> None:
        group = dist.ProcessGroupGloo(store, r, ranks, timedelta(seconds=60))
        buffer = torch.ones(NBYTES // 4)
        group.allreduce([buffer]).wait()  # connections made, buffers touched
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            group.allreduce([buffer]).wait()
            best = min(best, time.perf_counter() - t0)
        seconds[r] = best

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * (ranks - 1) / ranks * NBYTES / max(seconds.values())
