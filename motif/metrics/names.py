"""Every metric motif exports, declared once.

The exporter, the JSONL log, the Grafana dashboards, the alert rules and docs/metrics.md all take
their names from here. Prometheus conventions: `motif_` prefix, base units, counters end in
`_total`, ratios in 0..1, bounded label sets (language and stage names come from the stage file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["gauge", "counter", "histogram", "info"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# Step times from ~10 ms (tiny CPU model) to ~10 min (a stalled step on a large job).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)

STEP = Metric("motif_step", "gauge", "Optimizer steps completed in this stage.")
TOKENS = Metric("motif_tokens_total", "counter", "Training tokens consumed, per language.", ("language",))
LOSS = Metric("motif_loss", "gauge", "Training loss (mean cross-entropy per token) of the last step.", ("language",))
LEARNING_RATE = Metric("motif_learning_rate", "gauge", "Learning rate of the last optimizer step.")
GRAD_NORM = Metric("motif_grad_norm", "gauge", "Global gradient L2 norm before clipping.")
MFU = Metric("motif_mfu", "gauge", "Model FLOPs utilisation of the last step, 0..1 of the device's peak.")
GROWTH_MASK = Metric("motif_growth_mask", "gauge", "MSG mask value, 0..1 (1 when no growth is ramping).")
STEP_SECONDS = Metric("motif_step_seconds", "histogram", "Wall time of one optimizer step.", buckets=STEP_BUCKETS)
CHECKPOINT_SECONDS = Metric(
    "motif_checkpoint_seconds", "histogram", "Wall time to write one checkpoint.", buckets=CHECKPOINT_BUCKETS
)
TOKENS_PER_SECOND = Metric(
    "motif_tokens_per_second", "gauge", "Training tokens per second of the last step, all ranks."
)
GROWTH_LOSS = Metric(
    "motif_growth_loss",
    "gauge",
    "Loss on the first batch of a stage that grows: of the input model (before) and the grown one (after).",
    ("when",),
)
LAST_CHECKPOINT = Metric(
    "motif_last_checkpoint_timestamp_seconds", "gauge", "Unix time of the last completed checkpoint."
)
NONFINITE_STEPS = Metric(
    "motif_nonfinite_steps_total", "counter", "Steps whose loss or gradient was NaN or infinite.", ("action",)
)
RESTARTS = Metric("motif_restarts_total", "counter", "Times this stage resumed from a checkpoint.")
WORLD_SIZE = Metric("motif_world_size", "gauge", "Processes in the job, as seen by this rank.")
STAGE_INFO = Metric(
    "motif_stage", "info", "The stage this process trains.", ("stage", "growth", "params", "world_size", "engine")
)
HELDOUT_BITS_PER_BYTE = Metric(
    "motif_heldout_bits_per_byte",
    "gauge",
    "Bits per byte of the held-out text of each language (motif.eval.heldout) at its last scoring.",
    ("language",),
)
# Pushed by `motif eval` to a Pushgateway (a short-lived eval Job is not scraped reliably).
EVAL_SCORE = Metric(
    "motif_eval_score",
    "gauge",
    "Benchmark score of a stage's final checkpoint (lm-evaluation-harness, via motif eval).",
    ("stage", "task", "metric"),
)

ALL: tuple[Metric, ...] = (
    STEP,
    TOKENS,
    LOSS,
    LEARNING_RATE,
    GRAD_NORM,
    MFU,
    GROWTH_MASK,
    STEP_SECONDS,
    CHECKPOINT_SECONDS,
    LAST_CHECKPOINT,
    NONFINITE_STEPS,
    RESTARTS,
    WORLD_SIZE,
    STAGE_INFO,
    TOKENS_PER_SECOND,
    GROWTH_LOSS,
    HELDOUT_BITS_PER_BYTE,
    EVAL_SCORE,
)
