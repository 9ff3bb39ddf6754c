"""What one simulated step asks of the device: the operators and collectives it issued, in order.

A dispatch mode below DTensor (it sees the local ops each rank runs) records, per operator, its
FLOPs (torch's FLOP counter formulas: matmuls, attention) and the bytes it reads and writes, and,
per collective (FSDP2's all-gathers and reduce-scatters, the clip's all-reduce), the size of the
whole buffer and the group size. `timing` turns the record into seconds.

Each compute event also keeps its call (`Call`: the operator and its arguments with every tensor
replaced by its shape, strides and dtype), so that a CPU can replay the step's own operators at
their own shapes and time them (`motif/simulate/replay.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from motif.simulate.tracker import in_propagation

c10d = torch.ops.c10d
# collective op -> (kind, index of the whole buffer, index of the local part)
COLLECTIVES = {
    c10d._allgather_base_.default: ("all_gather", 0, 1),
    c10d._reduce_scatter_base_.default: ("reduce_scatter", 1, 0),
    c10d.allreduce_.default: ("all_reduce", 0, 0),
}


aten = torch.ops.aten
# Fused attention on CPU (what SDPA runs on fake CPU tensors; the flash kernels on GPU keep the same
# tensors): op -> (matmuls' FLOPs per b*h*s_q*s_k*d, index of the query, index of is_causal).
# Causal attention does half the work (flash kernels skip the masked blocks).
ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu.default: (4, 0, 4),
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default: (8, 1, 7),
}


# Ops that move no data: allocations and views that the schema does not mark as views.
NO_TRAFFIC = {
    aten.empty,
    aten.empty_strided,
    aten.new_empty,
    aten.new_empty_strided,
    aten.empty_like,
    aten._unsafe_view,
    aten.lift_fresh,
    aten.set_,
    aten.resize_,
}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument without its data."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Call:
    """An operator call without tensor data: equal calls cost the same, and one replay times them all.
    Lists in the arguments are kept as tuples (hashable); tensors as `TensorSpec`."""

    op: Any  # torch OpOverload
    args: tuple
    kwargs: tuple  # sorted (name, value) pairs

    @property
    def name(self) -> str:
        return str(self.op)


@dataclass
class Event:
    kind: str  # "compute" | "all_gather" | "reduce_scatter" | "all_reduce"
    flops: int = 0
    bytes: int = 0  # compute: bytes read + written; collective: the whole buffer
    group: int = 1  # collective: ranks in the group
    call: Call | None = None  # compute: the operator and its argument shapes (None where not hashable)


@dataclass
class Record:
    events: list[Event] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(e.flops for e in self.events)

    def collective_bytes(self, kind: str | None = None) -> int:
        return sum(e.bytes for e in self.events if e.kind != "compute" and kind in (None, e.kind))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class OpCounter(TorchDispatchMode):
    """Records every local operator and collective run while it is active."""

    def __init__(self):
        super().__init__()
        self.record = Record()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(t.__name__ == "DTensor" for t in types):
            return NotImplemented  # let DTensor turn it into local ops, seen below
        out = func(*args, **kwargs)
        if in_propagation():
            return out
        if func in COLLECTIVES:
            kind, whole, part = COLLECTIVES[func]
            buf, local = _tensors(args[whole])[0], _tensors(args[part])[0]
            # an all-reduce's group from its ProcessGroup; a gather's or scatter's from its sizes
            group = args[1].size() if kind == "all_reduce" else max(1, round(buf.numel() / max(local.numel(), 1)))
            self.record.events.append(Event(kind, bytes=_nbytes(buf), group=group))
            return out
        if func.namespace in ("c10d", "_c10d_functional"):
            return out  # communication not modelled above (a barrier, a broadcast): no compute to time
        if func in ATTENTION:
            flops = _attention_flops(func, args, kwargs)
        elif func._overloadpacket in flop_registry:
            flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
        elif (_tensors(out) or _writes(func)) and not func.is_view and func._overloadpacket not in NO_TRAFFIC:
            flops = 0  # an in-place op that returns nothing (the fused AdamW, the clip's _foreach_mul_) counts too
        else:
            return out
        moved = _moved(args, out) + (0 if _tensors(out) else _written(func, args, kwargs))
        self.record.events.append(Event("compute", flops=flops, bytes=moved, call=call_of(func, args, kwargs)))
        return out


def _attention_flops(func, args, kwargs) -> int:
    per, q_index, causal_index = ATTENTION[func]
    q, k = args[q_index], args[q_index + 1]
    b, h, s_q, d = q.shape
    causal = args[causal_index] if len(args) > causal_index else kwargs.get("is_causal", False)
    return int(per * b * h * s_q * k.shape[2] * d * (0.5 if causal else 1.0))


def _moved(args, out) -> int:
    """Bytes read and written (an in-place op reads and writes its buffer: both count)."""
    return sum(_nbytes(t) for t in _tensors(args)) + sum(_nbytes(t) for t in _tensors(out))


def _writes(func) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _written(func, args, kwargs) -> int:
    """Bytes of the arguments an op writes in place (read once by `_moved`, written here)."""
    total = 0
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(a.name)
            total += sum(_nbytes(t) for t in _tensors(value))
    return total


def _spec(x):
    if isinstance(x, torch.Tensor):
        return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype)
    if isinstance(x, (list, tuple)):
        return tuple(_spec(v) for v in x)
    return x


def call_of(func, args, kwargs) -> Call | None:
    """The call's hashable form, or None when an argument is not hashable (it is then not replayed)."""
    call = Call(func, _spec(args), tuple(sorted((k, _spec(v)) for k, v in kwargs.items())))
    try:
        hash(call)
    except TypeError:
        return None
    return call
