"""Thresholds, selectors and labels of the motif dashboards and alerts, in one place.

Everything a cluster operator may want to tune lives here; `make dashboards` regenerates the JSON
and YAML after a change (CI fails if the committed files drift from this module).

Label model. In the cluster, a PodMonitor scrapes the `pytorch` container of each PyTorchJob pod
and takes the `job` label from the pod label `training.kubeflow.org/job-name`, so `job` is the
PyTorchJob name (one job per growth stage); prometheus-operator adds `namespace`, `pod` and
`container`. `make monitor` and the tests give local targets the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- selectors -------------------------------------------------------------------------------

# Labels that identify one scraped trainer process; series of the same process share them.
TARGET_LABELS = ("namespace", "job", "instance")
# Labels an alert about one training job is aggregated by.
JOB_LABELS = ("namespace", "job")
# The trainer's container, as named in the PyTorchJob (the operator requires `pytorch`).
TRAINER_CONTAINER = "pytorch"
# PyTorchJob pod names are <job>-master-0 and <job>-worker-N: GPU and kube-state-metrics series
# are joined to a job on the `pod` label through this pattern ($1 = the job name).
JOB_POD_REGEX = "(.+)-(?:master|worker)-[0-9]+"
JOB_MASTER_POD_REGEX = "(.+)-master-0"

# Template-variable selectors the dashboards put into every motif query.
DASHBOARD_SELECTOR = 'namespace=~"$namespace", job=~"$job"'
DASHBOARD_STAGE_SELECTOR = 'stage=~"$stage"'
# Series of the selected jobs' pods: DCGM exporter (with Kubernetes pod mapping), kube-state-metrics.
DASHBOARD_POD_SELECTOR = 'namespace=~"$namespace", pod=~"(${job:regex})-(master|worker)-[0-9]+"'

# Rate window of the dashboards. Grafana's $__rate_interval adapts to the scrape interval.
DASHBOARD_RATE = "$__rate_interval"
# Default time range and refresh of the dashboards.
DASHBOARD_TIME = ("now-6h", "now")
GROWTH_DASHBOARD_TIME = ("now-7d", "now")
DASHBOARD_REFRESH = "30s"
# The growth view compares a stage's loss over its first steps with the previous stage's last loss.
GROWTH_EARLY_STEPS = 20

# Benchmark panels of the growth view (motif_eval_score, pushed by `motif eval`): lm-eval task names
# (anchored regexes) by language, and the metric shown. Subtasks (kmmlu_accounting, ...) stay in the
# table of all scores; the bars show the benchmarks' headline groups.
KOREAN_TASKS = "kmmlu|haerae|kobest|click|kormedmcqa|csatqa|global_mmlu_ko|demo_kmmlu|demo_kobest_copa"
ENGLISH_TASKS = "mmlu|demo_mmlu"
EVAL_METRIC = "acc"
# The language whose held-out bits per byte is watched for forgetting (alert MotifEnglishForgetting).
FORGETTING_LANGUAGE = "en"
# Recorded series holding each stage's first held-out score (its "start"), per job and language.
HELDOUT_START_RECORD = "motif:heldout_bits_per_byte:stage_start"

# Where the runbook of each alert lives; the anchor is the alert name in lower case.
RUNBOOK_BASE = "docs/runbooks.md"


# ---- alert thresholds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    # No optimizer step for this long: stalled. Must exceed the longest checkpoint write of the
    # largest stage (motif_checkpoint_seconds), since steps pause while a checkpoint is written.
    stall_window: str = "30m"
    stall_for: str = "5m"
    # Non-finite loss: page at once (a NaN loss poisons every later step).
    nonfinite_for: str = "1m"
    # Skipped non-finite steps (nan_policy: skip) tolerated per window before alerting.
    nonfinite_skips: int = 3
    nonfinite_skips_window: str = "30m"
    # Loss above this multiple of its own mean over the baseline window.
    loss_spike_ratio: float = 1.5
    loss_spike_baseline: str = "1h"
    loss_spike_for: str = "10m"
    # Tokens/s below this fraction of the job's own throughput over the baseline window, which ends
    # `throughput_baseline_offset` ago so a drop does not drag its own baseline down.
    throughput_drop_ratio: float = 0.7
    throughput_window: str = "10m"
    throughput_baseline: str = "1h"
    throughput_baseline_offset: str = "15m"
    throughput_for: str = "15m"
    # Model FLOPs utilisation (0..1) below this for `low_mfu_for`.
    low_mfu: float = 0.25
    low_mfu_for: str = "30m"
    # Trainer target down (scrape failing) for this long.
    target_down_for: str = "5m"
    # Master pod Running (kube-state-metrics) but no trainer target, for a job that exported
    # metrics within the lookback: the PodMonitor lost it.
    absent_lookback: str = "1h"
    absent_for: str = "10m"
    # GPUs visible for a job (DCGM) fewer than motif_world_size for this long.
    ranks_missing_for: str = "5m"
    # Restarts (resumes from a checkpoint, or container restarts) in the window.
    restarts: int = 2
    restarts_window: str = "1h"
    restarts_for: str = "1m"
    # GPU XID errors: any non-zero XID on a training pod's GPU.
    xid_for: str = "1m"
    # Seconds since the last completed checkpoint.
    checkpoint_max_age_seconds: int = 2 * 3600
    checkpoint_age_for: str = "10m"
    # Forgetting: English held-out bits per byte more than this fraction above its value at the
    # stage start (the first score of the stage's job), for `forgetting_for`.
    forgetting_margin: float = 0.03
    forgetting_for: str = "10m"
    # The stage-start value is kept while the job exported held-out scores within this window
    # (restarts and scoring gaps included); a job silent for longer starts afresh.
    forgetting_hold: str = "6h"


THRESHOLDS = Thresholds()
