"""Growth provenance: `growth.json` in a grown checkpoint says where it came from and what is new.

The trainer reads `new_layers` (to freeze the original blocks, LlamaPro's choice) and `masks` (the
pending MSG state, also in config.json). `motif grow --stage` compares source, targets, method and
seed with a request to decide whether an existing output can be reused.

The source fingerprint is of content, not of names and sizes: a source retrained in place keeps
its shape, its file names and sizes, and only its bytes tell. It hashes config.json and every
weight file's checksum, computed by reading the whole input (`verify_checkpoint`), never copied
from the input's own record, which a tool other than motif could have left stale.
"""

from __future__ import annotations

import hashlib
from typing import Any

from motif import __version__
from motif.growth.operators import GrowthPlan
from motif.growth.targets import GrowthTargets, shape_dict
from motif.model.checkpoint import CONFIG_NAME, Checkpoint

# 2: new entries are drawn region by region, each region with a generator of its own (1: one
# generator per tensor). An output of another format holds other values for the same request.
FORMAT = "motif-growth/2"


# sha256 over config.json and each weight file's name, size and checksum (the chunked xxh3 of
# `motif.storage.integrity`; "sha256-of-xxh3" was over whole-file xxh3 checksums).
FINGERPRINT = "sha256-of-xxh3-chunks"


def source_fingerprint(ckpt: Checkpoint, checksums: dict[str, str]) -> str:
    """Hash of config.json and every weight file's name, size and content checksum (`checksums`:
    file name -> checksum, as `verify_checkpoint` computed them): changes when any weight changes."""
    h = hashlib.sha256((ckpt.path / CONFIG_NAME).read_bytes())
    for file in sorted({e.path for e in ckpt.entries.values()}):
        h.update(f"{file.name}:{file.stat().st_size}:{checksums[file.name]}\n".encode())
    return f"{FINGERPRINT}:{h.hexdigest()}"


def make_provenance(
    plan: GrowthPlan,
    targets: GrowthTargets,
    depth_method: str,
    seed: int,
    source: str | None = None,
    fingerprint: str | None = None,  # known once the source has been read (`grow_checkpoint` sets it then)
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


def request_mismatch(
    prov: dict[str, Any], source: str, fingerprint: str, targets: dict[str, int], depth_method: str, seed: int
) -> str | None:
    """None if `prov` records this very request on this very input, else what differs."""
    recorded = prov.get("source")
    src: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    if prov.get("format") != FORMAT:
        return f"was grown by another version of motif (growth.json format {prov.get('format')!r}, not {FORMAT})"
    if src.get("path") != source:
        return f"was grown from another request (source {src.get('path')})"
    kind = str(src.get("fingerprint")).split(":", 1)[0]
    if kind != FINGERPRINT:  # the same weights fingerprint differently: say so, not that they changed
        return f"was grown by another version of motif (source fingerprint {kind!r}, not {FINGERPRINT})"
    if src.get("fingerprint") != fingerprint:
        return f"was grown from another request: the weights of {source} changed since (content fingerprint differs)"
    for key, want in (("targets", targets), ("depth_method", depth_method), ("seed", seed)):
        if prov.get(key) != want:
            return f"was grown from another request ({key} {prov.get(key)}, this request: {want})"
    return None


def same_request(
    prov: dict[str, Any], source: str, fingerprint: str, targets: dict[str, int], depth_method: str, seed: int
) -> bool:
    return request_mismatch(prov, source, fingerprint, targets, depth_method, seed) is None
