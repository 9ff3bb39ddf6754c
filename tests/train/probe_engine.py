"""Run under torchrun: set a stage up exactly as `motif train` does, then report what each rank read and holds.

    torchrun --nproc-per-node 2 tests/train/probe_engine.py STAGE_FILE OUT_DIR

Writes OUT_DIR/rank_<r>.json: the bytes this rank read from the start checkpoint (weights, and
moments separately), and on rank 0 the largest difference between every whole tensor the engine
holds (weights and Adam state, gathered one at a time) and the start checkpoint's files.
"""

import json
import sys
from pathlib import Path

import torch


def main(stage_file: str, out: str) -> None:
    from motif.config import load_stage
    from motif.metrics.logger import MetricLogger
    from motif.train import dist
    from motif.train.slices import TensorReader
    from motif.train.trainer import RunOptions, Trainer

    stage = load_stage(stage_file)
    world = dist.init(stage.parallel.device, 60, force_group=True)
    trainer = Trainer(stage, RunOptions(resume="none"), world, MetricLogger([]))
    trainer.setup()
    report = {
        "rank": world.rank,
        "weights_bytes_read": trainer.weights.bytes_read,
        "moments_bytes_read": trainer.moments.bytes_read,
        "engine_bytes_read": trainer.engine.bytes_read,
    }
    start = Path(stage.start_checkpoint)
    weights = TensorReader.checkpoint(start)
    moments = TensorReader.file(start / "optimizer.safetensors")
    worst: dict[str, float] = {}
    for name, tensor in trainer.engine.full_tensors(trainer.weights, trainer.moments):
        if tensor is None:
            continue
        source = weights if name in weights else moments
        worst[name] = (tensor.float().cpu() - source.read(name).float()).abs().max().item()
    if world.is_main:
        report["largest_difference"] = max(worst.values())
        report["tensors"] = len(worst)
    Path(out, f"rank_{world.rank}.json").write_text(json.dumps(report))
    trainer.close()
    dist.close(world)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
