"""Per-rank memory of a simulated step: FSDP2's `FSDPMemTracker`, plus where its peak was reached.

Workaround (torch 2.13): DTensor's sharding propagation computes an op's output metadata by
running the op on *global*-shape tensors under `detect_fake_mode() or FakeTensorMode()`. Under a
simulation that is the simulation's own fake mode, so the tracker (which skips propagation only
when it runs under a different fake mode) counts whole-model temporaries: the optimizer step of a
sharded model shows the unsharded model's size as optimizer state. `propagating()` marks those
calls, and the tracker and the operator counter ignore what runs inside them.
"""

from __future__ import annotations

import contextlib
import threading

from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import _TOTAL_KEY
from torch.distributed.tensor._sharding_prop import ShardingPropagator

_inside = threading.local()


def in_propagation() -> bool:
    """True while DTensor computes an output's metadata on global shapes (no real memory)."""
    return getattr(_inside, "depth", 0) > 0


@contextlib.contextmanager
def propagating():
    """Mark DTensor's metadata propagation for the duration (see the module docstring)."""
    original = ShardingPropagator._propagate_tensor_meta_non_cached

    def marked(self, op_schema):
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            return original(self, op_schema)
        finally:
            _inside.depth -= 1

    ShardingPropagator._propagate_tensor_meta_non_cached = marked
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = original


class StepMemTracker(FSDPMemTracker):
    """FSDPMemTracker that skips DTensor propagation and records where the peak was reached.

    `phase` is set by the caller ("micro-batch 2/4", "clip", "optimizer step"); the module is the
    innermost one active when the peak was reached.
    """

    def __init__(self, model, optimizer):
        super().__init__(model, optimizer)
        self.phase = "set-up"
        self.peak_at = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if in_propagation():
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _update_peak_stats(self, peak_state) -> None:
        # The rank's peak only: the per-module peaks the base class also keeps (a walk over every
        # module, with a snapshot copy, after every operator) are not reported, and at 96 blocks
        # they were most of a simulation's time.
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                self._peak_mem[dev] = snap[_TOTAL_KEY]
                self._peak_mem_snap[dev] = dict(snap)
                self.peak_at = self._where()

    def _where(self) -> str:
        where = "backward" if self._mod_tracker.is_bw else "forward"
        if self._in_opt or self.phase in ("clip", "optimizer step"):
            where = ""
        # Outside every module during a micro-batch is the loss (the cross-entropy runs on the logits).
        module = _innermost(self._mod_tracker.parents) or ("loss" if self.phase.startswith("micro-batch") else "")
        return ", ".join(x for x in (self.phase, where, module) if x)


def _innermost(parents: set[str]) -> str:
    """The deepest module name among the active ones ("Global" alone: outside any module)."""
    names = [p for p in parents if p != "Global"]
    return max(names, key=lambda n: (n.count("."), n)) if names else ""
