"""`grow_stage`: the growth step of a stage file, idempotent so a restarted job can run it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from motif.config import StageConfig, check_input_shape
from motif.errors import CheckpointError, GrowthError
from motif.growth.provenance import same_request, source_fingerprint
from motif.growth.stream import grow_checkpoint
from motif.growth.targets import GrowthTargets, check_targets
from motif.model.checkpoint import open_checkpoint, read_args, read_provenance


def grow_stage(stage: StageConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Grow `stage.input` into `stage.growth.output`, or reuse an output grown by the same request.

    The returned provenance has `"reused": True` when the existing output was kept. An output that
    exists but holds anything else (another source, other targets, a partial copy) is an error
    unless `overwrite`.
    """
    where = stage.source_file or stage.name
    if stage.growth is None:
        raise GrowthError(f"{where}: motif.growth: this stage does not grow a model")
    if stage.input is None:
        raise GrowthError(f"{where}: motif.input: growth needs an input checkpoint")
    try:
        return _grow_stage(stage, overwrite, progress)
    except GrowthError as e:  # a target the source cannot reach: name the stage file and its key
        key = str(e).split(":", 1)[0]
        prefix = "motif.growth." if key in _TARGET_KEYS else ""
        raise GrowthError(f"{where}: {prefix}{e}") from None


_TARGET_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "depth_method")


def _grow_stage(stage: StageConfig, overwrite: bool, progress: bool) -> dict[str, Any]:
    g = stage.growth
    targets = GrowthTargets.from_config(g)
    src, dst = Path(stage.input), Path(g.output)
    check_input_shape(stage, read_args(src), str(src))
    if dst.exists() and not overwrite:
        source = open_checkpoint(src)
        wanted = check_targets(source.args, targets, g.depth_method).to_dict()
        reason = _reuse_problem(dst, str(src.resolve()), source_fingerprint(source), wanted, g.depth_method, g.seed)
        if reason is None:
            return {**read_provenance(dst), "reused": True}
        raise CheckpointError(f"{dst}: already exists and {reason}; pass overwrite to replace it")
    return grow_checkpoint(src, dst, targets, g.depth_method, g.seed, overwrite=overwrite, progress=progress)


def _reuse_problem(
    dst: Path, source: str, fingerprint: str, targets: dict[str, int], method: str, seed: int
) -> str | None:
    try:
        prov = read_provenance(dst)
        open_checkpoint(dst)
    except CheckpointError as e:
        return f"is not a complete checkpoint ({e})"
    if prov is None:
        return "has no growth.json (not a grown checkpoint)"
    if not same_request(prov, source, fingerprint, targets, method, seed):
        return (
            f"was grown from another request (source {prov.get('source', {}).get('path')}, "
            f"targets {prov.get('targets')}, method {prov.get('depth_method')}, seed {prov.get('seed')})"
        )
    return None
