"""One interface for every sink: `log(metrics, step)`.

`metrics` maps a metric name from `motif.metrics.names` to a number, or, for a metric with one
label, to `{label_value: number}`. Counters are logged as running totals (what a resumed run
restores); histograms as the observation of this step. Each backend turns that into its sink's
form; `MetricLogger` fans one call out to all of them.
"""

from __future__ import annotations

import logging
from typing import Protocol

from motif.metrics import names

log = logging.getLogger(__name__)

Value = float | int | dict[str, float | int]
BY_NAME = {m.name: m for m in names.ALL}


class Backend(Protocol):
    def log(self, metrics: dict[str, Value], step: int) -> None: ...

    def close(self) -> None: ...


def check_names(metrics: dict[str, Value]) -> None:
    unknown = sorted(set(metrics) - set(BY_NAME))
    if unknown:
        raise KeyError(f"metric {unknown[0]!r} is not declared in motif.metrics.names")


class MetricLogger:
    """Fan-out to every backend. A failing backend is logged once and dropped, never stops training."""

    def __init__(self, backends: list[Backend]):
        self.backends = list(backends)

    def log(self, metrics: dict[str, Value], step: int) -> None:
        check_names(metrics)
        for backend in list(self.backends):
            try:
                backend.log(metrics, step)
            except Exception as e:  # a full disk or a closed socket must not end a training run
                log.warning("metrics backend %s failed and is dropped: %s", type(backend).__name__, e)
                self.backends.remove(backend)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
