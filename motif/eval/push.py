"""Benchmark scores to Prometheus through a Pushgateway, as `motif_eval_score{stage, task, metric}`.

An eval Job lives minutes; a scrape every 30 s may miss it entirely. A push is stored by the
Pushgateway until replaced, and Prometheus scrapes it from there (with `honor_labels: true`, so the
pushed `stage` label is kept). One push per stage, grouped by `stage`: evaluating a stage again
replaces that stage's scores and leaves the other stages' scores alone.
"""

from __future__ import annotations

import math

from motif.errors import MotifError
from motif.metrics import names

JOB = "motif-eval"


class PushError(MotifError):
    """The Pushgateway did not take the scores (the results on disk are complete regardless)."""


def check_gateway(gateway: str, where: str = "--pushgateway") -> None:
    """host:port or an http(s) URL with a host and, if any, a valid port; refused before anything runs."""
    import urllib.parse

    problem = None
    try:
        url = urllib.parse.urlsplit(gateway if "://" in gateway else f"http://{gateway}")
        url.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
        if url.scheme not in ("http", "https") or not url.hostname or any(c.isspace() for c in gateway):
            problem = "no http(s) scheme or host"
    except ValueError as e:
        problem = str(e)
    if problem:
        raise MotifError(f"{where}: expected host:port or an http(s) URL, got {gateway!r} ({problem})")


def score_registry(stage: str, tasks: dict[str, dict[str, float]]):
    """A registry holding one gauge sample per (task, metric); standard errors are left out."""
    from prometheus_client import CollectorRegistry, Gauge

    metric = names.EVAL_SCORE
    registry = CollectorRegistry()
    gauge = Gauge(metric.name, metric.help, metric.labels, registry=registry)
    for task, metrics in sorted(tasks.items()):
        for name, value in sorted(metrics.items()):
            if not name.endswith("_stderr") and math.isfinite(value):
                gauge.labels(stage=stage, task=task, metric=name).set(value)
    return registry


def push_scores(gateway: str, stage: str, tasks: dict[str, dict[str, float]], timeout: float = 10.0) -> int:
    """Push a stage's scores (replacing that stage's earlier push); returns the number of samples."""
    from prometheus_client import push_to_gateway

    registry = score_registry(stage, tasks)
    count = sum(len(m.samples) for m in registry.collect())
    try:
        push_to_gateway(gateway, job=JOB, registry=registry, grouping_key={"stage": stage}, timeout=timeout)
    except OSError as e:  # URLError, HTTPError (a 4xx/5xx answer), refused connections, timeouts
        reason = getattr(e, "reason", None) or e
        raise PushError(f"cannot push scores to the Pushgateway at {gateway}: {reason}") from None
    return count
