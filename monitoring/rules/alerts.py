"""Alerting rules of motif training jobs, with the promtool unit tests of each alert.

Every alert carries `severity`, `for`, `summary`, `description` and a `runbook_url` into
docs/runbooks.md (anchor: the alert name in lower case). Each alert declares at least one case
where it fires and one where it stays quiet; `make dashboards` writes them as a promtool test file
so `promtool test rules` checks the rules against the thresholds of `monitoring.config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from monitoring import config
from monitoring.promql import by, series
from motif.metrics import names

T = config.THRESHOLDS
JOB = by(config.JOB_LABELS)
TRAINER_UP = f'up{{container="{config.TRAINER_CONTAINER}"}}'
POD_RE = config.JOB_POD_REGEX
MASTER_RE = config.JOB_MASTER_POD_REGEX


def _job_from_pod(expr: str) -> str:
    """Set `job` to the PyTorchJob name taken from the pod name (DCGM and kube-state-metrics series)."""
    return f'label_replace({expr}, "job", "$1", "pod", "{POD_RE}")'


def _job_from_master(expr: str) -> str:
    return f'label_replace({expr}, "job", "$1", "pod", "{MASTER_RE}")'


def _pods(name: str, extra: str = "") -> str:
    return f'{name}{{pod=~"{POD_RE}"{", " + extra if extra else ""}}}'


@dataclass(frozen=True)
class Case:
    """A promtool test case: input series (promtool expanding notation, 1m interval), evaluated at `at`.

    `fires` lists the label sets of the expected alerts (empty: the alert must stay quiet); `value`
    is what `{{ $value | humanize }}` renders to in the description.
    """

    name: str
    series: dict[str, str]
    at: str
    fires: list[dict[str, str]] = field(default_factory=list)
    value: str = ""


@dataclass(frozen=True)
class Recording:
    """A recording rule: a series the alerts read and Prometheus stores (a `level:metric:operation` name)."""

    record: str
    expr: str
    help: str

    def rule(self) -> dict:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    cases: tuple[Case, ...] = ()

    @property
    def anchor(self) -> str:
        return self.name.lower()

    def rule(self) -> dict:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{config.RUNBOOK_BASE}#{self.anchor}",
            },
        }

    def render(self, text: str, labels: dict[str, str], value: str) -> str:
        """What Prometheus renders a template of this alert to (the subset of templating used here)."""
        text = re.sub(r"{{ \$labels\.(\w+) }}", lambda m: labels.get(m.group(1), ""), text)
        return text.replace("{{ $value | humanize }}", value)


STEP = series(names.STEP)
LOSS = series(names.LOSS)
TOKENS = series(names.TOKENS)
MFU = series(names.MFU)
RESTARTS = series(names.RESTARTS)
NONFINITE = series(names.NONFINITE_STEPS)
WORLD = series(names.WORLD_SIZE)
CKPT = series(names.LAST_CHECKPOINT)
STAGE_INFO = series(names.STAGE_INFO)
HELDOUT = series(names.HELDOUT_BITS_PER_BYTE)
START = config.HELDOUT_START_RECORD
BY_LANGUAGE = by((*config.JOB_LABELS, "language"))
WATCHED = f'language="{config.FORGETTING_LANGUAGE}"'
MASTER_RUNNING = f'kube_pod_status_phase{{phase="Running", pod=~"{MASTER_RE}"}}'
KUBE_RESTARTS = _pods("kube_pod_container_status_restarts_total", f'container="{config.TRAINER_CONTAINER}"')

# Target labels of a trainer process in the test series.
_T = 'namespace="ml", job="s1", instance="10.0.0.1:9401", pod="s1-master-0", container="pytorch"'
_J = {"namespace": "ml", "job": "s1"}
_KSM = 'job="kube-state-metrics", instance="10.0.0.9:8080"'
_GPU = 'namespace="ml", pod="s1-{role}-{i}", gpu="{g}", job="dcgm", container="pytorch"'


def _mins(duration: str) -> int:
    unit = {"m": 1, "h": 60}[duration[-1]]
    return int(duration[:-1]) * unit


def _gpus(ranks: range, name: str = "DCGM_FI_DEV_GPU_UTIL", value: str = "90x60") -> dict[str, str]:
    """Series of one GPU per rank; 2 GPUs per pod (ranks 0-1 in the master pod)."""
    out = {}
    for rank in ranks:
        role, i = ("master", 0) if rank < 2 else ("worker", rank // 2 - 1)
        out[f"{name}{{{_GPU.format(role=role, i=i, g=rank % 2)}}}"] = value
    return out


RECORDINGS: tuple[Recording, ...] = (
    Recording(
        START,
        # A latch: once a job has a held-out score, keep the first one (the stage start) for as long
        # as the job keeps exporting scores within the hold window; until then, take the current one.
        f"(max by ({BY_LANGUAGE}) (last_over_time({START}[{T.forgetting_hold}])) and on ({BY_LANGUAGE}) "
        f"max by ({BY_LANGUAGE}) (max_over_time({HELDOUT}[{T.forgetting_hold}]))) "
        f"or max by ({BY_LANGUAGE}) ({HELDOUT})",
        "Held-out bits per byte of each job and language at its first score (the stage start).",
    ),
)

ALERTS: tuple[Alert, ...] = (
    Alert(
        "MotifTrainingStalled",
        f"max by ({JOB}) (changes({STEP}[{T.stall_window}])) == 0",
        T.stall_for,
        "critical",
        "Training job {{ $labels.namespace }}/{{ $labels.job }} makes no progress",
        f"No optimizer step completed in {T.stall_window} (motif_step unchanged) while the trainer is still "
        "scraped: a hung collective, a stuck data loader or a deadlocked checkpoint.",
        (
            Case(
                "steps stop",
                {f"{STEP}{{{_T}}}": f"0+1x20 20x{_mins(T.stall_window) + 20}"},
                f"{20 + _mins(T.stall_window) + _mins(T.stall_for) + 1}m",
                [_J],
            ),
            Case("steps advance", {f"{STEP}{{{_T}}}": "0+1x120"}, "100m"),
        ),
    ),
    Alert(
        "MotifLossNotFinite",
        f"max by ({JOB}, language) (({LOSS} != {LOSS}) or (abs({LOSS}) == +Inf))",
        T.nonfinite_for,
        "critical",
        "Loss of {{ $labels.namespace }}/{{ $labels.job }} ({{ $labels.language }}) is NaN or infinite",
        "The last logged training loss is not a finite number: the model has diverged or the data is bad; "
        "every step from here on is wasted.",
        (
            Case(
                "loss becomes NaN",
                {f'{LOSS}{{{_T}, language="ko"}}': "2.5x10 " + "NaN " * 10},
                "15m",
                [{**_J, "language": "ko"}],
            ),
            Case(
                "loss becomes +Inf",
                {f'{LOSS}{{{_T}, language="en"}}': "2.5x10 " + "Inf " * 10},
                "15m",
                [{**_J, "language": "en"}],
            ),
            Case("finite loss", {f'{LOSS}{{{_T}, language="ko"}}': "2.5-0.01x30"}, "20m"),
        ),
    ),
    Alert(
        "MotifNonFiniteStepsSkipped",
        f"sum by ({JOB}) (increase({NONFINITE}[{T.nonfinite_skips_window}])) > {T.nonfinite_skips}",
        "1m",
        "warning",
        "{{ $labels.namespace }}/{{ $labels.job }} skips steps with a NaN or infinite loss",
        f"{{{{ $value | humanize }}}} steps in {T.nonfinite_skips_window} had a non-finite loss or gradient "
        "and were skipped (nan_policy: skip). A few are tolerated; a steady stream means divergence.",
        (
            Case(
                "steady skips",
                {f'{NONFINITE}{{{_T}, action="skip"}}': "0+1x40"},
                "35m",
                [_J],
                value=f"{_mins(T.nonfinite_skips_window)}",
            ),
            Case("one skip", {f'{NONFINITE}{{{_T}, action="skip"}}': "0x10 1x30"}, "35m"),
        ),
    ),
    Alert(
        "MotifLossSpike",
        f"avg by ({JOB}, language) ({LOSS}) > {T.loss_spike_ratio} * avg by ({JOB}, language) "
        f"(avg_over_time({LOSS}[{T.loss_spike_baseline}]))",
        T.loss_spike_for,
        "warning",
        "Loss spike in {{ $labels.namespace }}/{{ $labels.job }} ({{ $labels.language }})",
        f"The loss is {{{{ $value | humanize }}}}, above {T.loss_spike_ratio}x its mean over the last "
        f"{T.loss_spike_baseline}: a bad data shard, a learning-rate problem or the start of divergence.",
        (
            Case(
                "loss triples",
                {f'{LOSS}{{{_T}, language="ko"}}': "2x60 6x30"},
                "80m",
                [{**_J, "language": "ko"}],
                value="6",
            ),
            Case("loss falls", {f'{LOSS}{{{_T}, language="ko"}}': "3-0.01x90"}, "80m"),
        ),
    ),
    Alert(
        "MotifThroughputDrop",
        f"sum by ({JOB}) (rate({TOKENS}[{T.throughput_window}])) < {T.throughput_drop_ratio} * sum by ({JOB}) "
        f"(rate({TOKENS}[{T.throughput_baseline}] offset {T.throughput_baseline_offset}))",
        T.throughput_for,
        "warning",
        "Throughput of {{ $labels.namespace }}/{{ $labels.job }} dropped",
        f"Tokens/s fell to {{{{ $value | humanize }}}}, below {T.throughput_drop_ratio}x the job's own rate over "
        f"the {T.throughput_baseline} before the last {T.throughput_baseline_offset}: a slow node, throttled "
        "GPUs, a degraded network link or a slow data source.",
        (
            Case(
                "tokens/s halves",
                {f'{TOKENS}{{{_T}, language="ko"}}': "0+60000x90 5400000+15000x60"},
                "140m",
                [_J],
                value="250",
            ),
            Case("steady tokens/s", {f'{TOKENS}{{{_T}, language="ko"}}': "0+60000x150"}, "140m"),
        ),
    ),
    Alert(
        "MotifLowMFU",
        f"avg by ({JOB}) ({MFU}) < {T.low_mfu}",
        T.low_mfu_for,
        "warning",
        "Low model FLOPs utilisation in {{ $labels.namespace }}/{{ $labels.job }}",
        f"MFU has been {{{{ $value | humanize }}}} (below {T.low_mfu}) for {T.low_mfu_for}: the GPUs wait on "
        "communication, data loading or small kernels. Check the parallel layout and the GPU panels.",
        (
            Case("mfu 0.1", {f"{MFU}{{{_T}}}": "0.1x60"}, "45m", [_J], value="100m"),
            Case("mfu 0.4", {f"{MFU}{{{_T}}}": "0.4x60"}, "45m"),
        ),
    ),
    Alert(
        "MotifTrainerDown",
        f"{TRAINER_UP} == 0",
        T.target_down_for,
        "critical",
        "Trainer metrics of {{ $labels.namespace }}/{{ $labels.pod }} cannot be scraped",
        "Prometheus cannot scrape the trainer exporter of pod {{ $labels.pod }} (job {{ $labels.job }}): the "
        "process is dead, restarting or hung.",
        (
            Case(
                "scrapes fail",
                {f"up{{{_T}}}": "1x10 0x20"},
                "20m",
                [{**_J, "instance": "10.0.0.1:9401", "pod": "s1-master-0", "container": "pytorch"}],
            ),
            Case("scrapes succeed", {f"up{{{_T}}}": "1x30"}, "20m"),
        ),
    ),
    Alert(
        "MotifTrainerAbsent",
        f"max by ({JOB}) ({_job_from_master(MASTER_RUNNING)}) == 1 and on ({JOB}) max by ({JOB}) "
        f"(max_over_time({STAGE_INFO}[{T.absent_lookback}])) unless on ({JOB}) max by ({JOB}) ({TRAINER_UP})",
        T.absent_for,
        "warning",
        "Trainer of {{ $labels.namespace }}/{{ $labels.job }} is no longer scraped",
        "The job's master pod is Running and its trainer exported metrics in the last "
        f"{T.absent_lookback}, but Prometheus has no trainer target for it any more: the PodMonitor no longer "
        "selects the pod, or the metrics port changed. The job runs unwatched.",
        (
            Case(
                "target vanishes",
                {
                    f'kube_pod_status_phase{{namespace="ml", pod="s1-master-0", phase="Running", {_KSM}}}': "1x60",
                    f'{STAGE_INFO}{{{_T}, stage="s1-depth"}}': "1x20",
                    f"up{{{_T}}}": "1x20",
                },
                "40m",
                [_J],
            ),
            Case(
                "target present",
                {
                    f'kube_pod_status_phase{{namespace="ml", pod="s1-master-0", phase="Running", {_KSM}}}': "1x60",
                    f'{STAGE_INFO}{{{_T}, stage="s1-depth"}}': "1x60",
                    f"up{{{_T}}}": "1x60",
                },
                "40m",
            ),
            Case(
                "job finished",
                {
                    f'kube_pod_status_phase{{namespace="ml", pod="s1-master-0", phase="Running", {_KSM}}}': "1x20 0x40",
                    f'{STAGE_INFO}{{{_T}, stage="s1-depth"}}': "1x20",
                    f"up{{{_T}}}": "1x20",
                },
                "40m",
            ),
        ),
    ),
    Alert(
        "MotifRanksMissing",
        f"max by ({JOB}) ({WORLD}) > on ({JOB}) count by ({JOB}) ({_job_from_pod(_pods('DCGM_FI_DEV_GPU_UTIL'))})",
        T.ranks_missing_for,
        "critical",
        "{{ $labels.namespace }}/{{ $labels.job }} runs on fewer GPUs than its world size",
        "The job expects {{ $value | humanize }} processes (motif_world_size) but the DCGM exporter sees fewer "
        "GPUs in its pods: a pod is Pending, evicted or lost its GPUs, and the remaining ranks will block "
        "in their next collective.",
        (
            Case(
                "a worker's GPUs vanish",
                {f"{WORLD}{{{_T}}}": "4x60", **_gpus(range(2)), **_gpus(range(2, 4), value="90x5 _x55")},
                "20m",
                [_J],
                value="4",
            ),
            Case("all GPUs present", {f"{WORLD}{{{_T}}}": "4x60", **_gpus(range(4))}, "20m"),
        ),
    ),
    Alert(
        "MotifRepeatedRestarts",
        f"sum by ({JOB}) (increase({RESTARTS}[{T.restarts_window}])) >= {T.restarts} or sum by ({JOB}) "
        f"({_job_from_pod(f'increase({KUBE_RESTARTS}[{T.restarts_window}])')}) >= {T.restarts}",
        T.restarts_for,
        "warning",
        "{{ $labels.namespace }}/{{ $labels.job }} keeps restarting",
        f"The job resumed or its containers restarted {{{{ $value | humanize }}}} times in {T.restarts_window}: "
        "every restart loses the steps since the last checkpoint. Look for the cause in the previous logs.",
        (
            Case("resumes twice", {f"{RESTARTS}{{{_T}}}": "0x10 1x10 2x10"}, "25m", [_J], value="2"),
            Case(
                "container restarts",
                {
                    'kube_pod_container_status_restarts_total{namespace="ml", pod="s1-worker-0", '
                    'container="pytorch", job="kube-state-metrics"}': "0x10 1x5 2x5 3x10"
                },
                "25m",
                [_J],
                value="3",
            ),
            Case("one resume", {f"{RESTARTS}{{{_T}}}": "0x10 1x30"}, "25m"),
        ),
    ),
    Alert(
        "MotifGPUXidError",
        f"max by (namespace, job, pod, gpu) ({_job_from_pod(_pods('DCGM_FI_DEV_XID_ERRORS'))}) > 0",
        T.xid_for,
        "critical",
        "GPU XID error on {{ $labels.namespace }}/{{ $labels.pod }} GPU {{ $labels.gpu }}",
        "GPU {{ $labels.gpu }} of pod {{ $labels.pod }} (job {{ $labels.job }}) reported XID "
        "{{ $value | humanize }}: a driver, memory (ECC) or NVLink fault; the rank may hang or crash.",
        (
            Case(
                "xid 79",
                _gpus(range(1), "DCGM_FI_DEV_XID_ERRORS", "0x5 79x10"),
                "10m",
                [{**_J, "pod": "s1-master-0", "gpu": "0"}],
                value="79",
            ),
            Case("no xid", _gpus(range(2), "DCGM_FI_DEV_XID_ERRORS", "0x20"), "10m"),
        ),
    ),
    Alert(
        "MotifCheckpointTooOld",
        f"time() - max by ({JOB}) ({CKPT} > 0) > {T.checkpoint_max_age_seconds}",
        T.checkpoint_age_for,
        "warning",
        "No checkpoint of {{ $labels.namespace }}/{{ $labels.job }} for a long time",
        f"The last completed checkpoint is {{{{ $value | humanize }}}}s old (limit {T.checkpoint_max_age_seconds}s): "
        "a crash now loses all work since. Checkpoint writes fail or take too long.",
        (
            Case("checkpoint at t=60s only", {f"{CKPT}{{{_T}}}": "60x200"}, "150m", [_J], value="8.94k"),
            Case("checkpoint every minute", {f"{CKPT}{{{_T}}}": "0+60x200"}, "150m"),
            Case("no checkpoint yet", {f"{CKPT}{{{_T}}}": "0x200"}, "150m"),
        ),
    ),
    Alert(
        "MotifEnglishForgetting",
        f"max by ({BY_LANGUAGE}) ({HELDOUT}{{{WATCHED}}}) > on ({BY_LANGUAGE}) (1 + {T.forgetting_margin}) * "
        f"{START}{{{WATCHED}}}",
        T.forgetting_for,
        "warning",
        "{{ $labels.namespace }}/{{ $labels.job }} forgets {{ $labels.language }}: held-out loss rose",
        f"Held-out bits per byte of {{{{ $labels.language }}}} is {{{{ $value | humanize }}}}, more than "
        f"{T.forgetting_margin:.0%} above its value at the start of the stage: the data mix starves this "
        "language (catastrophic forgetting). The benchmark scores of the stage will follow.",
        (
            Case(
                "English bits per byte up 10%",
                {f'{HELDOUT}{{{_T}, language="en"}}': "1.0x30 1.1x60"},
                "60m",
                [{**_J, "language": "en"}],
                value="1.1",
            ),
            Case(
                "a restarted pod (new instance) is compared with the same start",
                {
                    f'{HELDOUT}{{{_T}, language="en"}}': "1.0x20",
                    f'{HELDOUT}{{{_T.replace("10.0.0.1", "10.0.0.2")}, language="en"}}': "_x25 1.2x65",
                },
                "60m",
                [{**_J, "language": "en"}],
                value="1.2",
            ),
            Case("a rise within the margin", {f'{HELDOUT}{{{_T}, language="en"}}': "1.0x30 1.02x60"}, "60m"),
            Case("English improves", {f'{HELDOUT}{{{_T}, language="en"}}': "1.2-0.002x90"}, "60m"),
            Case("Korean rises (not watched)", {f'{HELDOUT}{{{_T}, language="ko"}}': "1.0x30 1.5x60"}, "60m"),
        ),
    ),
)


def rules_file() -> dict:
    # Recording rules first: rules of a group run in order, so the alerts read this evaluation's values.
    rules = [r.rule() for r in RECORDINGS] + [a.rule() for a in ALERTS]
    return {"groups": [{"name": "motif.alerts", "rules": rules}]}


def tests_file(rules_path: str) -> dict:
    tests = []
    for alert in ALERTS:
        for case in alert.cases:
            expected = []
            for labels in case.fires:
                full = {**labels, "severity": alert.severity, "alertname": alert.name}
                expected.append(
                    {
                        "exp_labels": {k: v for k, v in full.items() if k != "alertname"},
                        "exp_annotations": {
                            "summary": alert.render(alert.summary, full, case.value),
                            "description": alert.render(alert.description, full, case.value),
                            "runbook_url": f"{config.RUNBOOK_BASE}#{alert.anchor}",
                        },
                    }
                )
            tests.append(
                {
                    "name": f"{alert.name}: {case.name}",
                    "interval": "1m",
                    "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                    "alert_rule_test": [{"eval_time": case.at, "alertname": alert.name, "exp_alerts": expected}],
                }
            )
    return {"rule_files": [rules_path], "evaluation_interval": "1m", "tests": tests}
