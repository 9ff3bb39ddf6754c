"""`make monitor` (python -m monitoring.local) and the Grafana compose file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from monitoring.local import DEFAULT_TARGET, free_port, prometheus_config
from monitoring.rules import alerts
from motif.config import MetricsConfig

ROOT = Path(__file__).resolve().parents[2]


def test_default_target_is_the_default_metrics_port():
    assert f"127.0.0.1:{MetricsConfig().port}" == DEFAULT_TARGET


def test_local_targets_get_the_podmonitor_labels():
    cfg = prometheus_config(["127.0.0.1:9401"], "demo", "5s", [ROOT / "monitoring/rules/motif-alerts.yaml"])
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "demo"
    assert job["static_configs"][0]["labels"] == {"namespace": "local", "pod": "demo-master-0", "container": "pytorch"}
    assert Path(cfg["rule_files"][0]).is_absolute()


@pytest.mark.slow
def test_make_monitor_runs_prometheus_on_localhost_and_stops_clean(prometheus_bin):
    exporter_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitoring.local", "--target", f"127.0.0.1:{exporter_port}", "--interval", "1s"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.match(r"Prometheus: (http://127\.0\.0\.1:(\d+))", line)
        assert match, line
        url = match.group(1)
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=10) as r:
            body = r.read().decode()
        for alert in alerts.ALERTS:
            assert alert.name in body
        with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as r:
            assert f"127.0.0.1:{exporter_port}" in r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # it and its Prometheus, so neither outlives the test
            raise
    assert proc.returncode == 0, out
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/-/ready", timeout=2)


def test_compose_provisions_the_generated_dashboards():
    compose = yaml.safe_load((ROOT / "monitoring/compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["network_mode"] == "host"
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./dashboards"] == "/var/lib/grafana/dashboards/motif"
    assert (ROOT / "monitoring" / "grafana" / "provisioning").is_dir()
    provider = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/motif.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/motif"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "monitoring/dashboards" / Path(home).name).exists()
    ds = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"


def test_monitoring_doc_lists_every_alert_with_its_severity_and_for():
    doc = (ROOT / "docs/monitoring.md").read_text()
    for alert in alerts.ALERTS:
        rows = [line for line in doc.splitlines() if line.startswith(f"| [{alert.name}](runbooks.md#{alert.anchor})")]
        assert rows, f"docs/monitoring.md: no row for {alert.name}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[1] == alert.severity and cells[3] == alert.for_, rows[0]
