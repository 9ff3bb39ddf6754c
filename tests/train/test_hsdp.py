"""fsdp's multi-node layouts, run for real on CPU: HSDP (`parallel.replicate`) and `train.compile`.

HSDP with R replicas of W/R shards is, in exact arithmetic, data parallelism over R groups: with
R = W = 2 every rank holds every weight (shard groups of one) and gradients are averaged across the
two replicas, which is what ddp does. The same stage trained both ways must end at the same weights
(up to the order of floating-point reductions), through the 2-D device mesh's checkpoint and output
paths. torch.compile per block must not change what a step computes either.
"""

import pytest
import torch
from safetensors.torch import load_file

from motif.metrics.jsonl import read

from .conftest import motif_train, stage_section, write_stage


def _trained(workdir, name: str, nproc: int, parallel: dict, **train) -> dict[str, torch.Tensor]:
    section = stage_section(
        name,
        train={"max_steps": 4, **train},
        parallel={"procs_per_node": nproc, **parallel},
        checkpoint={"every_steps": 2, "keep_last": 1},
    )
    done = motif_train(workdir, write_stage(workdir, section), nproc=nproc, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(str(workdir / "out" / name / "model.safetensors"))


def _losses(workdir, name: str) -> list[float]:
    return [r["motif_loss"]["all"] for r in read(workdir / "ck" / name / "metrics.jsonl") if "motif_loss" in r]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_hsdp_with_two_replicas_trains_as_ddp_does(workdir):
    ddp = _trained(workdir, "dp", 2, {"engine": "ddp"})
    hsdp = _trained(workdir, "hsdp", 2, {"engine": "fsdp", "replicate": 2})
    assert list((workdir / "ck/hsdp/step_00000002/fsdp").glob("*.safetensors"))  # DCP under the 2-D mesh
    assert _max_difference(ddp, hsdp) < 1e-5


@pytest.mark.slow
def test_compiled_blocks_train_as_eager_ones(workdir):
    eager = _trained(workdir, "eager", 1, {"engine": "fsdp"})
    compiled = _trained(workdir, "compiled", 1, {"engine": "fsdp"}, compile=True)
    # Fused kernels round differently; Adam turns a rounding-level gradient difference on an entry
    # near zero into up to lr (3e-3) of weight, so weights are compared against a fraction of lr.
    losses = _losses(workdir, "eager"), _losses(workdir, "compiled")
    assert len(losses[0]) == 4 and all(abs(a - b) < 1e-4 * abs(a) for a, b in zip(*losses, strict=True)), losses
    assert _max_difference(eager, compiled) < 1e-3
