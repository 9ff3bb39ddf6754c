"""The CPU time model: the step's calls recorded with their shapes, replayed, and used as measured."""

import torch

from motif.simulate import replay
from motif.simulate.counter import Call, Event, OpCounter, Record, TensorSpec
from motif.simulate.devices import Device
from motif.simulate.timing import Network, step_time

aten = torch.ops.aten
NET = Network(1e9, 1e9, 4, 4)
SLOW = Device("slow", bf16_flops=1e9, fp32_flops=1e9, memory_bytes_per_s=1e9, efficiency=1.0)


def _mm(m: int, k: int, n: int) -> Call:
    return Call(
        aten.mm.default, (TensorSpec((m, k), (k, 1), torch.float32), TensorSpec((k, n), (1, k), torch.float32)), ()
    )


def test_a_call_is_its_operator_and_shapes():
    a, b, c, other = torch.randn(8, 16), torch.randn(16, 4), torch.randn(8, 4), torch.randn(8, 16)
    with OpCounter() as counter:
        a @ b
        other @ b  # other values, same shapes: the same call
        a.t() @ c  # a transposed view: other strides, another call
    first, second, third = (e.call for e in counter.record.events)
    assert first == second and hash(first) == hash(second) and first != third
    assert first.op == aten.mm.default and first.args[0] == TensorSpec((8, 16), (16, 1), torch.float32)
    assert third.args[0].stride == (1, 16)


def test_an_in_place_op_that_returns_nothing_is_counted():
    """The fused AdamW and the clip's `_foreach_mul_` return nothing: their traffic was missed."""
    xs = [torch.zeros(100), torch.zeros(50)]
    with OpCounter() as counter:
        torch._foreach_mul_(xs, 2.0)
    (e,) = counter.record.events
    assert e.kind == "compute" and e.bytes == 2 * 150 * 4  # read and written
    assert e.call.args[0] == (TensorSpec((100,), (1,), torch.float32), TensorSpec((50,), (1,), torch.float32))


def test_arguments_have_the_recorded_shapes_strides_and_dtypes():
    expanded = TensorSpec((4, 3), (0, 1), torch.float32)  # a broadcast row
    index = TensorSpec((5,), (1,), torch.int64)
    args, _ = replay.arguments(Call(aten.add.Tensor, (expanded, (index, 2)), ()))
    assert args[0].shape == (4, 3) and args[0].stride() == (0, 1)
    assert isinstance(args[1], list) and args[1][0].dtype == torch.int64 and not args[1][0].any()  # in range
    wall, cpu = replay.time_call(_mm(64, 32, 16), rounds=1)
    assert wall > 0 and cpu >= 0


def test_distinct_calls_are_replayed_once_and_unreplayable_ones_counted():
    good, big = _mm(32, 32, 32), _mm(64, 64, 64)
    bad = Call(aten.mm.default, (TensorSpec((3, 4), (4, 1), torch.float32),) * 2, ())  # shapes that do not multiply
    events = [Event("compute", 1, 1, call=c) for c in (good, good, bad, big)]
    assert replay.distinct_calls(Record(events), max_bytes=10) == [good, bad, big]
    wall, cpu, failed = replay.time_calls([good, bad], threads=1)
    assert set(wall) == set(cpu) == {good} and failed == 1 and wall[good] > 0


def test_the_cpu_device_charges_measured_seconds_and_its_share():
    known, unknown = _mm(8, 8, 8), _mm(16, 16, 16)
    cpu = replay.MeasuredCpu(SLOW, {known: 0.5}, flops_share=0.5, bytes_share=0.25)
    record = Record(
        [
            Event("compute", flops=10**9, bytes=1, call=known),  # measured: 0.5 s, at half the machine
            Event("compute", flops=10**9, bytes=1, call=unknown),  # not replayed: the roofline, 1 s
            Event("compute", bytes=10**9),  # no call: the roofline at the copy rate, a quarter of it
        ]
    )
    t = step_time(record, cpu, NET, "fp32")
    assert abs(t.compute_seconds - (0.5 / 0.5 + 1.0 / 0.5 + 1.0 / 0.25)) < 1e-9
    # on the CPU clock: the calls' CPU seconds, no share (a core always free)
    cpu.op_cpu_seconds = {known: 0.25}
    assert abs(step_time(record, cpu.cpu_clock(), NET, "fp32").compute_seconds - (0.25 + 1.0 + 1.0)) < 1e-9
    assert cpu.summary()["replayed_calls"] == 1


def test_the_main_gemm_is_the_shape_with_the_most_flops():
    record = Record([Event("compute", flops=f, call=_mm(*s)) for s, f in (((4, 8, 16), 10), ((2, 2, 2), 30))])
    record.events.append(Event("compute", flops=15, call=_mm(4, 8, 16)))
    assert replay.main_gemm(record) == (2, 2, 2)
    assert replay.main_gemm(Record()) == (1024, 1024, 1024)


def test_a_cpu_stage_is_timed_by_replaying_its_own_calls(tmp_path, monkeypatch):
    """`device: cpu` with no --device-kind: every compute call of the step replayed, none left to the roofline."""
    from motif.plan import resolve_stages
    from motif.simulate.simulate import simulate_stage
    from motif.simulate.step import run_step

    from .conftest import small_stage

    path = small_stage(tmp_path, parallel__device="cpu", train__precision="fp32")
    (shape,) = resolve_stages([path])
    timed = {}

    def fixed(calls, threads=None, progress=None):
        timed.update({c: 1e-3 for c in calls})
        return dict(timed), dict(timed), 0

    monkeypatch.setattr(replay, "time_calls", fixed)
    row = simulate_stage(shape, shape.stage, cpu_threads=1, network=NET)
    m = row["cpu_measured"]
    assert row["device_kind"] == "cpu" and m["replayed_calls"] == len(timed) > 10 and m["fallback_calls"] == 0
    assert 0 < m["flops_share"] <= 1 and 0 < m["bytes_share"] <= 1
    # the same step again: each of its compute calls costs the replay's millisecond over the rank's share
    (again,) = resolve_stages([path])
    _, record = run_step(again, again.stage, lambda message: None)
    calls = [e for e in record.events if e.kind == "compute"]
    assert all(e.call in timed for e in calls)
    expected = sum(1e-3 / (m["flops_share"] if e.flops else m["bytes_share"]) for e in calls)
    assert abs(row["compute_seconds"] - expected) < 1e-6 * expected
    assert abs(m["compute_cpu_seconds"] - len(calls) * 1e-3) < 1e-6 * expected
