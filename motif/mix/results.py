"""What each proxy of a sweep measured: held-out bits per byte per language at each scored step.

The records come from the proxy's metrics JSONL (`<sweep>/<proxy>/metrics.jsonl`), written by the
trainer every `motif.eval.every_steps` and at the end of the run:
`{"step": 40, "motif_heldout_bits_per_byte": {"ko": 1.23, "en": 1.05}, ...}`. A resumed run
appends to the same file, so a step may appear twice: the last record of a step wins.

A proxy is usable when it finished: a held-out record at its last step. One that failed, or
stopped before its end, is named; the fit goes on without it only when asked to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from motif.metrics.jsonl import read
from motif.mix.sweep import Proxy, Sweep

HELDOUT = "motif_heldout_bits_per_byte"


@dataclass
class ProxyResult:
    proxy: Proxy
    shares: list[float]
    points: dict[int, dict[str, float]]  # step -> language -> bits per byte
    problem: str | None = None  # why the proxy cannot be used

    @property
    def final(self) -> dict[str, float]:
        return self.points[max(self.points)]


def metrics_path(sweep_dir: Path, proxy: Proxy) -> Path:
    return sweep_dir / proxy.name / "metrics.jsonl"


def heldout_points(path: Path) -> dict[int, dict[str, float]]:
    return _scan(path)[0]


def diverged_steps(path: Path) -> dict[int, list[str]]:
    """Steps whose held-out record holds a value that is not finite (NaN, inf): step -> languages."""
    return _scan(path)[1]


def _scan(path: Path) -> tuple[dict[int, dict[str, float]], dict[int, list[str]]]:
    points: dict[int, dict[str, float]] = {}
    diverged: dict[int, list[str]] = {}
    for record in read(path):
        value = record.get(HELDOUT)
        if isinstance(value, dict) and isinstance(record.get("step"), int):
            numbers = {k: float(v) for k, v in value.items() if isinstance(v, int | float)}
            clean = {k: v for k, v in numbers.items() if math.isfinite(v)}
            bad = sorted(k for k, v in numbers.items() if not math.isfinite(v))
            if bad:
                diverged[record["step"]] = bad
            else:
                diverged.pop(record["step"], None)  # a resumed run scored this step again, finite
            if clean:
                points[record["step"]] = clean
    return points, diverged


def read_results(sweep_dir: Path, sweep: Sweep) -> list[ProxyResult]:
    out = []
    for proxy in sweep.proxies:
        path = metrics_path(sweep_dir, proxy)
        points = heldout_points(path) if path.is_file() else {}
        out.append(ProxyResult(proxy, sweep.shares(proxy), points, _problem(sweep_dir, sweep, proxy, path, points)))
    return out


def _problem(sweep_dir: Path, sweep: Sweep, proxy: Proxy, path: Path, points: dict) -> str | None:
    log = sweep_dir / proxy.log
    see = f"; log {log}" if log.is_file() else ""
    if proxy.status == "failed" and proxy.exit_code != 0:  # exit 0 without a last record: said below
        return f"failed (exit status {proxy.exit_code}{see})"
    if not path.is_file():
        return f"has no metrics ({path} missing: not run yet, or failed before its first step{see})"
    diverged = diverged_steps(path)
    if diverged:
        step = min(diverged)
        return (
            f"diverged: held-out bits per byte not finite ({', '.join(diverged[step])}) at step {step} in {path}"
            f" (lower the learning rate or check the data{see})"
        )
    if not points:
        return f"has no held-out records in {path} (motif.eval.heldout not scored{see})"
    last = max(points)
    if last < sweep.steps:
        return f"did not finish: last held-out record at step {last} of {sweep.steps}{see}"
    return None
