"""The simulation's memory: fake tensors against real ones, and the DTensor propagation workaround."""

import contextlib

import pytest
import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._sharding_prop import ShardingPropagator

import motif.simulate.step
from motif.plan import resolve_stages
from motif.simulate.step import run_step

from .conftest import small_stage


def _simulate(path, fake: bool):
    (shape,) = resolve_stages([path])
    return run_step(shape, shape.stage, lambda message: None, fake=fake)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fake_and_real_tensors_peak_alike(tmp_path, precision):
    """The same engine code and step on real tensors: the tracker sees the same peak (within 2%)."""
    path = small_stage(tmp_path, train__precision=precision, train__activation_checkpointing=True)
    fake, fake_record = _simulate(path, fake=True)
    real, real_record = _simulate(path, fake=False)
    assert abs(fake.peak_bytes - real.peak_bytes) <= 0.02 * real.peak_bytes
    assert fake.peak_at == real.peak_at
    assert fake_record.flops == real_record.flops
    assert fake_record.collective_bytes() == real_record.collective_bytes()
    assert fake.checkpoint_bytes == real.checkpoint_bytes


def test_a_checkpoint_holds_the_fp32_shards_and_their_two_moments(tmp_path):
    """Rank 0's share of a checkpoint: a quarter (4 ranks) of 4 B per parameter and 8 B of Adam
    moments per trainable one, plus the step counts and the rows FSDP2 pads."""
    path = small_stage(tmp_path)
    memory, _ = _simulate(path, fake=True)
    (shape,) = resolve_stages([path])
    expected = (4 + 8) * shape.grown.num_params() / 4
    assert expected <= memory.checkpoint_bytes <= 1.02 * expected


def _optimizer_state_and_flops(tmp_path):
    """This rank's optimizer state over its fp32 share of the model, and FLOPs per parameter and token,
    at a shape where the whole model counted would set the peak (short sequences, one micro-batch)."""
    # DTensor caches each operator's propagation: clear it, or an earlier simulation's would hide it.
    torch._C._clear_DTensor_sharding_propagator_cache()  # the C++ dispatch fast path's
    DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding.cache_clear()
    ShardingPropagator._propagate_tensor_meta_cached.cache_clear()
    path = small_stage(tmp_path, data__seq_len=8, train__micro_batch_size=1, train__grad_accum_steps=1)
    memory, record = _simulate(path, fake=True)
    (shape,) = resolve_stages([path])
    sharded_fp32 = 4 * shape.grown.num_params() / 4  # 4 ranks
    tokens = 8
    return memory.by_category_bytes["optimizer_state"] / sharded_fp32, record.flops / (
        shape.grown.num_params() * tokens
    )


def test_dtensor_propagation_is_not_counted(tmp_path):
    """DTensor's sharding propagation runs whole-shape ops under the simulation's own fake mode;
    counted, they would show the unsharded model as optimizer state (and its FLOPs as the rank's)."""
    optimizer_state, flops_per_param_token = _optimizer_state_and_flops(tmp_path)
    # Two Adam moments of this rank's rows (plus the step counts and padding), not of the whole model.
    assert optimizer_state < 2.2
    # Matmul FLOPs of this rank's tokens only: forward + backward ~ 6 x params x tokens (+ recompute).
    assert flops_per_param_token < 10


def test_without_the_workaround_the_tracker_counts_the_whole_model(tmp_path, monkeypatch):
    """The torch behaviour the workaround exists for is still there: unmarked, DTensor's propagation
    is counted (when this fails, torch has fixed it and `motif.simulate.tracker.propagating` can go)."""
    monkeypatch.setattr(motif.simulate.step, "propagating", contextlib.nullcontext)
    optimizer_state, _ = _optimizer_state_and_flops(tmp_path)
    assert optimizer_state > 3  # the unsharded model's moments, W = 4 times this rank's
