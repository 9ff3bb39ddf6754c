"""Dashboards, rules and docs use only the metric names declared in motif.metrics.names, and document all."""

from __future__ import annotations

import re

import pytest

from monitoring import generate
from monitoring.promql import exposed, exposed_names
from monitoring.rules import alerts
from motif.metrics import names

NAME = re.compile(r"\bmotif_[a-z0-9_]+")


def _generated_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in generate.outputs()}


def test_generated_files_use_only_declared_series():
    declared = exposed_names()
    for file, text in _generated_texts().items():
        undeclared = sorted(set(NAME.findall(text)) - declared)
        assert not undeclared, f"{file} uses undeclared metrics {undeclared}; declare them in motif/metrics/names.py"


def test_the_check_catches_a_retyped_name():
    assert "motif_tokens_totl" not in exposed_names()
    assert set(NAME.findall("rate(motif_tokens_totl[5m])")) - exposed_names() == {"motif_tokens_totl"}


def test_exposed_series_follow_prometheus_client():
    assert exposed(names.TOKENS) == ("motif_tokens_total",)
    assert exposed(names.STEP_SECONDS) == (
        "motif_step_seconds_bucket",
        "motif_step_seconds_sum",
        "motif_step_seconds_count",
    )
    assert exposed(names.STAGE_INFO) == ("motif_stage_info",)


@pytest.fixture(scope="module")
def metrics_doc(root) -> str:
    return (root / "docs" / "metrics.md").read_text()


@pytest.mark.parametrize("metric", names.ALL, ids=lambda m: m.name)
def test_every_declared_metric_is_documented(metrics_doc, metric):
    rows = [line for line in metrics_doc.splitlines() if line.startswith(f"| `{metric.name}` ")]
    assert rows, f"docs/metrics.md has no table row for {metric.name}"
    row = rows[0]
    assert f"| {metric.kind} |" in row, f"{metric.name}: type {metric.kind} missing from its row: {row}"
    for label in metric.labels:
        assert f"`{label}`" in row, f"{metric.name}: label {label} missing from its row: {row}"


def test_metrics_doc_names_only_declared_metrics(metrics_doc):
    undeclared = sorted(set(NAME.findall(metrics_doc)) - exposed_names() - {m.name for m in names.ALL})
    assert not undeclared, f"docs/metrics.md names undeclared metrics {undeclared}"


def test_every_alert_has_a_runbook_section(root):
    runbooks = (root / "docs" / "runbooks.md").read_text()
    headings = {line.lstrip("#").strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    for alert in alerts.ALERTS:
        assert alert.anchor in headings, f"docs/runbooks.md needs a '## {alert.name}' section"
        section = runbooks.split(f"## {alert.name}", 1)[1].split("\n## ", 1)[0]
        for part in ("kubectl", "Fix"):
            assert part in section, f"runbook {alert.name} lacks {part!r}"
