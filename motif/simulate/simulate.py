"""One stage simulated: its step run on fake tensors, then memory and time put together."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from motif.plan import StageShape, resolve_stages, stage_files


def target_stages(target: Path) -> list[StageShape]:
    """The stages of a recipe directory, or one stage file (its recipe's earlier stages give its shape)."""
    from motif.errors import MotifError

    if target.is_dir():
        return resolve_stages(stage_files(target))
    if not target.is_file():
        raise MotifError(f"{target}: no such stage file or recipe directory")
    siblings = (
        [p for p in stage_files(target.parent) if p.name <= target.name]
        if target.suffix
        in (
            ".yaml",
            ".yml",
        )
        else []
    )
    files = siblings if target in siblings or any(p.samefile(target) for p in siblings) else [target]
    return [resolve_stages(files)[-1]]


def candidates(stage: Any) -> list[tuple[int, int]]:
    """(micro-batch size, micro-batches) pairs with the stage's sequences per step: the global batch kept."""
    t = stage.train
    sequences = t.micro_batch_size * t.grad_accum_steps
    return [(m, sequences // m) for m in range(1, sequences + 1) if sequences % m == 0]


def simulate_stage(
    shape: StageShape,
    stage: Any,
    *,
    world_size: int | None = None,
    seq_len: int | None = None,
    micro_batches: int | None = None,
    micro_batch_size: int | None = None,
    device_kind: str | None = None,
    device: Any = None,
    network: Any = None,
    cpu_threads: int | None = None,
    progress=lambda message: None,
    fake: bool = True,
) -> dict[str, Any]:
    """The `--json` row of one stage; `device` (a `devices.Device`) replaces the --device-kind table entry,
    `network` (a `timing.Network`) the stage's (default: `parallel.network`; gloo's loopback, measured,
    for a CPU stage on one machine). Device kind `cpu` replays the step's operators on this machine,
    each rank computing with `cpu_threads` threads (default: torch's)."""
    from motif.simulate import devices, replay, report
    from motif.simulate.step import layout, run_step
    from motif.simulate.timing import Network, step_time

    stage = layout(stage, world_size, seq_len, micro_batches)
    if micro_batch_size is not None:
        stage = dataclasses.replace(stage, train=dataclasses.replace(stage.train, micro_batch_size=micro_batch_size))
    memory, record = run_step(shape, stage, progress, fake=fake)
    p = stage.parallel
    if device is None:
        kind = device_kind or ("h100" if p.device == "cuda" else "cpu")
        if kind == "cpu":
            device = replay.measure(record, cpu_threads, ranks=min(p.world_size, p.procs_per_node), progress=progress)
        else:
            device = devices.device(kind)
    if network is None and p.device == "cpu" and p.nodes == 1:
        from motif.simulate.loopback import measure_loopback

        loopback = measure_loopback(ranks=max(2, p.procs_per_node))
        network = Network(loopback, loopback, p.procs_per_node, p.world_size, overlaps_compute=False)
    if network is None:
        network = Network(
            p.network.intra_node_gb_s * 1e9, p.network.inter_node_gb_s * 1e9, p.procs_per_node, p.world_size
        )
    time = step_time(record, device, network, stage.train.precision)
    row = report.row(stage, memory, time, shape.grown, device)
    if isinstance(device, replay.MeasuredCpu):
        cpu = step_time(record, device.cpu_clock(), network, stage.train.precision)
        row["cpu_measured"]["compute_cpu_seconds"] = cpu.compute_seconds
    return row
