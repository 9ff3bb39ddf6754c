"""The time model on hand-made records: roofline, ring bytes, overlap of gathers with compute."""

from motif.simulate.counter import Event, Record
from motif.simulate.devices import DEVICES, Device
from motif.simulate.timing import Network, step_time

DEV = Device("test", bf16_flops=1e12, fp32_flops=1e12, memory_bytes_per_s=1e9, efficiency=1.0)
NET = Network(intra_node_bytes_per_s=1e9, inter_node_bytes_per_s=1e8, procs_per_node=4, world_size=8)


def _blocks(n: int, flops: float, gathered: int) -> Record:
    """n groups, each: all-gather of `gathered` bytes over 8 ranks, then one matmul of `flops`."""
    events = []
    for _ in range(n):
        events += [Event("all_gather", bytes=gathered, group=8), Event("compute", flops=int(flops))]
    return Record(events)


def test_roofline_takes_the_slower_of_flops_and_bytes():
    t = step_time(
        Record([Event("compute", flops=10**12, bytes=10**8), Event("compute", bytes=10**9)]), DEV, NET, "fp32"
    )
    assert t.seconds == t.compute_seconds == 1.0 + 1.0


def test_ring_bytes_and_the_link_the_group_uses():
    inter = step_time(Record([Event("all_gather", bytes=8 * 10**8, group=8)]), DEV, NET, "bf16")
    intra = step_time(Record([Event("reduce_scatter", bytes=8 * 10**8, group=4)]), DEV, NET, "bf16")
    assert inter.wire_bytes == 7 * 10**8 and abs(inter.seconds - 7.0) < 1e-9  # 7/8 of it at 1e8 B/s
    assert intra.wire_bytes == 6 * 10**8 and abs(intra.seconds - 0.6) < 1e-9  # 3/4 of it at 1e9 B/s


def test_gathers_hide_behind_compute_one_group_ahead():
    # compute-bound: 1 s of compute per group, 0.35 s of gathering: only the first gather shows
    t = step_time(_blocks(10, 1e12, 4 * 10**7), DEV, NET, "bf16")
    assert abs(t.seconds - (0.35 + 10 * 1.0)) < 1e-6
    # communication-bound: the gathers run back to back and the compute waits for each
    t = step_time(_blocks(10, 1e11, 4 * 10**7), DEV, NET, "bf16")
    assert abs(t.seconds - (10 * 0.35 + 0.1)) < 1e-6


def test_the_peak_table_has_its_sources():
    import motif.simulate.devices as devices

    for name, device in DEVICES.items():
        assert name in devices.__doc__ and device.bf16_flops > device.fp32_flops > 0


def test_a_one_machine_cpu_world_runs_over_measured_loopback():
    from motif.simulate.loopback import measure_loopback

    # gloo over TCP loopback on any machine: well above 10 MB/s, well below memory bandwidth.
    assert 1e7 < measure_loopback(runs=2) < 1e12
