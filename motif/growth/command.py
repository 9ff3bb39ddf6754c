"""`motif grow`: grow a checkpoint on disk (LlamaPro depth, MSG width), streamed tensor by tensor."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

HELP = "grow a checkpoint: LlamaPro depth and MSG width growth, streamed tensor by tensor"
DESCRIPTION = """\
Grow the Llama checkpoint SRC into DST, or run the growth step of a stage file (--stage).

Examples:
  motif grow /models/llama3-70b /ckpt/grown --layers 96
  motif grow /ckpt/s1 /ckpt/s2 --hidden 9216 --intermediate 30720 --heads 72
  motif grow --stage jobs/llama3-motif-102b/stage1-depth.yaml

Targets that cannot be reached (shrinking, hidden not a multiple of head_dim, ...) and bad source
checkpoints are rejected before any weight is read. DST appears only when complete; an existing DST
is replaced only with --overwrite, and only if it is a checkpoint directory that does not hold SRC.
With --stage, an output already grown by the same request from the same input bytes is reused.

Before writing: one grow per DST (a second one fails at once naming the first), enough memory for
the largest tensor, enough free space for the whole output, and SRC read once in full to check its
checksums (checksums.json) and that no weight is NaN or inf.

exit status: 0 grown (or reused); 2 bad input, a busy or unwritable DST; 143 stopped by SIGTERM
(the partial output is removed; run it again).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="?", metavar="SRC", help="source checkpoint directory (HF layout)")
    parser.add_argument("dst", nargs="?", metavar="DST", help="output checkpoint directory")
    parser.add_argument("--stage", metavar="STAGE_FILE", help="grow as the stage file says (input -> growth.output)")
    parser.add_argument("--layers", type=int, metavar="N", help="number of blocks after growth")
    parser.add_argument("--hidden", type=int, metavar="H", help="hidden size after growth (MSG)")
    parser.add_argument("--intermediate", type=int, metavar="I", help="FFN intermediate size after growth (MSG)")
    parser.add_argument(
        "--heads", type=int, metavar="A", help="query heads after growth (MSG, interleaved per KV head)"
    )
    parser.add_argument("--kv-heads", type=int, metavar="G", help="KV heads after growth (MSG)")
    parser.add_argument("--depth-method", choices=("llamapro", "msg"), default="llamapro", help="default: llamapro")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init of new MSG weights (default 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DST if it is a checkpoint directory (never one holding SRC)"
    )
    parser.add_argument("--json", action="store_true", help="print the provenance as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class GrowRequest:
    """What `motif grow` was asked to do (argparse stops at `run`)."""

    src: str | None = None
    dst: str | None = None
    stage: str | None = None
    layers: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    depth_method: str = "llamapro"
    seed: int = 0
    overwrite: bool = False
    json: bool = False
    quiet: bool = False

    def targets_given(self) -> bool:
        return any(v is not None for v in (self.layers, self.hidden, self.intermediate, self.heads, self.kv_heads))


def run(args: argparse.Namespace) -> int:
    from motif.request import from_namespace

    return grow(from_namespace(GrowRequest, args))


def grow(request: GrowRequest) -> int:
    # SIGTERM (a deleted Job pod) unwinds like an error: the partial output and the lease are removed.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _grow(request)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _grow(args: GrowRequest) -> int:
    from motif.errors import MotifError
    from motif.growth import GrowthTargets, grow_checkpoint, grow_stage

    progress = not args.quiet and sys.stderr.isatty()
    if args.stage:
        if args.src or args.dst or args.targets_given():
            raise MotifError("--stage takes its source, output and targets from the stage file; give no others")
        from motif.config import load_stage

        provenance = grow_stage(load_stage(args.stage), overwrite=args.overwrite, progress=progress)
    else:
        if not (args.src and args.dst):
            raise MotifError("give SRC and DST (or --stage STAGE_FILE)")
        if not args.targets_given():
            raise MotifError("no target: set --layers, --hidden, --intermediate, --heads or --kv-heads")
        targets = GrowthTargets(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads)
        provenance = grow_checkpoint(
            args.src,
            args.dst,
            targets,
            depth_method=args.depth_method,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=progress,
        )
    if args.json:
        print(json.dumps(provenance, indent=2))
    elif provenance.get("reused"):
        print(f"already grown: {args.stage}: {_summary(provenance)}")
    else:
        print(f"grown: {_summary(provenance)}")
    return 0


EXIT_TERMINATED = 128 + signal.SIGTERM


def _terminated(signum: int, frame: object) -> None:
    print("motif grow: stopped by SIGTERM (exit 143: run it again)", file=sys.stderr)
    raise SystemExit(EXIT_TERMINATED)


def _summary(prov: dict[str, Any]) -> str:
    before, after = prov["shape_before"], prov["shape_after"]
    changed = ", ".join(f"{k} {before[k]} -> {after[k]}" for k in before if k != "params" and before[k] != after[k])
    return (
        f"{changed}; params {before['params']:,} -> {after['params']:,}; "
        f"new layers {prov['new_layers'] or 'none'}; masks {'pending (m = 0)' if prov['masks'] else 'none'}"
    )
