"""A simulated stage as the command prints it: the `--json` object and the table row."""

from __future__ import annotations

from typing import Any

GIB = 2**30


def allowance_bytes(device: str, peak: int) -> int:
    """What tensors do not show (CUDA context, NCCL, fragmentation): `motif plan`'s overhead."""
    from motif.plan import overhead_bytes

    return overhead_bytes(device, peak)


def row(stage: Any, memory: Any, time: Any, args: Any, device: Any) -> dict[str, Any]:
    """The `--json` object of one stage (the keys are a contract)."""
    t, p = stage.train, stage.parallel
    allowance = allowance_bytes(p.device, memory.peak_bytes)
    total = memory.peak_bytes + allowance
    capacity = int(p.gpu_memory_gib * GIB)
    tokens_per_step = t.micro_batch_size * t.grad_accum_steps * stage.data.seq_len  # per GPU
    tokens_per_s = tokens_per_step / time.seconds
    mfu = args.flops_per_token(stage.data.seq_len) * tokens_per_s / device.flops_peak(t.precision)
    return {
        "stage": stage.name,
        "engine": p.engine,
        "world_size": p.world_size,
        "seq_len": stage.data.seq_len,
        "micro_batch_size": t.micro_batch_size,
        "micro_batches": t.grad_accum_steps,
        "tokens_per_step": tokens_per_step * p.world_size,
        "peak_bytes": memory.peak_bytes,
        "allowance_bytes": allowance,
        "total_bytes": total,
        "gpu_memory_bytes": capacity,
        "fits": total <= capacity,
        "peak_at": memory.peak_at,
        "by_category_bytes": memory.by_category_bytes,
        "device_kind": device.name,
        "step_seconds": time.seconds,
        "compute_seconds": time.compute_seconds,
        "comm_seconds": time.comm_seconds,
        "tokens_per_second_per_gpu": tokens_per_s,
        "mfu": mfu,
        "comm_bytes_per_step": time.wire_bytes,
        "max_steps": t.max_steps,
        "gpu_hours": time.seconds * t.max_steps * p.world_size / 3600,
        "days": time.seconds * t.max_steps / 86400,
        **checkpoint_cost(stage, memory.checkpoint_bytes, time.seconds),
        **({"cpu_measured": device.summary()} if hasattr(device, "summary") else {}),
    }


# Device to host memory, per rank, for an asynchronous checkpoint's copy of the state: an assumption
# (PCIe Gen4/5 x16 moves 25-50 GB/s into pinned memory; into pageable memory, as here, about a fifth
# to a half of that), not a measurement.
HOST_COPY_GB_S = 10.0


def checkpoint_cost(stage: Any, rank_bytes: int, step_seconds: float) -> dict[str, Any]:
    """A checkpoint's size and its write and read time from `checkpoint.storage_gb_s` (per node, each
    direction; the storage is assumed to scale with the nodes that use it). Each node writes and reads
    its ranks' shards; with HSDP one replica's nodes write (a replicated shard is saved once), and
    every node reads its own. The stall is what training waits for: the whole write, or with
    `checkpoint.async_mode: async` the copy of the state to host memory (`HOST_COPY_GB_S`) plus
    whatever of the write is not done by the next checkpoint. The share is the stall's, of wall-clock,
    one checkpoint per `checkpoint.every_steps` steps."""
    p, c = stage.parallel, stage.checkpoint
    node_bytes = rank_bytes * p.procs_per_node
    seconds = node_bytes / (c.storage_gb_s * 1e9)
    between = c.every_steps * step_seconds
    stall = seconds
    if c.async_mode == "async":
        stall = rank_bytes / (HOST_COPY_GB_S * 1e9) + max(0.0, seconds - between)
    return {
        "checkpoint_bytes": rank_bytes * p.world_size // p.replicate,
        "checkpoint_bytes_per_node": node_bytes,
        "checkpoint_write_seconds": seconds,
        "checkpoint_read_seconds": seconds,
        "checkpoint_stall_seconds": stall,
        "checkpoint_share": stall / (between + stall),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'stage':<14} {'GPUs':>5} {'seq':>6} {'mbs x n':>8} {'peak':>7} {'+allow':>7} {'total':>7} {'GPU':>5} "
        f"{'fits':>4}  {'step s':>7} {'tok/s/GPU':>9} {'MFU':>6} {'comm/step':>9} {'GPU-h':>9} {'days':>6} "
        f"{'ckpt':>8} {'write s':>8} {'share':>6}  peak at"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['stage']:<14} {r['world_size']:>5} {r['seq_len']:>6} "
            f"{str(r['micro_batch_size']) + ' x ' + str(r['micro_batches']):>8} "
            f"{r['peak_bytes'] / GIB:>6.1f}G {r['allowance_bytes'] / GIB:>6.1f}G {r['total_bytes'] / GIB:>6.1f}G "
            f"{r['gpu_memory_bytes'] / GIB:>4.0f}G {'yes' if r['fits'] else 'NO':>4}  {r['step_seconds']:>7.2f} "
            f"{r['tokens_per_second_per_gpu']:>9,.0f} {100 * r['mfu']:>5.1f}% {r['comm_bytes_per_step'] / 1e9:>8.1f}G "
            f"{r['gpu_hours']:>9,.0f} {r['days']:>6.1f} {r['checkpoint_bytes'] / 1e12:>6.2f}TB "
            f"{r['checkpoint_write_seconds']:>8.0f} {100 * r['checkpoint_share']:>5.1f}%  {r['peak_at']}"
        )
    lines.append(
        "Memory per rank in GiB (peak of the tensors, + the allowance for what tensors do not show). Step time, "
        "tokens/s, MFU and GPU-hours are estimates (device: " + (rows[0]["device_kind"] if rows else "-") + "); "
        "comm/step: GB each rank sends. ckpt: the training state a checkpoint saves, written (and read on a "
        "restart) at motif.checkpoint.storage_gb_s per node; share: of wall-clock, the time training waits for one "
        "checkpoint per every_steps (the write, or with checkpoint.async_mode: async the copy to host memory)."
    )
    return "\n".join(lines)
