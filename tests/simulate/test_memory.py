"""The simulation's memory: fake tensors against real ones, and the DTensor propagation workaround."""

import pytest

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


def test_dtensor_propagation_is_not_counted(tmp_path):
    """DTensor's sharding propagation runs whole-shape ops under the simulation's own fake mode;
    counted, they would show the unsharded model as optimizer state (and its FLOPs as the rank's)."""
    path = small_stage(tmp_path)
    memory, record = _simulate(path, fake=True)
    (shape,) = resolve_stages([path])
    sharded_fp32 = 4 * shape.grown.num_params() / 4  # 4 ranks
    # Two Adam moments of this rank's rows (plus the step counts and padding), not of the whole model.
    assert memory.by_category_bytes["optimizer_state"] < 2.2 * sharded_fp32
    # Matmul FLOPs of this rank's tokens only: forward + backward ~ 6 x params x tokens (+ recompute).
    tokens = 2 * 2 * 64
    assert record.flops < 10 * shape.grown.num_params() * tokens
