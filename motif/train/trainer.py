"""The stage trainer: one `Trainer` per process, reading top to bottom as set-up, loop, shutdown.

Each optimizer step: set the growth mask for this step, draw `grad_accum_steps` micro-batches from
the mixture, forward/backward each (gradients all-reduced on the last), reduce the per-language
loss sums and a non-finite flag across ranks in one small all-reduce, clip, and step unless the
step was non-finite. Every `checkpoint.every_steps` a checkpoint is written; at the end the
stage's output (HF layout plus `optimizer.safetensors`) for the next stage's `motif grow`.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from motif.config import StageConfig, check_input_shape
from motif.data.mixture import Batch, Mixture
from motif.errors import CheckpointError, MotifError
from motif.metrics import names
from motif.metrics.logger import MetricLogger
from motif.train import dist, growth
from motif.train.checkpoint import CheckpointManager, read_meta
from motif.train.engine import Engine, make_engine
from motif.train.schedule import Schedule

log = logging.getLogger(__name__)

EXIT_NONFINITE = 4  # nan_policy: stop


@dataclass
class RunOptions:
    """Command-line overrides of one `motif train` run."""

    max_steps: int | None = None  # None: motif.train.max_steps
    metrics_port: int | None = None  # None: motif.metrics.port; 0: a free port
    resume: str = "auto"  # auto | none | a checkpoint directory
    linger_seconds: float = 0.0  # keep the exporter serving this long after the end (rank 0)
    log_every: int = 10


@dataclass
class StepStats:
    loss: float
    loss_by_language: dict[str, float]
    tokens_by_language: dict[str, int]
    grad_norm: float
    finite: bool


class Trainer:
    def __init__(self, stage: StageConfig, options: RunOptions):
        self.stage = stage
        self.options = options
        self.max_steps = options.max_steps or stage.train.max_steps
        self.ramp_steps = min(stage.growth.ramp_steps, self.max_steps) if stage.growth else 0
        force_group = stage.parallel.engine == "deepspeed"
        self.world = dist.init(stage.parallel.device, stage.parallel.collective_timeout_s, force_group=force_group)
        self._seed_everything()
        growth.ensure_grown(stage, self.world)
        self.model = self.build_model()
        self.engine: Engine = make_engine(self.model, stage, self.world)
        self.schedule = Schedule.from_config(stage.optim, self.max_steps, grows=stage.growth is not None)
        self.data = self._build_data()
        self.languages = sorted(set(self.data.languages))
        self.checkpoints = CheckpointManager(stage.checkpoint.dir, stage.checkpoint.keep_last, self.world)
        self.step = 0
        self.tokens = dict.fromkeys(self.languages, 0)
        self.restarts = 0
        self.nonfinite = {"skip": 0, "stop": 0}
        self.resumed_from = self.resume(options.resume)
        if self.resumed_from is None:
            self.load_start_optimizer()
        self.metrics, self.exporter = self._build_metrics()
        self.flops_per_token = self.model.args.flops_per_token(stage.data.seq_len)
        self.peak_flops = self._peak_flops()

    # ---- set-up ----------------------------------------------------------------------------------

    def _seed_everything(self) -> None:
        seed = self.stage.train.seed + self.world.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if self.stage.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def build_model(self):
        from motif.model import Llama, ModelArgs
        from motif.model.checkpoint import load, read_args

        start = self.stage.start_checkpoint
        device = self.world.device
        if start is None:
            shape = self.stage.model
            args = ModelArgs(**{k: getattr(shape, k) for k in shape.__dataclass_fields__}, torch_dtype="float32")
            with torch.device(device):
                model = Llama(args)
            model.init_weights(seed=self.stage.train.seed)  # same on every rank: no broadcast needed
        else:
            if self.stage.growth is None:  # a growing stage checked its input before growing it
                check_input_shape(self.stage, read_args(start), start)
            model = load(start, dtype=torch.float32, device=device)
        if self.stage.train.precision == "bf16" and self.stage.parallel.engine == "deepspeed":
            model = model.to(torch.bfloat16)  # DeepSpeed keeps the fp32 master copy itself
        model.train()
        model.set_activation_checkpointing(self.stage.train.activation_checkpointing)
        if self.stage.train.freeze == "new_blocks":
            layers = growth.new_block_indices(start)
            n = growth.freeze_all_but(model, layers)
            if self.world.is_main:
                log.info("freeze: new_blocks: training layers %s only (%s parameters)", layers, f"{n:,}")
        return model

    def _build_data(self) -> Mixture:
        # Rank 0 first: `datasets` builds its Arrow cache once, the others then read it.
        if not self.world.is_main:
            dist.barrier(self.world)
        data = Mixture.from_config(self.stage.data, rank=self.world.rank, world=self.world.world_size)
        if self.world.is_main:
            dist.barrier(self.world)
        vocab = self.model.args.vocab_size
        if data.streams[0].tokenizer.vocab_size > vocab:
            raise MotifError(
                f"motif.data.tokenizer: {self.stage.data.tokenizer} has {data.streams[0].tokenizer.vocab_size} "
                f"tokens, more than the model's vocab_size {vocab}"
            )
        return data

    def _build_metrics(self):
        from motif.metrics.jsonl import JsonlBackend
        from motif.metrics.prometheus import PrometheusBackend

        if not self.world.is_main:
            return MetricLogger([]), None
        jsonl = self.stage.metrics.jsonl or str(Path(self.stage.checkpoint.dir) / "metrics.jsonl")
        backends = [JsonlBackend(jsonl, static={"stage": self.stage.name})]
        exporter = PrometheusBackend()
        port = self.options.metrics_port if self.options.metrics_port is not None else self.stage.metrics.port
        try:
            url = exporter.serve(port)
            log.info("metrics: serving Prometheus metrics at %s", url)
            print(f"motif train: metrics at {url}", flush=True)
            backends.append(exporter)
        except OSError as e:
            log.warning("metrics: cannot serve on port %d (%s); training goes on without the exporter", port, e)
            exporter = None
        metrics = MetricLogger(backends)
        g = self.stage.growth
        kind = "none" if g is None else ("msg" if g.grows_width() or g.depth_method == "msg" else "llamapro")
        if exporter is not None:
            exporter.info(
                {
                    "stage": self.stage.name,
                    "growth": kind,
                    "params": str(self.model.args.num_params()),
                    "world_size": str(self.world.world_size),
                    "engine": self.stage.parallel.engine,
                }
            )
        return metrics, exporter

    def _peak_flops(self) -> float:
        from motif.metrics.flops import peak_flops

        return peak_flops(self.world.device, self.stage.train.precision, self.stage.metrics.peak_flops)

    # ---- resume ----------------------------------------------------------------------------------

    def resume(self, how: str) -> Path | None:
        if how == "none":
            return None
        path = self.checkpoints.latest() if how == "auto" else Path(how)
        if path is None:
            return None
        meta = read_meta(path)
        if meta["stage"] != self.stage.name:
            raise CheckpointError(f"{path}: a checkpoint of stage {meta['stage']!r}, not {self.stage.name!r}")
        if meta["world_size"] != self.world.world_size:
            raise CheckpointError(
                f"{path}: saved by {meta['world_size']} ranks, this job has {self.world.world_size} "
                "(the data shards and ZeRO partitions are per rank: resume with the same world size)"
            )
        self.step = meta["step"]
        # The architecture at this step: masks already removed if the ramp was done.
        growth.apply_mask(self.model, self.step, self.ramp_steps)
        self.engine.load(path)
        self.engine.steps_taken = self.step
        rank_state = self._read_rank_state(path)
        self.data.load_state_dict(rank_state["data"])
        torch.set_rng_state(torch.tensor(rank_state["rng"], dtype=torch.uint8))
        self.tokens = {k: int(v) for k, v in meta["tokens"].items()}
        self.nonfinite = meta.get("nonfinite", self.nonfinite)
        self.restarts = meta.get("restarts", 0) + 1
        if self.world.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return path

    def _read_rank_state(self, path: Path) -> dict:
        import json

        return json.loads((path / f"rank_{self.world.rank:05d}.json").read_text())

    def load_start_optimizer(self) -> None:
        """Adam moments carried from the previous stage (grown by `motif grow`), if it saved them."""
        start = self.stage.start_checkpoint
        if start is None:
            return
        path = Path(start) / "optimizer.safetensors"
        if not path.is_file():
            log.info("no optimizer state in %s: Adam moments start at zero", start)
            return
        n = self.engine.load_optimizer(path)
        if self.world.is_main:
            log.info("optimizer: carried Adam moments of %d parameters from %s", n, path)

    # ---- the loop ----------------------------------------------------------------------------------

    def train(self) -> int:
        s = self.stage
        if self.world.is_main:
            n = self.model.args.num_params()
            log.info(
                "stage %s: %s parameters, %d ranks (%s), steps %d -> %d, %d tokens per step",
                s.name,
                f"{n:,}",
                self.world.world_size,
                s.parallel.engine,
                self.step,
                self.max_steps,
                self.tokens_per_step,
            )
        self._log_state()
        while self.step < self.max_steps:
            t0 = time.perf_counter()
            pending = self.model.args.growth is not None
            mask = growth.apply_mask(self.model, self.step, self.ramp_steps)
            if pending and self.model.args.growth is None and self.world.is_main:
                log.info("growth masks reached 1 at step %d and were removed: the model is a plain Llama", self.step)
            lr = self.schedule(self.step)
            batches = [self.data.next_batch(s.train.micro_batch_size) for _ in range(s.train.grad_accum_steps)]
            if self.step == 0 and self.resumed_from is None and s.growth is not None:
                self.check_growth_loss(batches)
            try:
                stats = self.train_step(batches, lr)
            except RuntimeError as e:
                if self.world.distributed and _is_collective_failure(e):
                    dist.fail_fast(self.world, self.step, e)
                raise
            self.step += 1
            if not stats.finite:
                self._on_nonfinite(stats)
            for lang, n in stats.tokens_by_language.items():
                self.tokens[lang] += n
            seconds = time.perf_counter() - t0
            self._log_step(stats, lr, mask, seconds)
            if self.step % s.checkpoint.every_steps == 0 and self.step < self.max_steps:
                self._collective(self.save_checkpoint)
        # A ramp that ends with the stage (ramp_steps == max_steps) removes its masks here.
        growth.apply_mask(self.model, self.step, self.ramp_steps)
        self._collective(self.save_final)
        return 0

    def _collective(self, fn):
        """Run a step that synchronises ranks; a lost peer there also ends this rank at once."""
        try:
            return fn()
        except RuntimeError as e:
            if self.world.distributed and _is_collective_failure(e):
                dist.fail_fast(self.world, self.step, e)
            raise

    @property
    def tokens_per_step(self) -> int:
        t = self.stage.train
        return t.micro_batch_size * t.grad_accum_steps * self.stage.data.seq_len * self.world.world_size

    def train_step(self, batches: list[Batch], lr: float) -> StepStats:
        n_lang = len(self.data.languages)
        device = self.world.device
        # [loss sum per source, token count per source, non-finite flag]
        sums = torch.zeros(2 * n_lang + 1, dtype=torch.float64, device=device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with self.engine.accumulate(last):
                loss, per_seq = self.forward_loss(batch)
                if _fault_nan(self.step):
                    loss = loss * float("nan")
                self.engine.backward(loss, len(batches))
            src = batch.source.to(device)
            sums[:n_lang].index_add_(0, src, per_seq.double())
            sums[n_lang : 2 * n_lang].index_add_(0, src, torch.full_like(per_seq, batch.inputs.shape[1]).double())
        grad_norm = self.engine.clip_grad_norm(self.stage.optim.grad_clip)
        sums[-1] = float(not (torch.isfinite(grad_norm) and torch.isfinite(sums[:n_lang]).all()))
        dist.all_reduce_sum(self.world, sums)
        finite = sums[-1].item() == 0
        if finite:
            after = self.engine.step(lr)  # engines that clip inside their step report the norm here
            grad_norm = grad_norm if after is None else torch.tensor(after)
        else:
            self.engine.skip_step()
        return self._stats(sums, n_lang, float(grad_norm), finite)

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token loss of a micro-batch, and each sequence's loss sum (for per-language loss)."""
        inputs = batch.inputs.to(self.world.device, non_blocking=True)
        targets = batch.targets.to(self.world.device, non_blocking=True)
        logits = self.engine.forward(inputs)
        per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        per_seq = per_token.view(targets.shape).sum(dim=1)
        return per_token.mean(), per_seq.detach()

    def _stats(self, sums: torch.Tensor, n_lang: int, grad_norm: float, finite: bool) -> StepStats:
        loss_sum: dict[str, float] = {}
        count: dict[str, int] = {}
        for i, lang in enumerate(self.data.languages):
            loss_sum[lang] = loss_sum.get(lang, 0.0) + sums[i].item()
            count[lang] = count.get(lang, 0) + int(sums[n_lang + i].item())
        total = sum(count.values())
        by_lang = {k: loss_sum[k] / count[k] for k in count if count[k]}
        return StepStats(sum(loss_sum.values()) / max(total, 1), by_lang, count, grad_norm, finite)

    def check_growth_loss(self, batches: list[Batch]) -> None:
        """Loss of the input (un-grown) model on this stage's first batch: must equal the grown model's."""
        if self.stage.parallel.engine == "deepspeed":
            return  # the input model is loaded whole on every rank: not at ZeRO sizes
        from motif.model.checkpoint import load

        before = load(self.stage.input, dtype=torch.float32, device=self.world.device)
        sums = torch.zeros(2, dtype=torch.float64, device=self.world.device)
        with torch.no_grad():
            for batch in batches:
                logits = before(batch.inputs.to(self.world.device))
                t = batch.targets.to(self.world.device)
                sums[0] += F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), reduction="sum").double()
                sums[1] += t.numel()
        del before
        dist.all_reduce_sum(self.world, sums)
        self.growth_loss_before = (sums[0] / sums[1]).item()

    # ---- metrics ---------------------------------------------------------------------------------

    def _log_state(self) -> None:
        self.metrics.log(
            {
                names.STEP.name: self.step,
                names.WORLD_SIZE.name: self.world.world_size,
                names.RESTARTS.name: self.restarts,
                names.GROWTH_MASK.name: self.model.growth_mask,
                names.TOKENS.name: dict(self.tokens),
            },
            self.step,
        )

    def _log_step(self, stats: StepStats, lr: float, mask: float, seconds: float) -> None:
        tokens = sum(stats.tokens_by_language.values())
        tokens_per_s = tokens / seconds
        mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.world.world_size)
        record = {
            names.STEP.name: self.step,
            names.LOSS.name: {"all": stats.loss, **stats.loss_by_language},
            names.TOKENS.name: dict(self.tokens),
            names.LEARNING_RATE.name: lr,
            names.GRAD_NORM.name: stats.grad_norm,
            names.MFU.name: mfu,
            names.GROWTH_MASK.name: mask,
            names.STEP_SECONDS.name: seconds,
            names.TOKENS_PER_SECOND.name: tokens_per_s,
            names.NONFINITE_STEPS.name: dict(self.nonfinite),
        }
        before = getattr(self, "growth_loss_before", None)
        if before is not None and self.step == 1:
            record[names.GROWTH_LOSS.name] = {"before": before, "after": stats.loss}
            if self.world.is_main:
                rel = abs(stats.loss - before) / max(abs(before), 1e-12)
                log.info(
                    "growth check: loss before growth %.6f, after %.6f (relative difference %.1e)",
                    before,
                    stats.loss,
                    rel,
                )
        self.metrics.log(record, self.step)
        if self.world.is_main and (self.step % self.options.log_every == 0 or self.step == self.max_steps):
            langs = " ".join(f"{k} {v:.3f}" for k, v in sorted(stats.loss_by_language.items()))
            log.info(
                "step %d/%d loss %.4f (%s) lr %.2e grad %.2f mask %.2f %.0f tok/s mfu %.1f%%",
                self.step,
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
        self.nonfinite[policy] += 1
        self.metrics.log({names.NONFINITE_STEPS.name: dict(self.nonfinite)}, self.step)
        if policy == "skip":
            log.warning(
                "step %d: non-finite loss or gradient (loss %s, grad norm %s): step skipped",
                self.step,
                stats.loss,
                stats.grad_norm,
            )
            return
        last = self.checkpoints.latest()
        if self.world.is_main:
            print(
                f"motif train: step {self.step}: non-finite loss or gradient (loss {stats.loss}, grad norm "
                f"{stats.grad_norm}); nan_policy stop: stopping without saving; last good checkpoint: "
                f"{last or 'none'}",
                file=sys.stderr,
                flush=True,
            )
        self.close()
        sys.exit(EXIT_NONFINITE)

    # ---- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        import json

        t0 = time.perf_counter()

        def write(directory: Path) -> None:
            self.engine.save(directory)
            state = {"data": self.data.state_dict(), "rng": torch.get_rng_state().tolist()}
            (directory / f"rank_{self.world.rank:05d}.json").write_text(json.dumps(state))

        meta = {
            "stage": self.stage.name,
            "world_size": self.world.world_size,
            "engine": self.stage.parallel.engine,
            "mask": self.model.growth_mask,
            "tokens": self.tokens,
            "nonfinite": self.nonfinite,
            "restarts": self.restarts,
        }
        path = self.checkpoints.save(self.step, write, meta)
        seconds = time.perf_counter() - t0
        self.metrics.log({names.CHECKPOINT_SECONDS.name: seconds, names.LAST_CHECKPOINT.name: time.time()}, self.step)
        if self.world.is_main:
            log.info("checkpoint %s written in %.2fs", path, seconds)
        return path

    def save_final(self) -> None:
        """The stage's output: HF layout (motif layout while masks are below 1) + optimizer state."""
        t0 = time.perf_counter()
        model, optimizer = self.engine.final_state()
        if self.world.is_main:
            from safetensors.torch import save_file

            from motif.model.checkpoint import atomic_dir, save

            with atomic_dir(self.stage.output, overwrite=True) as tmp:
                save(model, tmp, overwrite=True)
                save_file(optimizer, str(tmp / "optimizer.safetensors"))
                os.chmod(tmp / "optimizer.safetensors", 0o644)
            log.info("stage %s done: %s written in %.2fs", self.stage.name, self.stage.output, time.perf_counter() - t0)
        dist.barrier(self.world)

    # ---- shutdown ------------------------------------------------------------------------------------

    def close(self) -> None:
        self.metrics.close()
        dist.close(self.world)

    def linger(self) -> None:
        """Keep the exporter serving after the run (so a scraper sees the final values)."""
        if self.exporter is not None and self.options.linger_seconds > 0:
            log.info("metrics: serving for %.0fs more at %s", self.options.linger_seconds, self.exporter.url)
            time.sleep(self.options.linger_seconds)
        if self.exporter is not None:
            self.exporter.stop()


def _fault_nan(step: int) -> bool:
    """Fault injection for the nan_policy tests: MOTIF_FAULT_NAN_STEP=N poisons the loss of step N."""
    value = os.environ.get("MOTIF_FAULT_NAN_STEP")
    return value is not None and int(value) == step


def _is_collective_failure(err: BaseException) -> bool:
    text = str(err).lower()
    markers = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")
    return isinstance(err, torch.distributed.DistBackendError) or any(m in text for m in markers)
