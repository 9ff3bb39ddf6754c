"""Fixtures of the monitoring tests: the repository root on sys.path, the generated files, promtool."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# CI runs a fresh clone with the shared folder beside it.
DASHBOARD_SCHEMA = ROOT / "tests" / "schemas" / "grafana.dashboard.jsonschema.json"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def dashboard_schema() -> dict:
    assert DASHBOARD_SCHEMA.exists(), f"{DASHBOARD_SCHEMA} missing (CI checks out shared/ beside the repository)"
    return json.loads(DASHBOARD_SCHEMA.read_text())


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict]:
    files = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
    assert files, "no generated dashboards in monitoring/dashboards/"
    return {p.name: json.loads(p.read_text()) for p in files}


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: run `make deps` (Debian package prometheus)"
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    assert path, "prometheus not found: run `make deps` (Debian package prometheus)"
    return path
