"""hadolint on every Dockerfile; checkov on every rendered manifest and every Dockerfile.

checkov does not know PyTorchJob, so the training pod templates are also written out as Pods:
the scan then covers the pods that actually train, not only the growth Job. The only checks
allowed to fail are those in charts/checkov-skips.yaml, each with its reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from motif_dev.deploy import render as r

DOCKERFILES = [r.ROOT / "Dockerfile", *sorted((r.ROOT / "images").glob("*/Dockerfile"))]
SKIPS_FILE = r.ROOT / "charts" / "checkov-skips.yaml"
CHECKOV = r.ROOT / ".venv-tools" / "bin" / "checkov"


def test_there_are_two_dockerfiles():
    assert [p.relative_to(r.ROOT).as_posix() for p in DOCKERFILES] == ["Dockerfile", "images/cpu/Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(r.ROOT).as_posix())
def test_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(r.ROOT).as_posix())
def test_dockerfile_conventions(dockerfile):
    text = dockerfile.read_text()
    assert text.count("\nFROM ") >= 2, "multi-stage build"
    assert "\nUSER 10001:10001" in text, "non-root user matching the chart's runAsUser"
    for label in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    assert "HOME=/tmp/home" in text, "HOME on the writable /tmp of a read-only root filesystem"


def _skips() -> dict[str, str]:
    skips = yaml.safe_load(SKIPS_FILE.read_text())
    for check, reason in skips.items():
        assert isinstance(reason, str) and len(reason.split()) >= 8, f"{check}: skipped without a real reason"
    return skips


def _scan_tree(tmp: Path) -> Path:
    """Every values file rendered to tmp/manifests, training pod templates as Pods; Dockerfiles."""
    out = tmp / "scan"
    (out / "manifests").mkdir(parents=True)
    for path in r.stage_files() + r.ci_files():
        values = r.load_values(path)
        objs = r.objects(r.render(values, r.release_name(values)))
        for job in [o for o in objs if o["kind"] == "PyTorchJob"]:
            for rtype, spec in job["spec"]["pytorchReplicaSpecs"].items():
                template = spec["template"]
                meta = {**template["metadata"], "name": f"{job['metadata']['name']}-{rtype.lower()}-0"}
                meta["namespace"] = job["metadata"]["namespace"]
                objs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
        name = f"{path.parent.name}-{path.stem}.yaml"
        (out / "manifests" / name).write_text(yaml.safe_dump_all(objs, sort_keys=False))
    for dockerfile in DOCKERFILES:
        target = out / "docker" / dockerfile.relative_to(r.ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dockerfile, target)
    return out


def test_checkov_finds_nothing_beyond_the_documented_skips(tmp_path):
    assert CHECKOV.exists(), f"{CHECKOV}: missing; `make tools` installs checkov"
    skips = _skips()
    tree = _scan_tree(tmp_path)
    cmd = [
        str(CHECKOV),
        "-d",
        str(tree),
        "--framework",
        "kubernetes",
        "dockerfile",
        "--skip-download",
        "--compact",
        "-o",
        "json",
        "--skip-check",
        ",".join(skips),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    checked = {rep["check_type"]: rep["summary"] for rep in reports}
    assert set(checked) == {"kubernetes", "dockerfile"}, checked
    assert checked["kubernetes"]["passed"] > 500 and checked["dockerfile"]["passed"] > 20, checked
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for rep in reports
        for c in rep["results"].get("failed_checks", [])
    ]
    assert failed == [], "\n".join(failed)
    # The training pods were scanned, not only the growth Job.
    scanned = {c["resource"].split(".")[0] for rep in reports for c in rep["results"].get("passed_checks", [])}
    assert {"Pod", "Job", "ServiceAccount"} <= scanned, scanned
