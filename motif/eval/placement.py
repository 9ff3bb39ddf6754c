"""One model's blocks on successive devices, for evaluating a model larger than one GPU.

Why it is built this way:

* **Layers split, not tensors.** Llama-3-Motif 102B is 204 GB in bf16: more than one 80 GB GPU
  holds, well within eight. Evaluation has no gradients and no optimizer state, so the simplest
  layout suffices: contiguous runs of blocks, one run per GPU, the hidden state handed from one
  GPU to the next (what transformers' `device_map` and lm-eval's `parallelize=True` do). One GPU
  computes at a time; scoring is bound by memory, not by throughput.
* **Planned from the shape alone.** `plan_placement` needs only `ModelArgs`, so "does this fit on
  8 x 80 GB?" is answered before a weight is read, and the weights are then read straight onto
  the device that keeps them (no 204 GB staging copy in host memory).
* **Hand-offs by forward pre-hooks.** The model code stays the plain single-device Llama: a hook
  on each block (and on the final norm) moves its inputs to the block's device. An MSG depth block
  blends its output with its input (`h + m * (block(h) - h)`) in the model's own loop, so such a
  block is never the first on a device: both tensors are then on the same device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from motif.errors import MotifError
from motif.model.args import ModelArgs
from motif.model.checkpoint import pack_in_order

EMBED = "model.embed_tokens"


class PlacementError(MotifError):
    """The model does not fit on the devices given."""


@dataclass(frozen=True)
class Placement:
    """Which device holds each part of the model, and how many weight bytes each device holds."""

    devices: tuple[str, ...]
    embed: int  # device index of the embedding (and of the inputs, RoPE tables and masks)
    layers: tuple[int, ...]  # device index of each block
    head: int  # device index of the final norm and lm_head (and of the logits)
    weight_bytes: tuple[int, ...]  # per device

    @property
    def input_device(self) -> str:
        return self.devices[self.embed]

    @property
    def output_device(self) -> str:
        return self.devices[self.head]

    def describe(self) -> str:
        """One line per device: `cuda:0: embedding, layers 0-11, 25.3 GiB`."""
        lines = []
        for d, name in enumerate(self.devices):
            parts = ["embedding"] if self.embed == d else []
            mine = [i for i, x in enumerate(self.layers) if x == d]
            if mine:
                parts.append(f"layers {mine[0]}-{mine[-1]}" if len(mine) > 1 else f"layer {mine[0]}")
            if self.head == d:
                parts.append("final norm + lm_head")
            lines.append(f"{name}: {', '.join(parts) or 'nothing'}, {self.weight_bytes[d] / 2**30:.1f} GiB")
        return "\n".join(lines)


def part_bytes(args: ModelArgs, itemsize: int) -> tuple[int, list[int], int]:
    """Weight bytes of the embedding, of each block and of the head (final norm + lm_head)."""
    shapes = args.tensor_shapes()
    layers = [0] * args.num_hidden_layers
    embed = head = 0
    for name, shape in shapes.items():
        n = math.prod(shape) * itemsize
        if name.startswith("model.layers."):
            layers[int(name.split(".")[2])] += n
        elif name.startswith(EMBED):
            embed += n
        else:
            head += n
    return embed, layers, head


def plan_placement(
    args: ModelArgs,
    devices: list[str],
    dtype: torch.dtype,
    memory_bytes: int | None = None,
    headroom_bytes: int = 0,
) -> Placement:
    """Split the model into contiguous runs, one per device, balancing weight bytes.

    Args:
        devices: in order; the embedding goes on the first, the head on the last (on the first for
            a tied head, which shares the embedding's weight).
        memory_bytes: what one device holds (None: no check, e.g. CPU).
        headroom_bytes: kept free on every device for activations and logits.

    Raises:
        PlacementError: the weights do not fit, naming what each device would need.
    """
    if not devices:
        raise PlacementError("no devices to place the model on")
    embed, layers, head = part_bytes(args, dtype.itemsize)
    tied = args.tie_word_embeddings
    blend = set(args.growth.blend_layers) if args.growth else set()
    # Units that never straddle two devices: an MSG depth block stays with the block before it.
    units: list[list[int]] = []
    for i in range(len(layers)):
        if i in blend and units:
            units[-1].append(i)
        else:
            units.append([i])
    sizes = [sum(layers[i] for i in u) for u in units]
    # The embedding opens the first run and the head closes the last one; a tied head shares the
    # embedding's weight, so it stays on the first device and the hidden state returns there.
    items = [embed + (head if tied else 0), *sizes, 0 if tied else head]
    runs = _partition(items, len(devices))
    run_of = [0] * len(items)
    for r, run in enumerate(runs):
        for k in run:
            run_of[k] = r
    layer_device = [0] * len(layers)
    for u, unit in enumerate(units):
        for i in unit:
            layer_device[i] = run_of[u + 1]
    head_device = 0 if tied else run_of[-1]
    weight = [0] * len(devices)
    for k, size in enumerate(items):
        weight[run_of[k]] += size
    placement = Placement(tuple(devices), 0, tuple(layer_device), head_device, tuple(weight))
    if memory_bytes is not None:
        budget = memory_bytes - headroom_bytes
        worst = max(range(len(devices)), key=lambda d: weight[d])
        if weight[worst] > budget:
            raise PlacementError(
                f"the model needs {weight[worst] / 2**30:.1f} GiB of weights on {devices[worst]} "
                f"({sum(weight) / 2**30:.1f} GiB over {len(devices)} devices, {dtype_name(dtype)}), but a device "
                f"holds {memory_bytes / 2**30:.1f} GiB less {headroom_bytes / 2**30:.1f} GiB headroom: "
                "use more devices or a smaller dtype"
            )
    return placement


def _partition(items: list[int], n: int) -> list[list[int]]:
    """Split `items` (indices kept in order) into at most `n` contiguous runs, minimising the largest sum.

    Binary search on the capacity, greedy packing at each: optimal for contiguous splits.
    """

    lo, hi = max(items), sum(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(pack_in_order(items, mid)) <= n:
            hi = mid
        else:
            lo = mid + 1
    return pack_in_order(items, lo)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- applying a placement ------------------------------------------------------------------------


def param_device(placement: Placement, name: str) -> str:
    """The device a weight (HF name) lives on under `placement`."""
    if name.startswith("model.layers."):
        return placement.devices[placement.layers[int(name.split(".")[2])]]
    if name.startswith(EMBED):
        return placement.input_device
    return placement.output_device


def attach(model: torch.nn.Module, placement: Placement) -> list[torch.utils.hooks.RemovableHandle]:
    """Install the hand-offs on a model whose weights already sit where `placement` says.

    Returns the hook handles (removing them restores the single-device model).
    """
    if getattr(model, "_mask_blend", None) is not None:
        # MSG depth blends in the model's own loop on the block's device; a 0-d CPU tensor
        # combines with tensors on any device, so the shared blend mask needs no copy per device.
        model._mask_blend = model._mask_blend.cpu()
    handles = []
    for i, block in enumerate(model.model.layers):
        handles.append(
            block.register_forward_pre_hook(_mover(placement.devices[placement.layers[i]]), with_kwargs=True)
        )
    handles.append(model.model.norm.register_forward_pre_hook(_mover(placement.output_device), with_kwargs=True))
    return handles


def _mover(device: str):
    target = torch.device(device)

    def hook(module, args, kwargs):
        return tuple(_to(a, target) for a in args), {k: _to(v, target) for k, v in kwargs.items()}

    return hook


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device, non_blocking=True)
    if value is not None and hasattr(value, "__dataclass_fields__"):  # the model's Masks
        return type(value)(**{f.name: _to(getattr(value, f.name), device) for f in fields(value)})
    return value
