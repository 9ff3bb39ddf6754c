"""Prometheus backend and HTTP exporter.

The exporter serves a private registry from prometheus-client's daemon thread: a scrape reads the
values the last `log` call left, so training never waits for a scrape, and `log` costs a few
dictionary updates. Port 0 asks the OS for a free port; `url` says which one was taken.
"""

from __future__ import annotations

import logging
import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from motif.metrics import names
from motif.metrics.logger import Value

log = logging.getLogger(__name__)


def _make(metric: names.Metric, registry: CollectorRegistry):
    # prometheus-client appends `_total` to counters and `_info` to infos itself.
    if metric.kind == "counter":
        return Counter(metric.name.removesuffix("_total"), metric.help, metric.labels, registry=registry)
    if metric.kind == "gauge":
        return Gauge(metric.name, metric.help, metric.labels, registry=registry)
    if metric.kind == "histogram":
        return Histogram(metric.name, metric.help, metric.labels, buckets=metric.buckets, registry=registry)
    return Info(metric.name, metric.help, registry=registry)


class PrometheusBackend:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._metrics = {m.name: _make(m, self.registry) for m in names.ALL}
        self._kinds = {m.name: m for m in names.ALL}
        self._totals: dict[tuple[str, str], float] = {}
        self._server = None
        self.port: int | None = None

    # ---- serving -----------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> str:
        """Start the HTTP exporter; returns its URL."""
        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_address[1]
        return self.url

    @property
    def url(self) -> str:
        return f"http://{socket.gethostname()}:{self.port}/metrics"

    def close(self) -> None:
        """End of logging. The server keeps serving the last values until `stop` (see --linger-seconds)."""

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- values --------------------------------------------------------------------------------

    def info(self, values: dict[str, str]) -> None:
        self._metrics[names.STAGE_INFO.name].info(values)

    def log(self, metrics: dict[str, Value], step: int) -> None:
        for name, value in metrics.items():
            metric = self._kinds[name]
            if metric.kind == "info":
                self.info({k: str(v) for k, v in value.items()})
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for label, v in items:
                self._set(metric, label, float(v))

    def _set(self, metric: names.Metric, label: str | None, v: float) -> None:
        target = self._metrics[metric.name]
        if label is not None:
            target = target.labels(label)
        if metric.kind == "gauge":
            target.set(v)
        elif metric.kind == "histogram":
            target.observe(v)
        else:
            # Counters are logged as totals; Prometheus counters only go up, by the difference.
            key = (metric.name, label or "")
            delta = v - self._totals.get(key, 0.0)
            if delta > 0:
                target.inc(delta)
            self._totals[key] = max(v, self._totals.get(key, 0.0))
