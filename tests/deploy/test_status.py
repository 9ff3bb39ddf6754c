"""`motif status` against a small fake Kubernetes API server on 127.0.0.1.

The server answers the list calls with objects the chart rendered (real Helm), given the status
the training operator and the kubelet would add. The real kubernetes client code path runs: the
kubeconfig, the HTTP requests with their label selectors, and the deserialisation.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from motif import cli, status
from motif.deploy import render as r

# The kubernetes client calls urllib3 APIs that warn of their removal; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ts(ago: dt.timedelta) -> str:
    return (NOW - ago).isoformat().replace("+00:00", "Z")


def _pod(job: dict, rtype: str, index: int, ready: bool, restarts: int, phase: str = "Running") -> dict:
    template = copy.deepcopy(job["spec"]["pytorchReplicaSpecs"][rtype]["template"])
    name = f"{job['metadata']['name']}-{rtype.lower()}-{index}"
    labels = {
        **template["metadata"]["labels"],
        "training.kubeflow.org/job-name": job["metadata"]["name"],
        "training.kubeflow.org/replica-type": rtype.lower(),
        "training.kubeflow.org/replica-index": str(index),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "motif",
            "labels": labels,
            "creationTimestamp": _ts(dt.timedelta(hours=1)),
        },
        "spec": template["spec"],
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {
                    "name": "pytorch",
                    "ready": ready,
                    "restartCount": restarts,
                    "image": "motif",
                    "imageID": "",
                    "started": ready,
                }
            ],
        },
    }


def _cluster() -> dict[str, list[dict]]:
    """Two stages: tiny stage 1 running (one restart), 102B stage 2 succeeded; plus noise."""
    out: dict[str, list[dict]] = {"pytorchjobs": [], "pods": [], "configmaps": [], "jobs": []}
    s1 = r.objects(r.render(r.load_values(r.ROOT / "jobs/tiny/stage1-depth.yaml"), "motif-tiny-s1"))
    s2 = r.objects(r.render(r.load_values(r.ROOT / "jobs/llama3-motif-102b/stage2-width.yaml"), "motif-s2"))
    for objs, age, conditions, replicas in (
        (s1, dt.timedelta(minutes=95), [("Created", "True"), ("Running", "True")], {"Master": {"active": 1}}),
        (
            s2,
            dt.timedelta(days=2, hours=3),
            [("Created", "True"), ("Running", "False"), ("Succeeded", "True")],
            {"Master": {"succeeded": 1}, "Worker": {"succeeded": 15}},
        ),
    ):
        for o in objs:
            o["metadata"]["creationTimestamp"] = _ts(age)
            o["metadata"]["uid"] = f"uid-{o['metadata']['name']}"
        (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
        job["status"] = {
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": f"PyTorchJob{t}",
                    "message": f"PyTorchJob {t.lower()}",
                    "lastTransitionTime": _ts(age - dt.timedelta(minutes=i)),
                }
                for i, (t, s) in enumerate(conditions)
            ],
            "replicaStatuses": replicas,
        }
        out["pytorchjobs"].append(job)
        out["configmaps"] += [o for o in objs if o["kind"] == "ConfigMap"]
        for grow in [o for o in objs if o["kind"] == "Job"]:
            grow["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            out["jobs"].append(grow)
    (job1, job2) = out["pytorchjobs"]
    out["pods"] += [_pod(job1, "Master", 0, ready=True, restarts=1)]
    out["pods"] += [_pod(job2, "Master", 0, ready=False, restarts=0, phase="Succeeded")]
    out["pods"] += [
        _pod(job2, "Worker", i, ready=False, restarts=2 if i == 3 else 0, phase="Succeeded") for i in range(15)
    ]
    # Not motif's: must be filtered out by the label selector the client sends.
    out["pods"].append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "other", "namespace": "motif", "labels": {"app": "other"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
    )
    return out


ROUTES = {
    ("kubeflow.org", "pytorchjobs"): "pytorchjobs",
    ("", "pods"): "pods",
    ("", "configmaps"): "configmaps",
    ("batch", "jobs"): "jobs",
}


def _matches(labels: dict, selector: str) -> bool:
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",") if term))


class FakeAPI(BaseHTTPRequestHandler):
    objects: dict[str, list[dict]] = {}
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        url = urlparse(self.path)
        FakeAPI.requests.append(self.path)
        parts = url.path.strip("/").split("/")
        # /api/v1[/namespaces/NS]/PLURAL or /apis/GROUP/VERSION[/namespaces/NS]/PLURAL
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        namespace = rest[1] if rest[0] == "namespaces" else None
        plural = rest[-1]
        key = ROUTES.get((group, plural))
        if key is None:
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": f"the server could not find the requested resource ({url.path})",
            }
            return self._send(404, body)
        selector = parse_qs(url.query).get("labelSelector", [""])[0]
        items = [
            o
            for o in FakeAPI.objects[key]
            if (namespace is None or o["metadata"]["namespace"] == namespace)
            and _matches(o["metadata"].get("labels", {}), selector)
        ]
        kind = items[0]["kind"] if items else "List"
        self._send(
            200, {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {"resourceVersion": "1"}, "items": items}
        )

    def _send(self, code: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch) -> Path:
    global NOW
    NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # ages are asserted against it
    FakeAPI.objects = _cluster()
    FakeAPI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "motif"}}],
        "current-context": "fake",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield path
    server.shutdown()
    server.server_close()


def test_status_json_through_the_kubernetes_client(kubeconfig, capsys):
    assert cli.main(["status", "--json"]) == 0
    stages = {s["stage"]: s for s in json.loads(capsys.readouterr().out)}
    assert set(stages) == {"tiny-s1-depth", "s2-width"}
    s1, s2 = stages["tiny-s1-depth"], stages["s2-width"]
    assert (s1["phase"], s1["replicas"], s1["ready"], s1["active"], s1["restarts"]) == ("Running", 1, 1, 1, 1)
    assert s1["grow"] == "Complete" and s1["release"] == "motif-tiny-s1"
    assert s1["checkpoint_dir"] == "/workspace/checkpoints/tiny-s1-depth"
    assert s1["input"] == "/workspace/checkpoints/tiny-s0-base/final"
    assert 95 * 60 <= s1["age_seconds"] < 96 * 60
    assert (s2["phase"], s2["replicas"], s2["succeeded"], s2["failed"], s2["restarts"]) == ("Succeeded", 16, 16, 0, 2)
    assert s2["output"] == "/checkpoints/s2-width/final"
    assert s2["replica_types"] == {
        "Master": {"active": 0, "succeeded": 1, "failed": 0},
        "Worker": {"active": 0, "succeeded": 15, "failed": 0},
    }
    # The namespace came from the kubeconfig context; only motif's objects were asked for.
    listed = [q for q in FakeAPI.requests if "/namespaces/motif/" in q]
    assert len(listed) == len(FakeAPI.requests) == 5  # pytorchjobs, trainjobs, pods, configmaps, jobs
    assert all("labelSelector=app.kubernetes.io%2Fpart-of%3Dmotif" in q for q in FakeAPI.requests)


def test_status_table_and_all_namespaces(kubeconfig, capsys):
    assert cli.main(["status", "-A"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "STAGE",
        "RELEASE",
        "KIND",
        "PHASE",
        "READY",
        "ACTIVE",
        "SUCCEEDED",
        "FAILED",
        "RESTARTS",
        "AGE",
        "GROW",
        "CHECKPOINTS",
    ]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["s2-width"][3:] == [
        "PyTorchJob",
        "Succeeded",
        "0/16",
        "0",
        "16",
        "0",
        "2",
        "2d3h",
        "Complete",
        "/checkpoints/s2-width",
    ]
    assert rows["tiny-s1-depth"][4:7] == ["Running", "1/1", "1"]
    assert all("/namespaces/" not in q for q in FakeAPI.requests)


def test_status_in_an_empty_namespace(kubeconfig, capsys):
    assert cli.main(["status", "-n", "elsewhere"]) == 0
    assert capsys.readouterr().out.strip() == "No motif stages in namespace elsewhere."


def test_kubectl_plugin_entry_point(kubeconfig):
    """`kubectl motif status` runs the kubectl-motif console script from PATH."""
    plugin = Path(sys.executable).parent / "kubectl-motif"
    assert plugin.exists(), "kubectl-motif console script not installed (pip install -e .)"
    result = subprocess.run(
        [str(plugin), "status", "-n", "motif"], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "tiny-s1-depth" in result.stdout and "s2-width" in result.stdout


def test_unreachable_api_server_is_a_clear_error(tmp_path, monkeypatch, capsys):
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me"}}],
    }
    (tmp_path / "kc").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["status"]) == 2
    assert "cannot reach the API server" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("conditions", "suspend", "phase"),
    [
        ([], False, "Pending"),
        ([], True, "Suspended"),
        ([("Created", "True", "t1"), ("Running", "True", "t2")], False, "Running"),
        ([("Created", "True", "t1"), ("Running", "False", "t2"), ("Restarting", "True", "t3")], False, "Restarting"),
        ([("Running", "True", "t2"), ("Failed", "True", "t3")], False, "Failed"),
        ([("Created", "True", "t1"), ("Succeeded", "True", "t3"), ("Running", "True", "t2")], False, "Succeeded"),
        ([("Created", "True", "t1"), ("Complete", "True", "t3")], False, "Succeeded"),
    ],
)
def test_job_phase_from_conditions(conditions, suspend, phase):
    job = {
        "spec": {"runPolicy": {"suspend": suspend}},
        "status": {"conditions": [{"type": t, "status": s, "lastTransitionTime": ts} for t, s, ts in conditions]},
    }
    assert status.job_phase(job)[0] == phase


def test_trainjob_counts_come_from_its_jobs_status():
    objs = r.objects(r.render(r.load_values(r.CHART / "ci" / "05-trainjob-values.yaml"), "motif-tj"))
    (job,) = [o for o in objs if o["kind"] == "TrainJob"]
    job["status"] = {
        "conditions": [{"type": "Created", "status": "True", "lastTransitionTime": _ts(dt.timedelta(hours=1))}],
        "jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0, "suspended": 0}],
    }
    (stage,) = status.collect([job], [], [o for o in objs if o["kind"] == "ConfigMap"], [])
    assert (stage.kind, stage.phase, stage.replicas, stage.active) == (
        "TrainJob",
        "Suspended",
        2,
        2,
    )  # Kueue has not admitted it
    assert stage.checkpoint_dir == "/checkpoints/ci-trainjob"
