"""The chart reads a few of the trainer's settings itself (pods, processes per pod, the device, the
metrics port, the checkpoint training starts from) because Kubernetes objects need them before any
motif code runs. This test holds those copies to `motif.config`: each stage file is rendered by real
Helm with the setting given, changed and left out, and the rendered objects must say what
`load_stage`'s dataclasses say. A default changed on one side only fails here."""

from __future__ import annotations

import copy
import posixpath
from pathlib import Path

import pytest
import yaml

from motif.config import parse_stage
from motif_dev.deploy import render as chart

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "jobs/tiny/stage1-depth.yaml"  # an input, a growth step and a grow Job
CHART_DEFAULTS = yaml.safe_load((ROOT / "charts/motif-stage/values.yaml").read_text())


def _chart_value(values: dict, key: str):
    """A chart value as Helm sees it: the stage file's, else the chart's default."""
    return values.get(key, CHART_DEFAULTS[key])


def _values(**changes) -> dict:
    """The tiny depth stage's values with `changes` applied to `motif.parallel`, `motif.metrics` or
    `motif` itself; a value of None removes the key, so the default of each side applies."""
    values = copy.deepcopy(chart.load_values(TINY))
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = values["motif"]
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return values


def _rendered(values: dict) -> tuple[dict, dict]:
    """The PyTorchJob and the PodMonitor (if any) that Helm renders for `values`."""
    objs = chart.objects(chart.render(values, chart.release_name(values)))
    job = next(o for o in objs if o["kind"] == "PyTorchJob")
    monitor = next((o for o in objs if o["kind"] == "PodMonitor"), {})
    return job, monitor


def _abs(values: dict, path: str | None) -> str:
    if not path:
        return ""
    return posixpath.normpath(
        path if path.startswith("/") else posixpath.join(_chart_value(values, "workingDir"), path)
    )


CASES = {
    "as written": {},
    "nodes and procs left out": {"parallel__nodes": None, "parallel__procs_per_node": None},
    "two nodes of three": {"parallel__nodes": 2, "parallel__procs_per_node": 3},
    "device left out": {"parallel__device": None},
    "device cuda": {"parallel__device": "cuda"},
    "metrics port left out": {"metrics__port": None},
    "metrics port 9555": {"metrics__port": 9555},
    "no growth (the input starts)": {"growth": None, "train__freeze": None},
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_the_rendered_job_lays_the_stage_out_as_the_trainer_reads_it(changes):
    values = _values(**changes)
    stage = parse_stage(copy.deepcopy(values["motif"]))
    job, monitor = _rendered(values)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pods = sum(int(r["replicas"]) for r in replicas.values())
    assert pods == stage.parallel.nodes
    assert int(job["spec"]["nprocPerNode"]) == stage.parallel.procs_per_node

    pod = replicas["Master"]["template"]["spec"]
    trainer = next(c for c in pod["containers"] if any(p.get("name") == "metrics" for p in c.get("ports", [])))
    metrics_port = next(p["containerPort"] for p in trainer["ports"] if p["name"] == "metrics")
    assert metrics_port == stage.metrics.port
    if monitor:  # a PyTorchJob's PodMonitor scrapes the container port by its name
        assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]

    gpu = _chart_value(values, "gpu")["resourceName"]
    limits = trainer["resources"]["limits"]
    if stage.parallel.device == "cuda":
        assert int(limits[gpu]) == stage.parallel.procs_per_node
    else:
        assert gpu not in limits

    # The init container waits for the checkpoint training starts from: the trainer's rule.
    waits = [c for c in pod.get("initContainers", []) if c["name"] == "wait-for-checkpoint"]
    waited = waits[0]["command"][-1] if waits else ""
    assert waited == _abs(values, stage.start_checkpoint)


def test_the_check_sees_a_drift():  # a negative control: a chart default that differs is caught
    values = _values(metrics__port=None)
    job, _ = _rendered(values)
    stage = parse_stage(copy.deepcopy(values["motif"]))
    assert stage.metrics.port == 9401
    values["motif"]["metrics"] = {**values["motif"].get("metrics", {}), "port": 9402}
    drifted, _ = _rendered(values)
    container = lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]  # noqa: E731
    ports = lambda j: {p["name"]: p["containerPort"] for p in container(j)["ports"]}  # noqa: E731
    assert ports(job)["metrics"] == 9401 and ports(drifted)["metrics"] == 9402


def test_the_stage_files_parse_as_the_chart_reads_them():
    for path in sorted((ROOT / "jobs").rglob("*.yaml")):
        parse_stage(yaml.safe_load(path.read_text())["motif"], source=str(path))
