"""Growth operators: pure functions from a growth plan to a larger growth plan.

A `GrowthPlan` says, for every tensor of the grown model, which source tensor it comes from and
where the source's rows and columns land in it (`Axis`); everything else in the tensor is new. The
plan is computed from shapes alone, so impossible targets fail before any weight is read, and the
same plan drives growth of an in-memory model (`apply.grow_model`), of a checkpoint streamed tensor
by tensor (`stream.grow_checkpoint`) and of the optimizer state (`optim`). `tensors.grow_tensor`
turns one plan entry and its source tensor into the grown tensor.

Operators compose in any order: a depth operator copies plan entries (with the width placements
they already carry), a width operator rewrites the placements of every entry, including blocks a
depth operator inserted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from motif.growth.targets import GrowthTargets, check_targets, grown_args
from motif.model.args import GrowthState, ModelArgs

# Which dimension of each weight (by the last-but-one part of its HF name) is the hidden size, the
# FFN size, the query-head axis or the KV-head axis.
HIDDEN_DIM = {
    "embed_tokens": 1,
    "lm_head": 1,
    "norm": 0,
    "input_layernorm": 0,
    "post_attention_layernorm": 0,
    "q_proj": 1,
    "k_proj": 1,
    "v_proj": 1,
    "o_proj": 0,
    "gate_proj": 1,
    "up_proj": 1,
    "down_proj": 0,
}
FFN_DIM = {"gate_proj": 0, "up_proj": 0, "down_proj": 1}
HEAD_DIM = {"q_proj": 0, "o_proj": 1}
KV_DIM = {"k_proj": 0, "v_proj": 0}
ZEROED_BY_LLAMAPRO = ("o_proj", "down_proj")


def kind(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `q_proj`."""
    return name.split(".")[-2]


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


