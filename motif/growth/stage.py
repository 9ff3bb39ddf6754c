"""`grow_stage`: the growth step of a stage file, idempotent so a restarted job can run it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from motif.config import GrowthConfig, StageConfig, check_input_shape
from motif.errors import CheckpointError, GrowthError
from motif.growth.provenance import request_mismatch
from motif.growth.streamed import grow_checkpoint, input_fingerprint
from motif.growth.targets import check_targets
from motif.model.checkpoint import open_checkpoint, read_args, read_provenance
from motif.storage import integrity
from motif.storage.lease import acquire
from motif.storage.space import check_writable


def grow_stage(
    stage: StageConfig, overwrite: bool = False, progress: bool = True, wait_s: float = 0.0
) -> dict[str, Any]:
    """Grow `stage.input` into `stage.growth.output`, or reuse an output grown by the same request.

    The returned provenance has `"reused": True` when the existing output was kept. An output that
    exists but holds anything else (another source, other targets, other weights of the same
    source, a partial copy) is an error unless `overwrite`. The lease on the output is held from
    the reuse check to the end, so a second job growing it fails at once instead of racing; with
    `wait_s` it waits that long for the other to finish instead, and then reuses its output (the
    trainer's own growth step does: jobs of one stage, such as the proxies of a mix sweep, start
    together).
    """
    where = stage.source_file or stage.name
    if stage.growth is None:
        raise GrowthError(f"{where}: motif.growth: this stage does not grow a model")
    if stage.input is None:
        raise GrowthError(f"{where}: motif.input: growth needs an input checkpoint")
    try:
        return _grow_stage(stage, stage.growth, Path(stage.input), overwrite, progress, wait_s)
    except GrowthError as e:  # a target the source cannot reach: name the stage file and its key
        key = str(e).split(":", 1)[0]
        prefix = "motif.growth." if key in _TARGET_KEYS else ""
        raise GrowthError(f"{where}: {prefix}{e}") from None


_TARGET_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "depth_method", "seed")


def _grow_stage(
    stage: StageConfig, g: GrowthConfig, src: Path, overwrite: bool, progress: bool, wait_s: float
) -> dict[str, Any]:
    dst = Path(g.output)
    check_input_shape(stage, read_args(src), str(src))
    source = open_checkpoint(src)
    targets = g.targets()
    wanted = check_targets(source.args, targets, g.depth_method).to_dict()
    check_writable(dst, "motif.growth.output")
    with acquire(dst, "motif grow --stage", wait_s=wait_s) as lease:
        if (dst.exists() or dst.is_symlink()) and not overwrite:
            reason = _reuse_problem(dst)
            if reason is None:
                prov = read_provenance(dst) or {}  # _reuse_problem found growth.json; {} mismatches anyway
                fingerprint = input_fingerprint(source, progress)
                reason = request_mismatch(prov, str(src.resolve()), fingerprint, wanted, g.depth_method, g.seed)
                if reason is None:
                    return {**prov, "reused": True}
            raise CheckpointError(f"{dst}: already exists and {reason}; pass overwrite to replace it")
        return grow_checkpoint(
            src,
            dst,
            targets,
            g.depth_method,
            g.seed,
            overwrite=overwrite,
            progress=progress,
            lease=lease,
            dst_key="motif.growth.output",
        )


def _reuse_problem(dst: Path) -> str | None:
    """None if `dst` is a complete grown checkpoint (headers and sizes; content is checked on load)."""
    try:
        prov = read_provenance(dst)
        open_checkpoint(dst)
        problem = integrity.verify(dst, integrity.read_record(dst) or {}, content=False)
    except CheckpointError as e:
        return f"is not a complete checkpoint ({e})"
    if problem:
        return f"is not a complete checkpoint ({problem})"
    if not isinstance(prov, dict):
        return "has no growth.json (not a grown checkpoint)"
    return None
