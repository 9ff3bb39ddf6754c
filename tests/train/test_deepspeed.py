"""DeepSpeed ZeRO-3 on CPU (gloo, DS_ACCELERATOR=cpu): the stage's settings map onto a DeepSpeed config,
and what the engine cannot do is refused by name at load. Training, resuming and resharding with it
are tests/train/test_sharded.py's and tests/hardening's, beside fsdp."""

import pytest

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
