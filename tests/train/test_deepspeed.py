"""DeepSpeed ZeRO-3 on CPU (gloo, DS_ACCELERATOR=cpu): the stage's settings map onto a DeepSpeed config,
and what the engine cannot do is refused by name at load. Training, resuming and resharding with it
are tests/train/test_sharded.py's and tests/hardening's, beside fsdp."""

import pytest
import torch

from motif.config import ConfigError, parse_stage
from motif.train.engines.deepspeed import ds_config

from .conftest import stage_section


def test_stage_settings_map_onto_the_deepspeed_config():
    section = stage_section(
        parallel={"engine": "deepspeed"},
        train={"micro_batch_size": 3, "grad_accum_steps": 4, "precision": "bf16"},
        optim={"grad_clip": 0.5},
    )
    stage = parse_stage(section)
    cfg = ds_config(stage, stage.model)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    # Buckets sized by the model's largest gathered group (here a block: 2 norms, q/k/v/o, gate/up/down),
    # not DeepSpeed's GPU defaults.
    block = 2 * 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert zero["reduce_bucket_size"] == zero["stage3_prefetch_bucket_size"] == block > 384 * 64
    assert zero["stage3_max_live_parameters"] == 2 * block
    assert cfg["train_micro_batch_size_per_gpu"] == 3 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"] == {"enabled": True}


@pytest.mark.parametrize(
    ("parallel", "train", "message"),
    [
        ({"zero_stage": 2}, {}, "motif.parallel.zero_stage: expected 3, got 2"),
        ({}, {"compile": True}, "motif.train.compile: true needs motif.parallel.engine: fsdp or ddp"),
        (
            {"replicate": 2, "procs_per_node": 2},
            {},
            "motif.parallel.replicate: 2 .HSDP. needs motif.parallel.engine: fsdp",
        ),
    ],
)
def test_what_deepspeed_cannot_do_is_refused_at_load(parallel, train, message):
    with pytest.raises(ConfigError, match=message):
        parse_stage(stage_section(parallel={"engine": "deepspeed", **parallel}, train=train))


def test_nan_skip_is_accepted_for_deepspeed():
    assert parse_stage(stage_section(parallel={"engine": "deepspeed"}, train={"nan_policy": "skip"}))


# Built in a child process: zero.Init patches torch.nn.Module and needs a process group, neither of
# which may leak into the test session. The child forces the accelerator's fp16 answer, so the check
# fails on every machine while the engine's dtype depends on it (DeepSpeed 0.19 gave an fp32 stage bf16
# partitions wherever mkldnn lacks fp16, as on AMD EPYC CPUs).
PARTITION_DTYPE_PROBE = """
import sys, torch, torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from motif.config import parse_stage
from motif.model import Llama
from motif.train.engines.deepspeed import check_partition_dtypes, partition_dtype, zero_init
import json

fp16, precision = sys.argv[1] == "yes", sys.argv[2]
accelerator = get_accelerator()
accelerator.is_fp16_supported = lambda: fp16
assert accelerator.is_fp16_supported() is fp16
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
stage = parse_stage(json.loads(sys.argv[3]))
with zero_init(stage, stage.model):
    model = Llama(stage.model)
held = sorted({str(p.ds_tensor.dtype) for p in model.parameters()})
print(json.dumps({"held": held, "expected": str(partition_dtype(stage))}))
check_partition_dtypes(model, partition_dtype(stage))
"""


@pytest.mark.parametrize("fp16_supported", ["yes", "no"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_partitions_hold_the_stage_precision_whatever_the_accelerator_says_of_fp16(fp16_supported, precision):
    import json
    import os
    import subprocess
    import sys

    section = stage_section(parallel={"engine": "deepspeed"}, train={"precision": precision})
    done = subprocess.run(
        [sys.executable, "-c", PARTITION_DTYPE_PROBE, fp16_supported, precision, json.dumps(section)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["held"] == [report["expected"]] == [{"fp32": "torch.float32", "bf16": "torch.bfloat16"}[precision]]


def test_a_partition_in_another_dtype_is_refused_not_cast():
    from motif.errors import MotifError
    from motif.train.engines.deepspeed import check_partition_dtypes

    class Partitioned(torch.nn.Module):  # what zero.Init leaves: each parameter carries its partition
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(0))
            self.w.ds_tensor = torch.zeros(4, dtype=torch.bfloat16)

    with pytest.raises(MotifError, match=r"partitions in torch.bfloat16, expected torch.float32"):
        check_partition_dtypes(Partitioned(), torch.float32)
