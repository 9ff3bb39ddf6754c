"""Training overview: one growth stage's job at a glance (throughput, loss, optimizer, checkpoints, GPUs)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from monitoring import config
from monitoring.dashboards.common import (
    SEL,
    Layout,
    graph,
    new_dashboard,
    query,
    single,
    staged,
    with_stage,
)
from monitoring.promql import series
from motif.metrics import names

UID = "motif-training"
R = config.DASHBOARD_RATE
POD = config.DASHBOARD_POD_SELECTOR


def m(metric: names.Metric, suffix: str = "") -> str:
    """A motif series of the selected jobs and stages."""
    return staged(series(metric, SEL, suffix))


def rate(metric: names.Metric, suffix: str = "") -> str:
    return staged(f"rate({series(metric, SEL, suffix)}[{R}])")


def quantile(q: float, metric: names.Metric) -> str:
    return f"histogram_quantile({q}, sum by (job, le) ({rate(metric, '_bucket')}))"


def mean_of(metric: names.Metric) -> str:
    return f"sum by (job) ({rate(metric, '_sum')}) / sum by (job) ({rate(metric, '_count')})"


def gpu(name: str) -> str:
    return f"{name}{{{POD}}}"


def gpu_panels() -> list[tuple[str, str, str, str]]:
    """The GPU row, one DCGM series per panel: (title, description, expression, unit)."""
    return [
        (
            "GPU utilisation",
            "DCGM_FI_DEV_GPU_UTIL per GPU of the job's pods.",
            f"{gpu('DCGM_FI_DEV_GPU_UTIL')} / 100",
            "percentunit",
        ),
        (
            "Tensor core activity",
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE: fraction of cycles the tensor pipes are busy.",
            gpu("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"),
            "percentunit",
        ),
        (
            "GPU memory used",
            "Framebuffer used per GPU (DCGM reports MiB).",
            f"{gpu('DCGM_FI_DEV_FB_USED')} * 1024 * 1024",
            "bytes",
        ),
        ("GPU temperature", "DCGM_FI_DEV_GPU_TEMP per GPU.", gpu("DCGM_FI_DEV_GPU_TEMP"), "celsius"),
        ("GPU power", "DCGM_FI_DEV_POWER_USAGE per GPU.", gpu("DCGM_FI_DEV_POWER_USAGE"), "watt"),
        (
            "GPU XID errors",
            "Last XID error code per GPU (0: none). Any non-zero value pages.",
            f"max by (pod, gpu) ({gpu('DCGM_FI_DEV_XID_ERRORS')})",
            "short",
        ),
    ]


def build() -> dashboard.Dashboard:
    b = new_dashboard(
        UID,
        "motif / Training",
        "training",
        "Throughput, loss, optimizer state, checkpoints, restarts and GPUs of motif training jobs.",
        config.DASHBOARD_TIME,
    )
    g = Layout(b)
    tokens = series(names.TOKENS, SEL)
    restarts_kube = (
        "sum by (pod) (increase(kube_pod_container_status_restarts_total"
        f'{{{POD}, container="{config.TRAINER_CONTAINER}"}}[{R}]))'
    )

    g.row(1, "Job")
    g.add(
        2,
        single(
            "Stage",
            "Stage the selected job trains (motif_stage_info).",
            query(
                f"max by (stage, growth, engine) ({series(names.STAGE_INFO, SEL)})",
                "{{stage}} ({{growth}}, {{engine}})",
            ),
            name=True,
        ),
        w=6,
        h=4,
    )
    g.add(
        3,
        single("Step", "Optimizer steps completed in this stage.", query(f"max by (job) ({m(names.STEP)})", "{{job}}")),
        w=3,
        h=4,
    )
    g.add(
        4,
        single(
            "World size", "Training processes in the job.", query(f"max by (job) ({m(names.WORLD_SIZE)})", "{{job}}")
        ),
        w=3,
        h=4,
    )
    g.add(
        5,
        single(
            "Tokens/s", "Training tokens per second, all languages.", query(f"sum ({rate(names.TOKENS)})", "tokens/s")
        ),
        w=4,
        h=4,
    )
    g.add(
        6,
        single(
            "Last checkpoint age",
            "Time since the last completed checkpoint.",
            query(f"time() - max by (job) ({m(names.LAST_CHECKPOINT)} > 0)", "{{job}}"),
            unit="s",
        ),
        w=4,
        h=4,
    )
    g.add(
        7,
        single(
            "Resumes",
            "Times the stage resumed from a checkpoint (motif_restarts_total).",
            query(f"max by (job) ({m(names.RESTARTS)})", "{{job}}"),
        ),
        w=4,
        h=4,
    )

    g.row(10, "Training")
    g.add(
        11,
        graph(
            "Tokens/s",
            "Training tokens per second: total and per language.",
            query(f"sum ({rate(names.TOKENS)})", "total"),
            query(f"sum by (language) ({rate(names.TOKENS)})", "{{language}}", "B"),
        ),
        w=8,
    )
    g.add(
        12,
        graph(
            "Loss per language",
            "Mean cross-entropy per token of the last step.",
            query(f"avg by (language) ({m(names.LOSS)})", "{{language}}"),
        ),
        w=8,
    )
    g.add(
        13,
        graph(
            "Step time",
            "Wall time of one optimizer step (quantiles from the histogram).",
            query(quantile(0.5, names.STEP_SECONDS), "p50 {{job}}"),
            query(quantile(0.9, names.STEP_SECONDS), "p90 {{job}}", "B"),
            query(quantile(0.99, names.STEP_SECONDS), "p99 {{job}}", "C"),
            query(mean_of(names.STEP_SECONDS), "mean {{job}}", "D"),
            unit="s",
        ),
        w=8,
    )
    g.add(
        14,
        graph(
            "Learning rate",
            "Learning rate of the last optimizer step.",
            query(f"max by (job) ({m(names.LEARNING_RATE)})", "{{job}}"),
        ),
        w=6,
    )
    g.add(
        15,
        graph(
            "Gradient norm",
            "Global gradient L2 norm before clipping.",
            query(f"max by (job) ({m(names.GRAD_NORM)})", "{{job}}"),
        ),
        w=6,
    )
    g.add(
        16,
        graph(
            "MFU",
            "Model FLOPs utilisation of the last step, of the device's peak.",
            query(f"avg by (job) ({m(names.MFU)})", "{{job}}"),
            unit="percentunit",
        ),
        w=6,
    )
    g.add(
        17,
        graph(
            "MSG mask",
            "Mask value of masked structure growth: ramps 0 -> 1 after a growth event.",
            query(f"max by (job) ({m(names.GROWTH_MASK)})", "{{job}}"),
            unit="percentunit",
        ),
        w=6,
    )
    g.add(
        18,
        graph(
            "Non-finite steps",
            "Steps per second whose loss or gradient was NaN or infinite, per action.",
            # A job with no non-finite step yet has no series of this counter: show it as 0.
            query(
                f"sum by (job, action) ({rate(names.NONFINITE_STEPS)})"
                f" or on (job) (0 * max by (job) ({m(names.STEP)}))",
                "{{job}} {{action}}",
            ),
        ),
        w=12,
    )
    g.add(
        19,
        graph(
            "Tokens/s per process",
            "Throughput of each scraped trainer process, with its stage.",
            query(f"sum by (job, instance, stage) ({with_stage(f'rate({tokens}[{R}])')})", "{{stage}} {{instance}}"),
        ),
        w=12,
    )

    g.row(20, "Checkpoints and restarts")
    g.add(
        21,
        graph(
            "Checkpoint duration",
            "Wall time to write one checkpoint.",
            query(quantile(0.5, names.CHECKPOINT_SECONDS), "p50 {{job}}"),
            query(quantile(0.99, names.CHECKPOINT_SECONDS), "p99 {{job}}", "B"),
            query(mean_of(names.CHECKPOINT_SECONDS), "mean {{job}}", "C"),
            unit="s",
        ),
        w=8,
    )
    g.add(
        22,
        graph(
            "Checkpoint age",
            "Seconds since the last completed checkpoint.",
            query(f"time() - max by (job) ({m(names.LAST_CHECKPOINT)} > 0)", "{{job}}"),
            unit="s",
        ),
        w=8,
    )
    g.add(
        23,
        graph(
            "Restarts",
            "Resumes from a checkpoint (motif) and container restarts (kube-state-metrics).",
            query(f"max by (job) ({m(names.RESTARTS)})", "resumes {{job}}"),
            query(restarts_kube, "container restarts {{pod}}", "B"),
        ),
        w=8,
    )

    g.row(30, "GPUs (DCGM exporter)")
    for panel_id, (title, description, expr, unit) in enumerate(gpu_panels(), start=31):
        g.add(panel_id, graph(title, description, query(expr, "{{pod}} gpu{{gpu}}"), unit=unit), w=8)
    return g.b
