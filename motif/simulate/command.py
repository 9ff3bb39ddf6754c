"""`motif simulate`: argument parsing, the stages to simulate, and the output."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HELP = "run one training step of each stage at its real size on fake tensors: memory per GPU and step time"
DESCRIPTION = """\
Run one optimizer step of each stage (a stage file, or every stage file of a RECIPE directory) with
the fsdp engine's own code, at the stage's real shape and world size, on CPU fake tensors (shapes
without data) in a fake process group, seen from rank 0: the sharded build, frozen blocks, MSG
masks, the Adam state, grad_accum_steps micro-batches, the clip and the optimizer step.

Prints, per stage: the per-rank peak of the tensors by category and where it is reached, an
allowance for what tensors do not show (CUDA context, NCCL, fragmentation), whether the total fits
parallel.gpu_memory_gib, and an estimated step time (roofline of every operator on --device-kind,
every FSDP2 collective over parallel.network, prefetch overlap; for --device-kind cpu, every
distinct operator call of the step replayed and timed on this machine, collectives over gloo's
loopback, measured), tokens/s per GPU, MFU and GPU-hours for max_steps, and what a checkpoint costs
(the training state it saves, its write and read time at motif.checkpoint.storage_gb_s per node, its
share of wall-clock at checkpoint.every_steps). Exit 1 if a stage does not fit, 2 on bad input.

Only the fsdp engine runs on fake tensors (DDP's reducer and DeepSpeed read tensor data): a stage of
another engine is refused unless --engine fsdp asks what FSDP2 would do with it.

Examples:
  motif simulate jobs/llama3-motif-102b
  motif simulate jobs/llama3-motif-102b/stage3-cpt.yaml --world 256 --seq-len 32768 --json
  motif simulate jobs/llama3-motif-102b/stage3-cpt.yaml --compare
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from motif.simulate.devices import KINDS

    parser.add_argument("target", metavar="STAGE_FILE|RECIPE", help="a stage file, or a directory of them")
    parser.add_argument("--world", type=int, metavar="W", help="world size (default: the stage file's)")
    parser.add_argument("--seq-len", type=int, metavar="T", help="tokens per sequence (default: the stage file's)")
    parser.add_argument("--micro-batches", type=int, metavar="N", help="micro-batches per step (grad_accum_steps)")
    parser.add_argument(
        "--device-kind",
        choices=KINDS,
        help="peak table entry for the time estimate (default: h100 for cuda stages; cpu, measured here, for cpu ones)",
    )
    parser.add_argument("--engine", choices=("fsdp",), help="simulate a ddp or deepspeed stage as fsdp would run it")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also simulate other layouts of the same global batch (micro-batch size x micro-batches) per stage",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output: a list, one object per stage")


@dataclass(frozen=True)
class SimulateRequest:
    """What `motif simulate` was asked to do."""

    target: str
    world: int | None = None
    seq_len: int | None = None
    micro_batches: int | None = None
    device_kind: str | None = None
    engine: str | None = None
    compare: bool = False
    json: bool = False


def run(args: argparse.Namespace) -> int:
    from motif.request import from_namespace

    return simulate(from_namespace(SimulateRequest, args))


def simulate(args: SimulateRequest) -> int:
    from motif.simulate.report import format_table
    from motif.simulate.simulate import candidates, simulate_stage, target_stages

    shapes = target_stages(Path(args.target))
    rows = []
    for shape in shapes:
        stage = _checked(shape, args)
        layouts = candidates(stage) if args.compare else [(None, None)]
        for micro_batch_size, micro_batches in layouts:
            rows.append(
                simulate_stage(
                    shape,
                    stage,
                    world_size=args.world,
                    seq_len=args.seq_len,
                    micro_batches=micro_batches or args.micro_batches,
                    micro_batch_size=micro_batch_size,
                    device_kind=args.device_kind,
                    progress=lambda m, s=stage.name: print(f"simulate {s}: {m}", file=sys.stderr, flush=True),
                )
            )
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0 if all(r["fits"] for r in rows) else 1


def _checked(shape, args: SimulateRequest):
    """The stage, its engine checked against what can be simulated, and the overrides checked."""
    import dataclasses

    from motif.errors import MotifError

    stage, where = shape.stage, shape.file
    if args.engine:
        stage = dataclasses.replace(
            stage, parallel=dataclasses.replace(stage.parallel, engine=args.engine, replicate=1)
        )
    engine = stage.parallel.engine
    if engine != "fsdp":
        why = "DeepSpeed's ZeRO-3 reads tensor data" if engine == "deepspeed" else "DDP's reducer reads tensor data"
        raise MotifError(
            f"{where}: motif.parallel.engine: {engine} cannot run on fake tensors ({why}); expected fsdp, "
            "or pass --engine fsdp to simulate the stage as FSDP2 would run it"
        )
    for flag, value in (("--world", args.world), ("--seq-len", args.seq_len), ("--micro-batches", args.micro_batches)):
        if value is not None and value <= 0:
            raise MotifError(f"{flag}: expected a positive integer, got {value}")
    world = args.world or stage.parallel.world_size
    if world % stage.parallel.replicate:
        raise MotifError(
            f"{where}: motif.parallel.replicate: {stage.parallel.replicate} does not divide the world size {world}"
        )
    return stage
