"""Step time from a simulated step's record: a roofline per operator and two overlapping streams.

- **Compute**: each operator takes the device's time for it: on a GPU table entry the roofline,
  max(FLOPs / sustained peak, bytes moved / memory bandwidth); on a CPU the time measured for
  the same call replayed on this machine (`replay.MeasuredCpu`).
- **Collectives**: ring algorithms; an all-gather or reduce-scatter moves (n-1)/n of the whole
  buffer per rank, an all-reduce twice that, at the network's bandwidth per GPU: intra-node when
  the group fits in a node (a shard group is consecutive ranks), inter-node otherwise.
- **Overlap**, as FSDP2 schedules it: all-gathers run one after another on their stream, reduce-
  scatters (and all-reduces) on theirs. An all-gather may start once the compute of the group
  before it has started (FSDP2 prefetches one group ahead, forward and backward); the first
  compute after an all-gather waits for the oldest gather not yet waited on. A reduce-scatter
  starts when the gradients it reduces are computed. Both streams share one link: the step is at
  least the sum of every collective's time, and ends when compute and both streams are done.
  On a CPU machine nothing overlaps: gloo moves the bytes with the same cores that compute
  (`Network.overlaps_compute`), so the step is compute plus collectives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from motif.simulate.counter import Record
from motif.simulate.devices import Device
from motif.simulate.replay import MeasuredCpu


@dataclass
class Network:
    intra_node_bytes_per_s: float
    inter_node_bytes_per_s: float
    procs_per_node: int
    world_size: int
    # False where the collectives run on the cores that compute (gloo on a CPU machine: its copies and
    # loopback TCP take CPU time from the ranks), so none of their time hides behind compute.
    overlaps_compute: bool = True

    def bandwidth(self, kind: str, group: int) -> float:
        """Shard groups are consecutive ranks; HSDP's replica group (all-reduce) strides across nodes."""
        spans = self.world_size > self.procs_per_node if kind == "all_reduce" else group > self.procs_per_node
        return self.inter_node_bytes_per_s if spans else self.intra_node_bytes_per_s


@dataclass
class StepTime:
    seconds: float
    compute_seconds: float
    comm_seconds: float
    wire_bytes: int  # bytes each rank sends (ring), all collectives of the step


def wire_bytes(kind: str, whole: int, group: int) -> float:
    if group <= 1:
        return 0.0
    share = (group - 1) / group * whole
    return 2 * share if kind == "all_reduce" else share


def step_time(record: Record, dev: Device | MeasuredCpu, net: Network, precision: str) -> StepTime:
    compute_clock = gather_clock = reduce_clock = 0.0
    compute_total = comm_total = 0.0
    wire_total = 0.0
    gathers: deque[float] = deque()  # end times of all-gathers not yet waited on
    waiting = False  # an all-gather was issued since the last compute op
    group_start = 0.0  # when the compute of the latest group began
    for e in record.events:
        if e.kind == "compute":
            seconds = dev.compute_seconds(e, precision)
            if waiting and gathers:
                compute_clock = max(compute_clock, gathers.popleft())
                group_start = compute_clock
            waiting = False
            compute_clock += seconds
            compute_total += seconds
            continue
        wire = wire_bytes(e.kind, e.bytes, e.group)
        seconds = wire / net.bandwidth(e.kind, e.group)
        wire_total += wire
        comm_total += seconds
        if e.kind == "all_gather":
            gather_clock = max(gather_clock, group_start) + seconds
            gathers.append(gather_clock)
            waiting = True
        else:  # needs what was computed so far
            reduce_clock = max(reduce_clock, compute_clock) + seconds
            if e.kind == "all_reduce" and e.bytes < 1 << 20:
                compute_clock = max(compute_clock, reduce_clock)  # a small blocking reduction (the clip's norm)
    end = max(compute_clock, gather_clock, reduce_clock, comm_total)
    if not net.overlaps_compute:
        end = compute_total + comm_total
    return StepTime(end, compute_total, comm_total, int(wire_total))