@dataclass(frozen=True)
class Axis:
    """One grown dimension: source entry i lands at `index[i]` (or at i when `index` is None)."""

    old: int
    new: int
    index: tuple[int, ...] | None = None

    def positions(self) -> torch.Tensor:
        if self.index is None:
            return torch.arange(self.old)
        return torch.tensor(self.index, dtype=torch.int64)

    def new_positions(self) -> torch.Tensor:
        taken = torch.zeros(self.new, dtype=torch.bool)
        taken[self.positions()] = True
        return (~taken).nonzero().flatten()


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor of the grown model is made."""

    source: str  # source tensor name
    shape: tuple[int, ...]  # grown shape
    axes: tuple[Axis | None, ...]  # per dimension; None: unchanged size, same positions
    zero: bool = False  # all zeros (LlamaPro's output projections of an inserted block)
    fresh: bool = False  # a tensor of an inserted block: wholly new for the optimizer (step reset)
    init: Literal["normal", "mean"] = "normal"  # new entries: normal(0, std of source) or the source's mean

    @property
    def is_copy(self) -> bool:
        """Byte-identical to its source."""
        return not self.zero and all(a is None for a in self.axes)


@dataclass
class GrowthPlan:
    source: ModelArgs
    args: ModelArgs  # the grown shape, with the pending mask state in args.growth
    tensors: dict[str, TensorPlan]  # in checkpoint order of `args`
    operators: list[dict[str, Any]] = field(default_factory=list)
    new_layers: list[int] = field(default_factory=list)  # blocks inserted by LlamaPro or MSG depth

    def state(self) -> GrowthState:
        return self.args.growth or GrowthState()


Operator = Callable[[GrowthPlan, int], GrowthPlan]


def identity_plan(args: ModelArgs) -> GrowthPlan:
    shapes = args.tensor_shapes()
    tensors = {
        n: TensorPlan(n, s, (None,) * len(s), init="mean" if len(s) == 1 else "normal") for n, s in shapes.items()
    }
    return GrowthPlan(source=args, args=args.replace(growth=None), tensors=tensors)


# ---- depth ----------------------------------------------------------------------------------------


def _insert_blocks(plan: GrowthPlan, layers: int, method: str) -> GrowthPlan:
    old = plan.args.num_hidden_layers
    split = old // (layers - old)
    # new index -> (old index, inserted?): after every `split`-th old block, a copy of it.
    order: list[tuple[int, bool]] = []
    for i in range(old):
        order.append((i, False))
        if (i + 1) % split == 0:
            order.append((i, True))
    new_layers = [j for j, (_, inserted) in enumerate(order) if inserted]
    renumber = {i: j for j, (i, inserted) in enumerate(order) if not inserted}
    tensors: dict[str, TensorPlan] = {}
    by_layer: dict[int, list[tuple[str, TensorPlan]]] = {}
    for name, tp in plan.tensors.items():
        layer = layer_of(name)
        if layer is None:
            tensors[name] = tp
        else:
            by_layer.setdefault(layer, []).append((name.split(".", 3)[3], tp))
    body: dict[str, TensorPlan] = {}
    for j, (i, inserted) in enumerate(order):
        for rest, tp in by_layer[i]:
            if inserted:
                zero = method == "llamapro" and kind(rest) in ZEROED_BY_LLAMAPRO
                tp = dataclasses.replace(tp, zero=tp.zero or zero, fresh=True)
            body[f"model.layers.{j}.{rest}"] = tp
    tensors = {"model.embed_tokens.weight": tensors.pop("model.embed_tokens.weight"), **body, **tensors}
    state = plan.args.growth
    # Blocks blended by an earlier operator of this event move with the renumbering.
    blend = [renumber[i] for i in state.blend_layers] if state else []
    if method == "msg":
        blend += new_layers
    if state is not None or method == "msg":
        state = dataclasses.replace(state or GrowthState(), blend_layers=sorted(blend))
    args = plan.args.replace(num_hidden_layers=layers, growth=state)
    moved = [renumber.get(i, i) for i in plan.new_layers]
    op = {"name": f"{method}_depth", "layers": [old, layers], "new_layers": new_layers}
    return GrowthPlan(plan.source, args, tensors, [*plan.operators, op], sorted([*moved, *new_layers]))


def llamapro_depth(plan: GrowthPlan, layers: int) -> GrowthPlan:
    """LlamaPro: a copy after every L/(L'-L)-th block, its o_proj and down_proj zero (exact identity)."""
    return _insert_blocks(plan, layers, "llamapro")


def msg_depth(plan: GrowthPlan, layers: int) -> GrowthPlan:
    """MSG depth: inserted blocks (initialised as copies) blended in as h + m * (block(h) - h)."""
    return _insert_blocks(plan, layers, "msg")


# ---- width ----------------------------------------------------------------------------------------


def _regrow(plan: GrowthPlan, dims: dict[str, int], axis: Callable[[str], Axis]) -> dict[str, TensorPlan]:
    tensors = {}
    for name, tp in plan.tensors.items():
        dim = dims.get(kind(name))
        if dim is not None:
            ax = axis(name)
            if tp.axes[dim] is not None:
                raise ValueError(f"{name}: dimension {dim} grown twice in one growth event")
            shape = tuple(ax.new if d == dim else s for d, s in enumerate(tp.shape))
            axes = tuple(ax if d == dim else a for d, a in enumerate(tp.axes))
            tp = dataclasses.replace(tp, shape=shape, axes=axes)
        tensors[name] = tp
    return tensors


def _with_state(plan: GrowthPlan, **changes: Any) -> GrowthState:
    return dataclasses.replace(plan.args.growth or GrowthState(), **changes)


def _msg_size(plan: GrowthPlan, op_name: str, dims: dict[str, int], field: str, size: int) -> GrowthPlan:
    """Grow `<field>_size` to `size` along `dims` (old entries first); the old size is MSG state `field`."""
    size_field = f"{field}_size"
    old = getattr(plan.args, size_field)
    ax = Axis(old, size)
    tensors = _regrow(plan, dims, lambda name: ax)
    args = plan.args.replace(**{size_field: size}, growth=_with_state(plan, **{field: old}))
    op = {"name": op_name, field: [old, size]}
    return GrowthPlan(plan.source, args, tensors, [*plan.operators, op], plan.new_layers)


def msg_hidden(plan: GrowthPlan, hidden: int) -> GrowthPlan:
    """MSG hidden size: old dims first; the residual stream and every norm statistic are masked."""
    return _msg_size(plan, "msg_hidden", HIDDEN_DIM, "hidden", hidden)


def msg_ffn(plan: GrowthPlan, intermediate: int) -> GrowthPlan:
    """MSG FFN size: new gate/up rows and down columns; the new units' SwiGLU product is masked."""
    return _msg_size(plan, "msg_ffn", FFN_DIM, "intermediate", intermediate)


def head_positions(old_heads: int, old_kv: int, heads: int, kv_heads: int, head_dim: int) -> tuple[int, ...]:
    """Row of q_proj (column of o_proj) where each old row lands: KV group g becomes [old heads of g, new].

    Query head i uses KV head i // n_rep; appending heads would move old heads to other KV heads
    when n_rep changes, so each old head keeps its group and its slot within the group.
    """
    old_rep, rep = old_heads // old_kv, heads // kv_heads
    out: list[int] = []
    for h in range(old_heads):
        new_head = (h // old_rep) * rep + h % old_rep
        out.extend(range(new_head * head_dim, (new_head + 1) * head_dim))
    return tuple(out)


def msg_heads(plan: GrowthPlan, heads: int, kv_heads: int | None = None) -> GrowthPlan:
    """MSG attention heads (GQA-aware): interleave new query heads per KV group; mask their outputs."""
    a = plan.args
    kv_heads = kv_heads or a.num_key_value_heads
    hd = a.head_dim
    q_axis = Axis(
        a.num_attention_heads * hd,
        heads * hd,
        head_positions(a.num_attention_heads, a.num_key_value_heads, heads, kv_heads, hd),
    )
    tensors = _regrow(plan, HEAD_DIM, lambda name: q_axis)
    if kv_heads != a.num_key_value_heads:
        kv_axis = Axis(a.num_key_value_heads * hd, kv_heads * hd)  # new KV groups go last
        tensors = _regrow(dataclasses.replace(plan, tensors=tensors), KV_DIM, lambda name: kv_axis)
    state = _with_state(plan, heads=a.num_attention_heads, kv_heads=a.num_key_value_heads)
    args = a.replace(num_attention_heads=heads, num_key_value_heads=kv_heads, growth=state)
    op = {"name": "msg_heads", "heads": [a.num_attention_heads, heads], "kv_heads": [a.num_key_value_heads, kv_heads]}
    return GrowthPlan(plan.source, args, tensors, [*plan.operators, op], plan.new_layers)


# name -> operator. Each takes the plan and one target size.
OPERATORS: dict[str, Operator] = {
    "llamapro_depth": llamapro_depth,
    "msg_depth": msg_depth,
    "msg_hidden": msg_hidden,
    "msg_ffn": msg_ffn,
    "msg_heads": msg_heads,
}


def plan_growth(args: ModelArgs, targets: GrowthTargets, depth_method: str = "llamapro") -> GrowthPlan:
    """Check the targets and compose the operators they need: depth first, then width."""
    t = check_targets(args, targets, depth_method)
    plan = identity_plan(args)
    if t.layers != args.num_hidden_layers:
        plan = OPERATORS[f"{depth_method}_depth"](plan, t.layers)
    if t.hidden != args.hidden_size:
        plan = OPERATORS["msg_hidden"](plan, t.hidden)
    if t.intermediate != args.intermediate_size:
        plan = OPERATORS["msg_ffn"](plan, t.intermediate)
    if (t.heads, t.kv_heads) != (args.num_attention_heads, args.num_key_value_heads):
        plan = msg_heads(plan, t.heads, t.kv_heads)
    expected = grown_args(args, t).tensor_shapes()
    got = {n: tp.shape for n, tp in plan.tensors.items()}
    assert got == expected, "growth plan does not produce the target shape"
    plan.tensors = {n: plan.tensors[n] for n in expected}  # checkpoint order
    return plan
