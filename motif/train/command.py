"""`motif train STAGE_FILE`: train one growth stage. Every rank of the job runs this command.

The command owns what the trainer must not do on its own: joining the process group, growing the
start checkpoint when the stage grows (rank 0; the others wait), serving metrics, turning SIGTERM
into a stop request, and mapping each outcome to an exit status the job's restart policy reads.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from motif.config import StageConfig
    from motif.metrics.logger import Backend, MetricLogger
    from motif.metrics.prometheus import PrometheusBackend
    from motif.storage.lease import Lease
    from motif.train.dist import World
    from motif.train.start import StartCheckpoint
    from motif.train.trainer import RunOptions, Trainer

HELP = "Train one stage (grows its checkpoint first if needed); run it on every rank of the job"
DESCRIPTION = """\
Train one growth stage described by a stage file (its `motif:` section).

Run it on every rank: `torchrun --nproc-per-node N -m motif train STAGE_FILE` (in a pod:
`motif-torchrun`, the same arguments), or as one bare process. If the stage grows and its grown
checkpoint is missing, rank 0 runs the growth first and the other ranks wait. Relative paths in the
stage file resolve against the working directory. A checkpoint written by another number of ranks
is resumed on this one: the weights, Adam state and data shards are redistributed.

On SIGTERM (a preempted or deleted pod) every rank finishes its step, they write a checkpoint
together and exit 143; `--resume auto` continues from it.

