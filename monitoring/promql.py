"""PromQL building blocks: series names come from `motif.metrics.names`, never retyped.

A declared metric is exposed under one or more series names (prometheus-client conventions):
a counter as declared (it already ends in `_total`), a histogram as `_bucket`/`_sum`/`_count`,
an info metric as `_info`.
"""

from __future__ import annotations

import re

from motif.metrics import names
from motif.metrics.names import Metric

_SUFFIXES = {"gauge": ("",), "counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def exposed(metric: Metric) -> tuple[str, ...]:
    """Every series name Prometheus stores for a declared metric."""
    return tuple(metric.name + s for s in _SUFFIXES[metric.kind])


def exposed_names() -> set[str]:
    """Every `motif_*` series name that can exist in Prometheus."""
    return {s for m in names.ALL for s in exposed(m)}


def series(metric: Metric, selector: str = "", suffix: str = "") -> str:
    """`name{selector}` for a declared metric; `suffix` picks a histogram or info series."""
    if metric.kind == "info" and not suffix:
        suffix = "_info"
    name = metric.name + suffix
    if name not in exposed(metric):
        raise ValueError(f"{name} is not a series of {metric.name} ({metric.kind})")
    return f"{name}{{{selector}}}" if selector else name


def by(labels: tuple[str, ...] | list[str]) -> str:
    return ", ".join(labels)


# ---- reading generated dashboards ------------------------------------------------------------------------


def dashboard_queries(dashboard: dict) -> list[tuple[int, str, str]]:
    """(panel id, panel title, expr) of every query of a dashboard JSON, rows' nested panels included."""
    out = []
    panels = list(dashboard.get("panels", []))
    while panels:
        p = panels.pop(0)
        panels.extend(p.get("panels", []))
        out.extend((p["id"], p.get("title", ""), t["expr"]) for t in p.get("targets", []) if t.get("expr"))
    return out


def variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(variable name, PromQL inside label_values(...)) of every query variable."""
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            inner = v["query"].removeprefix("label_values(").rsplit(",", 1)[0]
            out.append((v["name"], inner))
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}, ${name:format}) with values, longest names first."""
    for name in sorted(values, key=len, reverse=True):
        value = values[name]
        expr = re.sub(r"\$\{" + re.escape(name) + r"(:[a-z]+)?\}", lambda _m, v=value: v, expr)
        expr = re.sub(r"\$" + re.escape(name) + r"\b", lambda _m, v=value: v, expr)
    return expr
