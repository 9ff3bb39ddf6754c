"""Growth targets and the checks that reject impossible ones before any weight is read."""

from __future__ import annotations

from typing import Any

from motif.config import GrowthShape, GrowthTargets  # the stage file's schema; re-exported for growth's callers
from motif.errors import GrowthError
from motif.model.args import ModelArgs

__all__ = ["GrowthShape", "GrowthTargets", "check_seed", "check_targets", "grown_args", "shape_dict"]

DEPTH_METHODS = ("llamapro", "msg")
SEED_LIMIT = 2**32  # seeds are mixed with tensor names into 64-bit generator seeds (tensors.generator_for)


def check_targets(args: ModelArgs, targets: GrowthTargets, depth_method: str = "llamapro") -> GrowthShape:
    """Validate `targets` against the source shape; return them resolved. Raises GrowthError."""
    if depth_method not in DEPTH_METHODS:
        raise GrowthError(f"depth_method: expected one of {', '.join(DEPTH_METHODS)}, got {depth_method!r}")
    if args.growth is not None:
        raise GrowthError(
            f"the source still has growth masks pending (m = {args.growth.mask}); finish that growth stage "
            "(ramp the mask to 1, remove the masks) before growing again"
        )
    t = targets.resolve(args)
    before = {
        "layers": args.num_hidden_layers,
        "hidden": args.hidden_size,
        "intermediate": args.intermediate_size,
        "heads": args.num_attention_heads,
        "kv_heads": args.num_key_value_heads,
    }
    for key, old in before.items():
        new = getattr(t, key)
        if isinstance(new, bool) or not isinstance(new, int) or new <= 0:
            raise GrowthError(f"{key}: expected a positive integer, got {new!r}")
        if new < old:
            raise GrowthError(f"{key}: {new} would shrink the model (source has {old}); growth only adds")
    if all(getattr(t, k) == v for k, v in before.items()):
        raise GrowthError(f"nothing to grow: every target equals the source shape ({_describe(before)})")
    hd = args.head_dim
    if t.hidden % hd:
        raise GrowthError(f"hidden: {t.hidden} is not a multiple of head_dim {hd} (head_dim never changes)")
    if t.heads % t.kv_heads:
        raise GrowthError(f"heads: {t.heads} query heads is not a multiple of {t.kv_heads} KV heads")
    if t.heads // t.kv_heads < args.n_rep:
        raise GrowthError(
            f"kv_heads: {t.kv_heads} KV heads for {t.heads} query heads gives {t.heads // t.kv_heads} query heads "
            f"per KV head, fewer than the source's {args.n_rep}: the old heads of a group could not keep their KV head"
        )
    added = t.layers - args.num_hidden_layers
    if added and args.num_hidden_layers % added:
        raise GrowthError(
            f"layers: {args.num_hidden_layers} -> {t.layers} adds {added} blocks, which does not divide "
            f"{args.num_hidden_layers} ({depth_method} inserts one block after every L/(L'-L) blocks)"
        )
    return t


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise GrowthError(f"seed: expected an integer 0 <= seed < 2**32, got {seed!r}")


def grown_args(args: ModelArgs, targets: GrowthTargets | GrowthShape) -> ModelArgs:
    """The shape after growth (no masks; the operators add the pending mask state)."""
    shape = targets if isinstance(targets, GrowthShape) else targets.resolve(args)
    return args.replace(
        num_hidden_layers=shape.layers,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=args.head_dim,  # explicit: hidden / heads may no longer give it
        growth=None,
    )


def shape_dict(args: ModelArgs) -> dict[str, Any]:
    return {
        "layers": args.num_hidden_layers,
        "hidden": args.hidden_size,
        "intermediate": args.intermediate_size,
        "heads": args.num_attention_heads,
        "kv_heads": args.num_key_value_heads,
        "head_dim": args.head_dim,
        "vocab": args.vocab_size,
        "params": args.num_params(),
    }


def _describe(shape: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in shape.items())
