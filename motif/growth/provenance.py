"""Growth provenance: `growth.json` in a grown checkpoint says where it came from and what is new.

The trainer reads `new_layers` (to freeze the original blocks, LlamaPro's choice) and `masks` (the
pending MSG state, also in config.json). `motif grow --stage` compares source, targets, method and
seed with a request to decide whether an existing output can be reused.
"""

from __future__ import annotations

import hashlib
from typing import Any

from motif import __version__
from motif.growth.operators import GrowthPlan
from motif.growth.targets import GrowthTargets, shape_dict
from motif.model.checkpoint import CONFIG_NAME, Checkpoint

FORMAT = "motif-growth/1"


def source_fingerprint(ckpt: Checkpoint) -> str:
    """Hash of config.json and every weight file's name, size and header: cheap, and changes when
    the source is replaced by a different checkpoint (not when weights are edited in place)."""
    h = hashlib.sha256((ckpt.path / CONFIG_NAME).read_bytes())
    for file in sorted({e.path for e in ckpt.entries.values()}):
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            h.update(f"{file.name}:{file.stat().st_size}:".encode() + f.read(n))
    return h.hexdigest()


def make_provenance(
    plan: GrowthPlan,
    targets: GrowthTargets,
    depth_method: str,
    seed: int,
    source: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "motif_version": __version__,
        "source": {"path": source, "fingerprint": fingerprint},
        "targets": targets.resolve(plan.source).to_dict(),
        "depth_method": depth_method,
        "seed": seed,
        "operators": plan.operators,
        "shape_before": shape_dict(plan.source),
        "shape_after": shape_dict(plan.args),
        "new_layers": plan.new_layers,
        "masks": plan.args.growth.to_dict() if plan.args.growth is not None else None,
    }


def same_request(
    prov: dict[str, Any], source: str, fingerprint: str, targets: dict[str, int], depth_method: str, seed: int
) -> bool:
    src = prov.get("source") or {}
    return (
        prov.get("format") == FORMAT
        and src.get("path") == source
        and src.get("fingerprint") == fingerprint
        and prov.get("targets") == targets
        and prov.get("depth_method") == depth_method
        and prov.get("seed") == seed
    )
