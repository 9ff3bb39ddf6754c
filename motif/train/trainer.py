"""The stage trainer: one `Trainer` per rank, reading top to bottom as set-up, loop, output.

The constructor only records what it is given (stage, options, the joined process group, the
metrics sinks); `setup()` builds the parts (data, engine, checkpoint manager) and resumes;
`train()` runs the loop and writes the stage's output. Growing the start checkpoint, serving
metrics and mapping outcomes to exit statuses belong to the command (`motif.train.command`).

Each optimizer step: set the growth mask for this step, draw `grad_accum_steps` micro-batches,
forward/backward each, then one small all-reduce of the per-language loss sums, a non-finite
flag and a stop request, so every rank agrees on whether to step and whether to stop. Every
`checkpoint.every_steps` a checkpoint is written; at the end the stage's output (HF layout plus
`optimizer.safetensors`) for the next stage's `motif grow`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from motif.config import StageConfig, check_input_shape
from motif.data.mixture import Batch
from motif.data.shards import ShardedData, owned_shards
from motif.errors import CheckpointError, GrowthError, MotifError
from motif.eval.heldout import HeldoutSet
from motif.metrics import names, trainjob
from motif.metrics.logger import MetricLogger
from motif.train import dist, growth_aware, guards
from motif.train.checkpoint import CheckpointManager, CorruptCheckpoint, read_meta
from motif.train.dist import World
from motif.train.engines import build_engine, loss_sums
from motif.train.output import output_bytes, write_output
from motif.train.schedule import Schedule
from motif.train.slices import TensorReader
from motif.train.start import MomentSource, StartCheckpoint, WeightSource

if TYPE_CHECKING:
    from motif.storage.lease import Lease

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# The loss of the grown model on the first batch must equal the input model's: growth preserves
# the function exactly, so only rounding separates them (fp32: reordered sums; bf16: bf16 compute).
GROWTH_LOSS_RTOL = {"fp32": 1e-5, "bf16": 2e-2}


class NonFiniteStop(MotifError):
    """Training stopped on a non-finite loss or gradient (nan_policy: stop, or too many skipped)."""


class Preempted(Exception):
    """The job was asked to stop (SIGTERM); a checkpoint of the last finished step was written."""


@dataclass
class RunOptions:
    """Command-line overrides of one `motif train` run."""

    max_steps: int | None = None  # None: motif.train.max_steps
    resume: str = "auto"  # auto | none | a checkpoint directory
    log_every: int = 10


@dataclass
class TrainState:
    """The global, JSON-sized state of a stage: the `train` part of every checkpoint."""

    step: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=lambda: {"skip": 0, "stop": 0})
    restarts: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens = {k: int(v) for k, v in state["tokens"].items()}
        self.nonfinite = dict(state["nonfinite"])
        self.restarts = int(state["restarts"]) + 1


class RngState:
    """This rank's torch RNG, restored only at the same world size (it has no meaning across sizes)."""

    def __init__(self, world: World):
        self.key = f"{world.world_size}/{world.rank}"

    def state_dict(self) -> dict[str, Any]:
        return {self.key: torch.get_rng_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.key in state:
            torch.set_rng_state(torch.tensor(state[self.key], dtype=torch.uint8))


@dataclass
class StepStats:
    loss: float
    loss_by_language: dict[str, float]
    tokens_by_language: dict[str, int]
    grad_norm: float
    finite: bool
    stop_requested: bool


class Trainer:
    def __init__(
        self,
        stage: StageConfig,
        options: RunOptions,
        world: World,
        metrics: MetricLogger,
        lease: Lease | None = None,
        start: StartCheckpoint | None = None,
    ):
        self.stage = stage
        self.options = options
        self.world = world
        self.metrics = metrics
        self.lease = lease  # the job's lease of the checkpoint directory (rank 0), from the command
        # The start checkpoint as the command read it (once per run); read in `setup` when not given.
        self.start = start
        self.new_blocks: list[int] = []  # train.freeze: new_blocks: the blocks that train
        self.max_steps = options.max_steps or stage.train.max_steps
        self.ramp_steps = min(stage.growth.ramp_steps, self.max_steps) if stage.growth else 0
        self.state = TrainState()
        self.stop_requested = False  # set by the command's SIGTERM handler while `training`
        self.training = False
        self.finished = False  # set by the command once `train` returned: SIGTERM then means done
        self.resumed_from: Path | None = None
        self.growth_loss: tuple[float, float] | None = None
        self._side_world: World | None = None  # the asynchronous checkpoints' process group (made on first use)
        self._writing: tuple[int, float] | None = None  # (step, start) of the checkpoint being written asynchronously

    # ---- set-up ----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build everything the loop needs and resume from the checkpoint `--resume` names.

        A checkpoint is checked against its checksums while it is read (no pass of its own): with
        `--resume auto`, one that fails is skipped with a warning and everything is built again
        from the next older one (the first build holds a mix of both; it is dropped first)."""
        failed: list[tuple[Path, str]] = []
        while True:
            try:
                self._setup(failed)
                return
            except CorruptCheckpoint as e:
                if self.options.resume != "auto":
                    raise
                if self.world.is_main:
                    log.warning("skipping checkpoint %s: %s", e.path, e.problem)
                failed.append((e.path, e.problem))
                self._drop_built()

    def _drop_built(self) -> None:
        """Forget what `_setup` built (its memory is freed before the next build)."""
        import gc

        self.close()
        for name in ("engine", "model", "weights", "moments", "data", "heldout"):
            setattr(self, name, None)
        self.state = TrainState()
        self.resumed_from = None
        gc.collect()

    def _setup(self, failed: list[tuple[Path, str]]) -> None:
        s = self.stage
        self._seed_everything()
        finished = guards.refuse_fewer_steps(s, self.max_steps)  # never replaced by fewer steps
        self.done = finished and self.options.resume == "auto"  # a rerun of a finished stage: nothing to do
        if self.done:
            return
        self.checkpoints = CheckpointManager(
            s.checkpoint.dir,
            s.checkpoint.keep_last,
            self.world,
            every_steps=s.checkpoint.every_steps,
            lease=self.lease,
        )
        resume = self.checkpoints.find(self.options.resume, failed)
        num_shards = self._num_shards(resume)
        self.weights, self.moments, frozen = self._start_sources()
        self._verify_start()
        self.data_files = guards.data_identity(s, self.world)  # what a checkpoint's data position means
        self.data = self._build_data(num_shards)
        self.heldout = HeldoutSet.from_stage(s, self.tokenizer, rank=self.world.rank, world=self.world.world_size)
        self.languages = sorted(set(self.data.languages))
        self.state.tokens = dict.fromkeys(self.languages, 0)
        self.engine = build_engine(s, self.world, self.weights, self.moments, frozen)
        self.model = self.engine.model
        if frozen and self.world.is_main:
            log.info("freeze: new_blocks: training layers %s only", self.new_blocks)
        self.schedule = Schedule.from_config(s.optim, self.max_steps, grows=s.growth is not None)
        self.checkpoints.register(
            parts={"train": self.state},
            rank_parts={"data": self.data, "rng": RngState(self.world)},
            tensors=self.engine,
        )
        if resume is not None:
            self._resume(resume)
        elif self.moments.path and self.world.is_main:
            log.info("optimizer: Adam moments carried from %s", self.moments.path)
        # A rollback, a fallback past checkpoints that failed verification, a start over: the
        # checkpoints after this run's start are another branch, kept aside (auto: usually none).
        self.checkpoints.rollback(resume)
        self._check_output_space()
        self.flops_per_token = self.model.args.flops_per_token(s.data.seq_len)
        self.peak_flops = self._peak_flops()

    def _seed_everything(self) -> None:
        seed = self.stage.train.seed + self.world.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if self.stage.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def _num_shards(self, resume: Path | None) -> int:
        """Logical data shards: the stage file's, else the checkpoint's, else this run's world size."""
        if self.stage.data.shards is not None:
            return self.stage.data.shards
        if resume is not None:
            meta = read_meta(resume)
            return int(meta.get("data_shards") or meta["world_size"])
        return self.world.world_size

    def _start_sources(self) -> tuple[WeightSource, MomentSource, set[str]]:
        """The start weights (a checkpoint read in parts, or a seeded init), carried moments, frozen names."""
        s = self.stage
        if self.start is None and s.start_checkpoint is not None:
            self.start = StartCheckpoint.read(s.start_checkpoint)
        start = self.start
        if start is None:
            assert s.model is not None  # the loader requires motif.model when there is no input
            args = s.model.replace(torch_dtype="float32")
            weights = WeightSource(args, None, seed=s.train.seed)
        else:
            args = start.args
            if s.growth is None:  # a growing stage checked its input before growing it
                check_input_shape(s, args, start.path)
            weights = WeightSource(args, TensorReader(start.checkpoint().entries, start.path), seed=s.train.seed)
        moments = MomentSource.open(start.path if start is not None else None)
        frozen: set[str] = set()
        if s.train.freeze == "new_blocks" and start is not None:  # the loader allows it only with LlamaPro growth
            self.new_blocks = growth_aware.new_block_indices(start.path)
            keep = {f"model.layers.{i}." for i in self.new_blocks}
            frozen = {n for n in args.tensor_shapes() if not any(n.startswith(k) for k in keep)}
        return weights, moments, frozen

    def _build_data(self, num_shards: int) -> ShardedData:
        from motif.data.tokenizer import Tokenizer

        # Every rank refuses too few shards before the barrier below: a rank left waiting in it would
        # die of the collective timeout (exit 3, or 143 under motif-torchrun) instead of saying why.
        owned_shards(num_shards, self.world.rank, self.world.world_size)
        # Rank 0 first: `datasets` builds its Arrow cache once, the others then read it.
        if not self.world.is_main:
            dist.barrier(self.world)
        tokenizer = self.tokenizer = Tokenizer(self.stage.data.tokenizer)
        data: ShardedData = ShardedData.from_config(
            self.stage.data, num_shards, rank=self.world.rank, world=self.world.world_size, tokenizer=tokenizer
        )
        if self.world.is_main:
            dist.barrier(self.world)
        vocab = self.weights.args.vocab_size
        if tokenizer.vocab_size > vocab:
            raise MotifError(
                f"motif.data.tokenizer: {self.stage.data.tokenizer} has {tokenizer.vocab_size} tokens, more than "
                f"the model's vocab_size {vocab}"
            )
        return data

    def _verify_start(self) -> None:
        """The start checkpoint's files against their checksums and finite, the ranks sharing the reading."""
        from motif.model.checkpoint import verify_checkpoint

        if self.start is None:
            return
        problem = None
        try:
            verify_checkpoint(self.start.checkpoint(), rank=self.world.rank, world=self.world.world_size)
        except MotifError as e:
            problem = str(e)
        problem = dist.first_problem(self.world, problem)
        if problem is not None:
            raise CheckpointError(problem)

    def _check_output_space(self) -> None:
        """The output's size is known from the shapes: refuse now, not after the stage has trained."""
        from motif.storage.space import check_free_space

        problem = None
        if self.world.is_main:
            try:
                nbytes = output_bytes(self.engine, self.moments)
                check_free_space(Path(self.stage.output).parent, nbytes, f"the output {self.stage.output}")
            except MotifError as e:
                problem = str(e)
        problem = dist.first_problem(self.world, problem)
        if problem is not None:
            raise MotifError(problem)

    def _peak_flops(self) -> float:
        from motif.metrics.flops import peak_flops

        return peak_flops(self.world.device, self.stage.train.precision, self.stage.metrics.peak_flops)

    def _resume(self, path: Path) -> None:
        meta = read_meta(path)
        if meta["stage"] != self.stage.name:
            raise MotifError(f"{path}: a checkpoint of stage {meta['stage']!r}, not {self.stage.name!r}")
        where = self.stage.source_file or self.stage.name
        guards.compare_settings(meta.get("settings", {}), guards.settings(self.stage, self.world), path, where)
        guards.compare_data(meta.get("data_files"), self.data_files, path, self.stage)
        # The architecture at that step: masks already removed if the ramp was done.
        growth_aware.apply_mask(self.model, int(meta["step"]), self.ramp_steps)
        # Ranks finish their set-up at different moments; the load's first collective would count
        # the last one's lateness as reading time. Timed from when every rank is here.
        dist.barrier(self.world)
        t0 = time.perf_counter()
        self.checkpoints.load(path)
        seconds = time.perf_counter() - t0
        self.resumed_from = path
        if self.world.is_main:
            how = "" if meta["world_size"] == self.world.world_size else f", saved by {meta['world_size']} ranks"
            log.info("resumed from %s at step %d (read in %.3fs%s)", path, self.state.step, seconds, how)

    # ---- the loop ----------------------------------------------------------------------------------

    def train(self) -> None:
        s = self.stage
        if self.done:
            if self.world.is_main:
                log.info("stage %s: %s already holds its %d steps; nothing to do", s.name, s.output, self.max_steps)
            return
        if self.world.is_main:
            log.info(
                "stage %s: %s parameters, %d ranks (%s), steps %d -> %d, %d tokens per step, %d data shards",
                s.name,
                f"{self.model.args.num_params():,}",
                self.world.world_size,
                s.parallel.engine,
                self.state.step,
                self.max_steps,
                self.tokens_per_step,
                self.data.num_shards,
            )
        if self.world.is_main:  # under a TrainJob: its status.trainerStatus follows the steps
            reporter = trainjob.from_env(self.max_steps, s.metrics.trainjob_status_every_s)
            if reporter is not None:
                self.metrics.backends.append(reporter)
        self._log_state()
        self.training = True
        if self.resumed_from is None:
            self._collective(self.score_heldout)  # the stage's start: what forgetting is measured against
        while self.state.step < self.max_steps:
            t0 = time.perf_counter()
            pending = self.model.args.growth is not None
            mask = growth_aware.apply_mask(self.model, self.state.step, self.ramp_steps)
            if pending and self.model.args.growth is None and self.world.is_main:
                log.info(
                    "growth masks reached 1 at step %d and were removed: the model is a plain Llama", self.state.step
                )
            lr = self.schedule(self.state.step)
            batches = [self.data.next_batch(s.train.micro_batch_size) for _ in range(s.train.grad_accum_steps)]
            if self.state.step == 0 and self.resumed_from is None and s.growth is not None:
                self._collective(self.check_growth_loss, batches)
            stats = self._collective(self.train_step, batches, lr)
            self.state.step += 1
            if not stats.finite:
                self._on_nonfinite(stats)
            for lang, n in stats.tokens_by_language.items():
                self.state.tokens[lang] += n
            self._log_step(stats, lr, mask, time.perf_counter() - t0)
            if stats.stop_requested:
                self._collective(self.save_checkpoint)
                self.training = False
                raise Preempted(self.state.step)
            if self._heldout_due():
                self._collective(self.score_heldout)
            if self.checkpoints.due(self.state.step, self.max_steps):
                self._collective(self.save_checkpoint, s.checkpoint.async_mode == "async")
        # A ramp that ends with the stage (ramp_steps == max_steps) removes its masks here.
        growth_aware.apply_mask(self.model, self.state.step, self.ramp_steps)
        self._collective(self.finish_checkpoint)
        self._collective(self.score_heldout)
        self._collective(self.save_output)
        self.training = False

    def _collective(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a step that synchronises ranks; a lost peer there ends this rank at once (exit 3)."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            if self.world.distributed and dist.is_collective_failure(e):
                dist.fail_fast(self.world, self.state.step, e)
            raise

    @property
    def tokens_per_step(self) -> int:
        t = self.stage.train
        return t.micro_batch_size * t.grad_accum_steps * self.stage.data.seq_len * self.world.world_size

    def train_step(self, batches: list[Batch], lr: float) -> StepStats:
        n_lang = len(self.data.languages)
        device = self.world.device
        # [loss sum per source, token count per source, non-finite flag, stop request]
        sums = torch.zeros(2 * n_lang + 2, dtype=torch.float64, device=device)
        for i, batch in enumerate(batches):
            with self.engine.accumulate(i == len(batches) - 1):
                loss, per_seq = self.forward_loss(batch)
                if _fault_nan(self.state.step):
                    loss = loss * float("nan")
                self.engine.backward(loss, len(batches))
            src = batch.source.to(device)
            sums[:n_lang].index_add_(0, src, per_seq.double())
            sums[n_lang : 2 * n_lang].index_add_(0, src, torch.full_like(per_seq, batch.inputs.shape[1]).double())
        grad_norm = self.engine.clip_grad_norm(self.stage.optim.grad_clip)
        finite = torch.isfinite(sums[:n_lang]).all() and (grad_norm is None or torch.isfinite(grad_norm))
        sums[-2] = float(not finite)
        sums[-1] = float(self.stop_requested)
        dist.all_reduce_sum(self.world, sums)
        result = self.engine.step(lr, finite=sums[-2].item() == 0)
        # The engine's own measure when it takes one inside the step (ZeRO-3), else the clipped norm.
        measured = result.grad_norm if result.grad_norm is not None else grad_norm
        norm = float(measured) if measured is not None else float("nan")
        return self._stats(sums, n_lang, norm, result.stepped, sums[-1].item() > 0)

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token loss of a micro-batch, and each sequence's loss sum (for per-language loss)."""
        inputs = batch.inputs.to(self.world.device, non_blocking=True)
        targets = batch.targets.to(self.world.device, non_blocking=True)
        logits = self.engine.forward(inputs)
        per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        per_seq = per_token.view(targets.shape).sum(dim=1)
        return per_token.mean(), per_seq.detach()

    def _stats(self, sums: torch.Tensor, n_lang: int, grad_norm: float, finite: bool, stop: bool) -> StepStats:
        loss_sum: dict[str, float] = {}
        count: dict[str, int] = {}
        for i, lang in enumerate(self.data.languages):
            loss_sum[lang] = loss_sum.get(lang, 0.0) + sums[i].item()
            count[lang] = count.get(lang, 0) + int(sums[n_lang + i].item())
        total = sum(count.values())
        by_lang = {k: loss_sum[k] / count[k] for k in count if count[k]}
        return StepStats(sum(loss_sum.values()) / max(total, 1), by_lang, count, grad_norm, finite, stop)

    def check_growth_loss(self, batches: list[Batch]) -> None:
        """Loss of the un-grown input and of the grown model on this stage's first batch: must be equal.

        Both are computed sharded as the engine shards (the input model is built like the trained
        one, at 1/W per rank), before the first update.
        """
        growth, source = self.stage.growth, self.stage.input
        assert growth is not None and source is not None  # called for a growing stage, which has an input
        before = self.engine.input_loss(source, batches)
        after = loss_sums(self.engine.forward, batches, self.world.device)
        both = torch.cat([before, after])
        dist.all_reduce_sum(self.world, both)
        loss_before, loss_after = (both[0] / both[1]).item(), (both[2] / both[3]).item()
        self.growth_loss = (loss_before, loss_after)
        rel = abs(loss_after - loss_before) / max(abs(loss_before), 1e-12)
        rtol = GROWTH_LOSS_RTOL[self.stage.train.precision]
        if self.world.is_main:
            log.info(
                "growth check: loss before growth %.6f, after %.6f (relative difference %.1e, tolerance %.0e)",
                loss_before,
                loss_after,
                rel,
                rtol,
            )
        self.metrics.log({names.GROWTH_LOSS.name: {"before": loss_before, "after": loss_after}}, 0)
        if not rel <= rtol:
            raise GrowthError(
                f"{growth.output}: the grown model's loss on the first batch is {loss_after:.6f}, the "
                f"input's {loss_before:.6f} (relative difference {rel:.1e} > {rtol:.0e}): growth did not preserve "
                "the function; regrow it (motif grow --stage --overwrite) before training"
            )

    def _heldout_due(self) -> bool:
        every = self.stage.eval.every_steps if self.stage.eval is not None else 0
        return every > 0 and self.state.step % every == 0 and self.state.step < self.max_steps

    def score_heldout(self) -> dict[str, float] | None:
        """Held-out bits per byte per language (`motif.eval.heldout`), on the current weights."""
        if self.heldout is None:
            return None
        t0 = time.perf_counter()

        def all_reduce_sum(t: torch.Tensor) -> None:
            dist.all_reduce_sum(self.world, t)

        with torch.no_grad():
            scores = self.heldout.score(self.engine.forward, self.world.device, all_reduce_sum)
        self.metrics.log({names.HELDOUT_BITS_PER_BYTE.name: scores}, self.state.step)
        if self.world.is_main:
            shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items()))
            log.info("held-out bits per byte at step %d: %s (%.1fs)", self.state.step, shown, time.perf_counter() - t0)
        return scores

    # ---- metrics ---------------------------------------------------------------------------------

    def _log_state(self) -> None:
        self.metrics.log(
            {
                names.STEP.name: self.state.step,
                names.WORLD_SIZE.name: self.world.world_size,
                names.RESTARTS.name: self.state.restarts,
                names.GROWTH_MASK.name: self.model.growth_mask,
                names.TOKENS.name: dict(self.state.tokens),
            },
            self.state.step,
        )

    def _log_step(self, stats: StepStats, lr: float, mask: float, seconds: float) -> None:
        tokens = sum(stats.tokens_by_language.values())
        tokens_per_s = tokens / seconds
        mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.world.world_size)
        step = self.state.step
        record = {
            names.STEP.name: step,
            names.LOSS.name: {"all": stats.loss, **stats.loss_by_language},
            names.TOKENS.name: dict(self.state.tokens),
            names.LEARNING_RATE.name: lr,
            names.GRAD_NORM.name: stats.grad_norm,
            names.MFU.name: mfu,
            names.GROWTH_MASK.name: mask,
            names.STEP_SECONDS.name: seconds,
            names.TOKENS_PER_SECOND.name: tokens_per_s,
            names.NONFINITE_STEPS.name: dict(self.state.nonfinite),
        }
        self.metrics.log(record, step)
        if self.world.is_main and (step % self.options.log_every == 0 or step == self.max_steps):
            langs = " ".join(f"{k} {v:.3f}" for k, v in sorted(stats.loss_by_language.items()))
            log.info(
                "step %d/%d loss %.4f (%s) lr %.2e grad %.2f mask %.2f %.0f tok/s mfu %.1f%%",
                step,
                self.max_steps,
                stats.loss,
                langs,
                lr,
                stats.grad_norm,
                mask,
                tokens_per_s,
                100 * mfu,
            )

    def _on_nonfinite(self, stats: StepStats) -> None:
        policy = self.stage.train.nan_policy
        self.state.nonfinite[policy] += 1
        self.metrics.log({names.NONFINITE_STEPS.name: dict(self.state.nonfinite)}, self.state.step)
        step = self.state.step
        what = f"step {step}: non-finite loss or gradient (loss {stats.loss}, grad norm {stats.grad_norm})"
        if policy == "skip":
            limit = self.stage.train.max_skipped_steps
            if self.state.nonfinite["skip"] > limit:
                raise NonFiniteStop(
                    f"{what}; {self.state.nonfinite['skip']} steps skipped, more than motif.train.max_skipped_steps "
                    f"{limit}: stopping; last good checkpoint: {self.checkpoints.latest() or 'none'}"
                )
            if self.world.is_main:
                log.warning("%s: step skipped (%d of at most %d)", what, self.state.nonfinite["skip"], limit)
            return
        last = self.checkpoints.latest()
        raise NonFiniteStop(f"{what}; nan_policy stop: stopping without saving; last good checkpoint: {last or 'none'}")

    # ---- checkpoints and output --------------------------------------------------------------------

    def save_checkpoint(self, asynchronous: bool = False) -> Path | None:
        """The checkpoint of this step: written now (its path), or with `asynchronous`, taken now and
        written while training goes on (None; `finish_checkpoint` ends it). A checkpoint still being
        written is finished first."""
        self.finish_checkpoint()
        t0 = time.perf_counter()
        extra = {
            "stage": self.stage.name,
            "mask": self.model.growth_mask,
            "data_shards": self.data.num_shards,
            "settings": guards.settings(self.stage, self.world),
            "data_files": self.data_files,
        }
        if asynchronous:
            if self._side_world is None:  # collective: every rank saves at the same step
                self._side_world = dist.side_world(self.world, self.stage.parallel.collective_timeout_s)
            self.checkpoints.save_async(self.state.step, extra, self._side_world)
            self._writing = (self.state.step, t0)
            if self.world.is_main:
                log.info(
                    "checkpoint of step %d taken in %.2fs; written while training goes on",
                    self.state.step,
                    time.perf_counter() - t0,
                )
            return None
        path = self.checkpoints.save(self.state.step, extra)
        self._checkpoint_written(path, self.state.step, t0)
        return path

    def finish_checkpoint(self) -> None:
        """Wait for the checkpoint being written asynchronously, if any (collective then)."""
        path = self.checkpoints.wait()
        if path is not None and self._writing is not None:
            self._checkpoint_written(path, *self._writing)
        self._writing = None

    def _checkpoint_written(self, path: Path, step: int, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.metrics.log({names.CHECKPOINT_SECONDS.name: seconds, names.LAST_CHECKPOINT.name: time.time()}, step)
        if self.world.is_main:
            log.info("checkpoint %s written in %.2fs", path, seconds)

    def save_output(self) -> None:
        """The stage's output: HF layout (motif layout while masks are below 1) + optimizer state."""
        t0 = time.perf_counter()
        s = self.stage
        record = {"stage": s.name, "steps": self.state.step, "tokens": self.state.tokens, "time": time.time()}
        sources = [p for p in (s.input, s.start_checkpoint) if p]
        write_output(
            s.output,
            self.engine,
            self.weights,
            self.moments,
            self.world,
            record=record,
            sources=sources,
            lease=self.lease,
        )
        if self.world.is_main:
            log.info("stage %s done: %s written in %.2fs", self.stage.name, self.stage.output, time.perf_counter() - t0)

    def close(self) -> None:
        for part in ("weights", "moments", "engine"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()


def _fault_nan(step: int) -> bool:
    """Fault injection for the nan_policy tests: MOTIF_FAULT_NAN_STEP=N poisons the loss of step N."""
    value = os.environ.get("MOTIF_FAULT_NAN_STEP")
    return value is not None and int(value) == step
