"""`helm install / upgrade / test / uninstall` of a tiny and a 102B stage on the real API server,
through helm-python-sdk (Helm's Go SDK).

The plane has no kubelet, so the helm test pod is run the way a kubelet would run it: its command
(`motif preflight` on the release's values) with its own ServiceAccount's token, and its exit code
written to the pod's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from motif_dev.deploy import render as r

from .test_preflight import _service, _webhook

STAGES = [r.ROOT / "jobs" / "tiny" / "stage1-depth.yaml", r.ROOT / "jobs" / "llama3-motif-102b" / "stage1-depth.yaml"]
# What a release may leave behind, by (apiVersion, kind).
KINDS = [
    ("v1", "Pod"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"),
    ("batch/v1", "Job"),
    ("kubeflow.org/v1", "PyTorchJob"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
]


@pytest.fixture
def helm(control_plane, namespace):
    import helm_python

    cfg = helm_python.Config(kubeconfig_path=str(control_plane.kubeconfig), namespace=namespace)
    yield cfg
    cfg.close()


def _left(admin, namespace: str, release: str) -> list[str]:
    """Objects labelled with the release, and the release's own records (Helm's Secrets)."""
    found = []
    for api_version, kind in KINDS:
        probe = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
        path = admin.path(probe, namespace) + f"?labelSelector=app.kubernetes.io/instance%3D{release}"
        found += [f"{kind} {o['metadata']['name']}" for o in admin.call("GET", path).body.get("items", [])]
    secrets = admin.call("GET", f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm,name%3D{release}")
    return found + [f"Secret {o['metadata']['name']}" for o in secrets.body.get("items", [])]


def _jobs(admin, namespace: str) -> dict[str, str]:
    """{component: Job name} of the growth and eval Jobs in the namespace."""
    items = admin.call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs").body["items"]
    return {o["metadata"]["labels"]["app.kubernetes.io/component"]: o["metadata"]["name"] for o in items}


class Kubelet:
    """Runs the helm test pod's command as a kubelet would: `motif preflight` with the pod's
    ServiceAccount token and the release's values, then writes its exit code to the pod's status."""

    def __init__(self, plane, admin, namespace: str, workdir: Path):
        self.plane, self.admin, self.namespace, self.workdir = plane, admin, namespace, workdir
        self.outputs: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        done = set()
        while not self._stop.wait(0.2):
            pods = self.admin.call("GET", f"/api/v1/namespaces/{self.namespace}/pods").body.get("items", [])
            for pod in pods:
                annotations = pod["metadata"].get("annotations") or {}
                if annotations.get("helm.sh/hook") == "test" and pod["metadata"]["uid"] not in done:
                    done.add(pod["metadata"]["uid"])
                    self._run(pod)

    def _run(self, pod: dict) -> None:
        spec = pod["spec"]
        (container,) = spec["containers"]
        (values_volume,) = [v for v in spec["volumes"] if v.get("configMap")]
        cm = self.admin.call(
            "GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{values_volume['configMap']['name']}"
        ).body
        values = self.workdir / "values.json"
        values.write_text(cm["data"]["values.json"])
        token = self.admin.token(self.namespace, spec["serviceAccountName"])
        kubeconfig = self.plane.token_kubeconfig(f"pod-{pod['metadata']['name']}", token, self.namespace)
        command = [arg if arg != "/etc/motif-preflight/values.json" else str(values) for arg in container["command"]]
        assert command[:2] == ["motif", "preflight"], command
        done = subprocess.run(
            [sys.executable, "-m", "motif", *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            check=False,
        )
        self.outputs.append(done.stdout + done.stderr)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": done.returncode, "reason": "Completed" if done.returncode == 0 else "Error"}
        status = {
            "phase": "Succeeded" if done.returncode == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {**terminated, "startedAt": now, "finishedAt": now}},
                }
            ],
        }
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/status"
        self.admin.call("PATCH", path, {"status": status}, "application/merge-patch+json")


def _prerequisites(admin, namespace: str) -> dict:
    """What the tiny stage needs: the training operator (its webhook served) and a bound claim."""
    hook = _webhook(f"validator-{namespace}.kubeflow.org", "kubeflow.org", "pytorchjobs")
    operators = f"{namespace}-op"
    hook["webhooks"][0]["clientConfig"]["service"]["namespace"] = operators
    admin.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": operators}})
    admin.put(hook, namespace)
    for obj, _ in _service(hook):
        obj["metadata"]["namespace"] = operators
        admin.put(obj, operators)
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "motif-tiny-workspace"}}
    pvc["spec"] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    pvc["spec"]["storageClassName"] = ""
    admin.put(pvc, namespace, {"phase": "Bound"})
    return hook


@pytest.mark.slow  # 20-45 s each on 2 cores: several Helm revisions and two helm test runs
@pytest.mark.parametrize("path", STAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_install_upgrade_test_uninstall(helm, admin, control_plane, namespace, tmp_path, path):
    import helm_python

    chart = str(r.CHART)
    values = {**r.load_values(path), "preflight": {"helmTest": True}}
    release = r.release_name(values)

    installed = helm.install(chart, release, values, namespace=namespace, timeout=60)
    assert (installed["status"], installed["revision"]) == ("deployed", 1)
    first = _jobs(admin, namespace)
    assert "grow" in first

    # A second install of the same stage is refused: by release name, and under another name by
    # the growth Job of the same destination.
    with pytest.raises(helm_python.HelmError, match="cannot reuse a name that is still in use"):
        helm.install(chart, release, values, namespace=namespace, timeout=60)
    with pytest.raises(helm_python.HelmError, match=f'Job "{first["grow"]}" in namespace "{namespace}" exists'):
        helm.install(chart, f"{release}-again", values, namespace=namespace, timeout=60)

    uids = {
        kind: admin.call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}").body["metadata"]["uid"]
        for kind, name in first.items()
    }
    same = helm.upgrade(chart, release, values, namespace=namespace, timeout=60)
    assert (same["status"], same["revision"]) == ("deployed", 2)
    assert _jobs(admin, namespace) == first  # the same Jobs, left alone
    assert {
        kind: admin.call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}").body["metadata"]["uid"]
        for kind, name in first.items()
    } == uids

    steps = {**values, "motif": {**values["motif"], "train": {**values["motif"]["train"], "max_steps": 11}}}
    changed = helm.upgrade(chart, release, steps, namespace=namespace, timeout=60)
    assert (changed["status"], changed["revision"]) == ("deployed", 3)

    image = {**steps, "image": {**(values.get("image") or {}), "tag": "v9.9.9"}}
    retagged = helm.upgrade(chart, release, image, namespace=namespace, timeout=60)
    assert (retagged["status"], retagged["revision"]) == ("deployed", 4)
    after = _jobs(admin, namespace)
    assert set(after) == set(first) and not set(after.values()) & set(first.values())  # new Jobs, old ones gone
    for name in after.values():
        job = admin.call("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}").body
        assert all(c["image"].endswith(":v9.9.9") for c in job["spec"]["template"]["spec"]["containers"])

    with Kubelet(control_plane, admin, namespace, tmp_path) as kubelet:
        # Without the training operator (nor, for 102B, GPU nodes, queues, claims) the test fails.
        with pytest.raises(helm_python.HelmError):
            helm.test(release, timeout=60)
        assert (
            f"prerequisites of stage {values['motif']['name']} missing in namespace {namespace}"
            in (kubelet.outputs[-1])
        ), kubelet.outputs
        if "tiny" in str(path):
            hook = _prerequisites(admin, namespace)
            try:
                tested = helm.test(release, timeout=60)
            finally:
                admin.delete(hook)
            assert tested["release"]["status"] == "deployed", tested
            assert "all 5 prerequisites of stage tiny-s1-depth present" in kubelet.outputs[-1], kubelet.outputs

    removed = helm.uninstall(release, timeout=60)
    assert removed["release"]["status"] == "uninstalled"
    deadline = time.monotonic() + 30
    while _left(admin, namespace, release) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _left(admin, namespace, release) == []
    assert f'"{release}"' not in json.dumps(helm.list(all_states=True))


@pytest.fixture
def controllers(control_plane):
    """kube-controller-manager for one test: Jobs make Pods, garbage collection follows owner references."""
    control_plane.start_controller_manager()
    yield
    control_plane.stop_controller_manager()


@pytest.mark.slow  # ~20 s: the controller manager starts, the Job makes its pod, the collector removes it
def test_uninstall_leaves_no_pod_behind(controllers, helm, admin, namespace):
    """With the controllers running, the growth Job makes its pod (Pending: no scheduler here),
    owned by the Job; after `helm uninstall` the garbage collector removes it."""
    values = r.load_values(STAGES[0])
    release = r.release_name(values)
    helm.install(str(r.CHART), release, values, namespace=namespace, timeout=60)
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=app.kubernetes.io/instance%3D{release}"
    deadline = time.monotonic() + 60
    while not (pods := admin.call("GET", path).body.get("items", [])):
        assert time.monotonic() < deadline, "the Job controller made no pod"
        time.sleep(0.5)
    assert all(ref["kind"] == "Job" for pod in pods for ref in pod["metadata"]["ownerReferences"])
    helm.uninstall(release, timeout=60)
    deadline = time.monotonic() + 60
    while _left(admin, namespace, release) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _left(admin, namespace, release) == []
