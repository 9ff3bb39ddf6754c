"""DeepSpeed ZeRO on CPU (gloo, DS_ACCELERATOR=cpu): the stage's settings map onto a DeepSpeed
config, and a real 2-process ZeRO-3 run trains, checkpoints and resumes bit-identically."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from motif.config import ConfigError, parse_stage
from motif.train.deepspeed_engine import ds_config

from .conftest import motif_train, stage_section, write_stage


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_stage_settings_map_onto_the_deepspeed_config(zero):
    section = stage_section(
        parallel={"engine": "deepspeed", "zero_stage": zero},
        train={"micro_batch_size": 3, "grad_accum_steps": 4, "precision": "bf16"},
        optim={"grad_clip": 0.5},
    )
    cfg = ds_config(parse_stage(section))
    assert cfg["zero_optimization"] == {"stage": zero}
    assert cfg["train_micro_batch_size_per_gpu"] == 3 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"] == {"enabled": True}


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"nan_policy": "skip"}, "motif.train.nan_policy: skip needs motif.parallel.engine: ddp"),
        ({"compile": True}, "motif.train.compile: true needs motif.parallel.engine: ddp"),
    ],
)
def test_what_deepspeed_cannot_do_is_refused_at_load(train, message):
    with pytest.raises(ConfigError, match=message):
        parse_stage(stage_section(parallel={"engine": "deepspeed", "zero_stage": 2}, train=train))


@pytest.mark.slow
def test_two_process_zero3_trains_and_resumes_bit_identically(workdir):
    section = stage_section(
        "zero3",
        train={"max_steps": 6, "grad_accum_steps": 2},
        parallel={"engine": "deepspeed", "zero_stage": 3, "procs_per_node": 2},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )
    stage = write_stage(workdir, section)
    full = motif_train(workdir, stage, nproc=2, timeout=400)
    assert full.returncode == 0, full.stderr[-3000:]
    ck = workdir / "ck/zero3/step_00000003"
    assert sorted(p.name for p in ck.glob("zero_rank_*.safetensors")) == [
        "zero_rank_00000.safetensors",
        "zero_rank_00001.safetensors",
    ]
    out = workdir / "out/zero3"
    reference = {**load_file(str(out / "model.safetensors")), **load_file(str(out / "optimizer.safetensors"))}
    assert any(k.startswith("exp_avg.") for k in reference)  # moments gathered from the ZeRO partitions
    shutil.rmtree(out)

    resumed = motif_train(workdir, stage, "--resume", str(ck), nproc=2, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    again = {**load_file(str(out / "model.safetensors")), **load_file(str(out / "optimizer.safetensors"))}
    assert again.keys() == reference.keys()
    assert [k for k in reference if not torch.equal(reference[k], again[k])] == []
