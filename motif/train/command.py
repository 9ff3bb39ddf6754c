"""`motif train STAGE_FILE`: train one growth stage. Every rank of the job runs this command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

HELP = "Train one stage (grows its checkpoint first if needed); run it on every rank of the job"
DESCRIPTION = """\
Train one growth stage described by a stage file (its `motif:` section).

Run it on every rank: `torchrun --nproc-per-node N -m motif train STAGE_FILE` (what each PyTorchJob
pod runs), or as one bare process. If the stage grows and its grown checkpoint is missing, rank 0
runs the growth first and the other ranks wait. Relative paths in the stage file resolve against
the working directory.

exit status: 0 done; 2 bad input (stage file, checkpoint, data); 3 a peer rank was lost (restart the
job: it resumes from the last checkpoint); 4 non-finite loss with train.nan_policy: stop.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage_file", metavar="STAGE_FILE", help="stage file (jobs/<recipe>/<stage>.yaml)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="train N steps instead of motif.train.max_steps")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="Prometheus exporter port on rank 0 (default motif.metrics.port; 0 picks a free port)",
    )
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|PATH|none",
        help="auto (default): newest complete checkpoint in motif.checkpoint.dir, if any; PATH: that "
        "checkpoint; none: start from the stage's input",
    )
    parser.add_argument(
        "--linger-seconds",
        type=float,
        default=float(os.environ.get("MOTIF_METRICS_LINGER_S", "0")),
        metavar="S",
        help="keep serving metrics S seconds after the run ends (env MOTIF_METRICS_LINGER_S; default 0)",
    )
    parser.add_argument("--log-every", type=int, default=10, metavar="N", help="log a progress line every N steps")


def run(args: argparse.Namespace) -> int:
    from motif.config import load_stage
    from motif.errors import MotifError
    from motif.train.trainer import RunOptions, Trainer

    stage = load_stage(args.stage_file)
    if args.max_steps is not None and args.max_steps <= 0:
        raise MotifError(f"--max-steps: expected > 0, got {args.max_steps}")
    if args.resume not in ("auto", "none") and not os.path.isdir(args.resume):
        raise MotifError(f"--resume: {args.resume}: not a checkpoint directory (or use auto / none)")
    options = RunOptions(
        max_steps=args.max_steps,
        metrics_port=args.metrics_port,
        resume=args.resume,
        linger_seconds=args.linger_seconds,
        log_every=max(1, args.log_every),
    )
    trainer = Trainer(stage, options)
    try:
        code = trainer.train()
    finally:
        trainer.close()
    trainer.linger()
    if stage.parallel.engine == "deepspeed":
        # DeepSpeed's CPU communication threads can abort the interpreter's teardown after a finished
        # run ("terminate called without an active exception"), turning success into SIGABRT.
        # Everything is written and synchronised by now: flush and leave without that teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