exit status: 0 done; 2 bad input (stage file, checkpoint, data) or a growth that did not preserve the
loss; 3 a peer rank was lost (restart the job: it resumes from the last checkpoint); 4 non-finite loss
(train.nan_policy: stop, or more skipped steps than train.max_skipped_steps); 143 stopped by SIGTERM
after writing a checkpoint (retry: it resumes).
"""

EXIT_NONFINITE = 4
EXIT_PREEMPTED = 128 + signal.SIGTERM

log = logging.getLogger(__name__)


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
        help="auto (default): newest checkpoint in motif.checkpoint.dir that verifies (checkpoints of which "
        "none verifies stop the run, exit 2); PATH: that checkpoint (later ones kept aside); none: start from the "
        "stage's input (existing checkpoints kept aside as step_N.abandoned-<time>)",
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

    stage = load_stage(args.stage_file)
    if args.max_steps is not None and args.max_steps <= 0:
        raise MotifError(f"--max-steps: expected > 0, got {args.max_steps}")
    if args.resume not in ("auto", "none") and not os.path.isdir(args.resume):
        raise MotifError(f"--resume: {args.resume}: not a checkpoint directory (or use auto / none)")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise MotifError(f"--metrics-port: expected 0-65535, got {args.metrics_port}")
    from motif.train.trainer import RunOptions

    options = RunOptions(max_steps=args.max_steps, resume=args.resume, log_every=max(1, args.log_every))
    return run_stage(stage, options, metrics_port=args.metrics_port, linger_seconds=args.linger_seconds)


def run_stage(
    stage: StageConfig, options: RunOptions, *, metrics_port: int | None = None, linger_seconds: float = 0.0
) -> int:
    """Train `stage` on this rank (the process group comes from the environment); the exit status."""
    from motif.train import dist, growth_aware, guards
    from motif.train.allocator import return_freed_memory
    from motif.train.start import StartCheckpoint
    from motif.train.trainer import NonFiniteStop, Preempted, Trainer

    sigterm = _stop_on_sigterm()
    return_freed_memory()  # before anything is allocated: see motif/train/allocator.py
    guards.preflight(stage)  # every rank: nothing is read or written before the destinations are known good
    world = dist.init(
        stage.parallel.device, stage.parallel.collective_timeout_s, force_group=stage.parallel.engine != "ddp"
    )
    exporter: PrometheusBackend | None = None
    lease: Lease | None = None
    trainer: Trainer | None = None
    try:
        guards.check_same_stage_file(stage, world)
        lease = guards.job_lease(stage, world)
        growth_aware.ensure_grown(stage, world)
        # Read once here, for the metrics and the trainer alike (the grown checkpoint exists by now).
        start = StartCheckpoint.read(stage.start_checkpoint) if stage.start_checkpoint is not None else None
        metrics, exporter = build_metrics(stage, world, metrics_port, start)
        trainer = sigterm.trainer = Trainer(stage, options, world, metrics, lease=lease, start=start)
        trainer.setup()
        sigterm.check()
        trainer.train()
        trainer.finished = True
        return 0
    except NonFiniteStop as e:
        if world.is_main:
            print(f"motif train: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    except Preempted as e:
        if world.is_main:
            print(
                f"motif train: stopped by SIGTERM after step {e.args[0]}: checkpoint written; "
                f"exiting with status {EXIT_PREEMPTED} (resume with --resume auto)",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_PREEMPTED
    finally:
        if trainer is not None:
            trainer.close()
            trainer.metrics.close()
        if lease is not None:
            lease.release()
        dist.close(world)
        _linger(exporter, linger_seconds)


class _Sigterm:
    """SIGTERM while training: stop at the end of the current step (agreed by all ranks, checkpointed).

    Before the loop (growing, setting up: nothing trained yet) it exits at once with 143; after the
    output is written (serving metrics a while longer) with 0, the stage being done.

    The exit is a `SystemExit` raised wherever the main thread is, and Python drops an exception
    raised inside a finalizer (`__del__`, a weakref callback) with only a line on stderr: a signal
    handled there would be lost, and the stage would train to the end and exit 0. So the request is
    also recorded: `check()` after set-up exits, and a trainer stops at its first step.
    """

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        trainer = self.trainer
        if trainer is not None and not trainer.finished:
            trainer.stop_requested = True  # a stop after the first step, should the exit below be lost
        if trainer is not None and trainer.training:
            log.warning("SIGTERM: stopping after this step, with a checkpoint")
            return
        raise SystemExit(0 if trainer is not None and trainer.finished else EXIT_PREEMPTED)

    def check(self) -> None:
        """Exit with 143 if a SIGTERM arrived before training and its exit was lost."""
        if self.received:
            raise SystemExit(EXIT_PREEMPTED)


def _stop_on_sigterm() -> _Sigterm:
    handler = _Sigterm()
    signal.signal(signal.SIGTERM, handler)
    return handler


def build_metrics(
    stage: StageConfig, world: World, port_override: int | None, start: StartCheckpoint | None
) -> tuple[MetricLogger, PrometheusBackend | None]:
    """The metric sinks of this rank: on rank 0 the JSONL log and the Prometheus exporter (serving)."""
    from motif.metrics.jsonl import JsonlBackend
    from motif.metrics.logger import MetricLogger
    from motif.metrics.prometheus import PrometheusBackend

    if not world.is_main:
        return MetricLogger([]), None
    jsonl = stage.metrics.jsonl or str(Path(stage.checkpoint.dir) / "metrics.jsonl")
    backends: list[Backend] = [JsonlBackend(jsonl, static={"stage": stage.name})]
    exporter = PrometheusBackend()
    port = port_override if port_override is not None else stage.metrics.port
    try:
        url = exporter.serve(port)
        log.info("metrics: serving Prometheus metrics at %s", url)
        print(f"motif train: metrics at {url}", flush=True)
        backends.append(exporter)
    except OSError as e:
        log.warning("metrics: cannot serve on port %d (%s); training goes on without the exporter", port, e)
        return MetricLogger(backends), None
    g = stage.growth
    kind = "none" if g is None else ("msg" if g.grows_width() or g.depth_method == "msg" else "llamapro")
    exporter.info(
        {
            "stage": stage.name,
            "growth": kind,
            "params": str(_stage_params(stage, start)),
            "world_size": str(world.world_size),
            "engine": stage.parallel.engine,
        }
    )
    return MetricLogger(backends), exporter


def _stage_params(stage: StageConfig, start: StartCheckpoint | None) -> int:
    """Parameters of the model this stage trains, from shapes alone."""
    if start is not None:
        return start.args.num_params()
    assert stage.model is not None  # the loader requires motif.model when there is no input
    return stage.model.num_params()


def _linger(exporter: PrometheusBackend | None, seconds: float) -> None:
    """Keep the exporter serving after the run (so a scraper sees the final values), then stop it."""
    if exporter is None:
        return
    try:
        if seconds > 0:
            log.info("metrics: serving for %.0fs more at %s", seconds, exporter.url)
            time.sleep(seconds)
    finally:
        exporter.stop()
