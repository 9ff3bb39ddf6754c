"""`motif plan`'s memory model against the simulation of the same stage (tensor peaks per rank)."""

import dataclasses

import pytest

from motif.plan import memory_per_gpu, resolve_stages
from motif.simulate import devices
from motif.simulate.simulate import simulate_stage
from motif.simulate.timing import Network

from .conftest import JOBS, small_stage

MODEL = {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 3}


def _peak(shape, stage, world: int | None = None, **kwargs) -> int:
    """The simulation's per-rank peak. Memory only: a datasheet device and a fixed network, so no
    operator is replayed and no loopback measured (tests/simulate/test_replay.py times a CPU stage)."""
    world = world or stage.parallel.world_size
    network = Network(1e9, 1e9, stage.parallel.procs_per_node, world)
    return simulate_stage(shape, stage, world_size=world, device=devices.device("h100"), network=network, **kwargs)[
        "peak_bytes"
    ]


def _planned_tensors(shape, world: int, seq_len: int) -> int:
    stage = shape.stage
    stage = dataclasses.replace(
        stage,
        data=dataclasses.replace(stage.data, seq_len=seq_len),
        parallel=dataclasses.replace(stage.parallel, engine="fsdp", nodes=1, procs_per_node=world),
    )
    m = memory_per_gpu(
        shape.grown, shape.trainable, stage, shape.largest_trainable_group(), shape.first_trained_layer()
    )
    return m.total - m.overhead


@pytest.mark.parametrize(
    ("precision", "checkpointing", "seq_len", "world"),
    [
        ("bf16", True, 128, 4),
        ("bf16", True, 512, 16),
        ("bf16", False, 256, 8),
        ("fp32", True, 512, 4),
        ("fp32", False, 128, 16),
    ],
)
def test_plan_within_10_percent_of_the_simulation(tmp_path, precision, checkpointing, seq_len, world):
    path = small_stage(tmp_path, train__precision=precision, train__activation_checkpointing=checkpointing)
    doc = path.read_text().replace("hidden_size: 128", "hidden_size: 256")
    doc = doc.replace("intermediate_size: 384", "intermediate_size: 768").replace(
        "vocab_size: 1024", "vocab_size: 4096"
    )
    doc = doc.replace("num_hidden_layers: 2", "num_hidden_layers: 3")
    path.write_text(doc)
    (shape,) = resolve_stages([path])
    assert shape.grown.hidden_size == MODEL["hidden_size"] and shape.grown.vocab_size == MODEL["vocab_size"]
    simulated = _peak(shape, shape.stage, world, seq_len=seq_len)
    planned = _planned_tensors(shape, world, seq_len)
    assert abs(planned / simulated - 1) <= 0.10, (planned, simulated)


def test_plan_agrees_on_a_llamapro_stage_with_frozen_blocks():
    """jobs/tiny's depth stage: only the new blocks train (no gradient or Adam state for the rest).

    The plan counts the frozen blocks after the first new one as trained blocks, which save more
    for backward (a frozen linear layer keeps no input): it may only overestimate, by at most 15%.
    """
    shape = resolve_stages(sorted((JOBS / "tiny").glob("*.yaml")))[1]
    assert shape.new_layers and shape.trainable < shape.grown.num_params() / 2
    stage = dataclasses.replace(shape.stage, parallel=dataclasses.replace(shape.stage.parallel, engine="fsdp"))
    simulated = _peak(shape, stage, 4)
    planned = _planned_tensors(dataclasses.replace(shape, stage=stage), 4, stage.data.seq_len)
    assert 1 <= planned / simulated <= 1.15, (planned, simulated)


def test_plan_agrees_where_the_optimizer_step_sets_the_peak(tmp_path):
    """One micro-batch of short sequences: activations are small, the peak is every state at the step."""
    path = small_stage(tmp_path, data__seq_len=16, train__micro_batch_size=1, train__grad_accum_steps=1)
    (shape,) = resolve_stages([path])
    m = memory_per_gpu(shape.grown, shape.trainable, shape.stage, shape.largest_trainable_group())
    assert m.peak_phase == "optimizer step"
    simulated = _peak(shape, shape.stage)
    assert abs(m.peak / simulated - 1) <= 0.10, (m.peak, simulated)
