"""The security posture of every rendered manifest (each stage file in jobs/ and each chart ci/
scenario), checked object by object on the chart's real render:

- every pod: non-root user, seccomp RuntimeDefault, no service-account token unless asked for,
  no host PID/IPC, host network only where the values ask for it;
- every container: read-only root filesystem, all capabilities dropped (IPC_LOCK added back only
  for RDMA), no privilege escalation, not privileged, no hostPort; writable mounts only on
  emptyDir scratch space or the stage's own checkpoint volume;
- credentials only as Secret references, never as values; no Secret is rendered;
- no RBAC objects (the pods call no Kubernetes API), no Service that leaves the cluster, and the
  optional NetworkPolicy admits the metrics port only, from in-cluster peers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from motif_dev.deploy import render as r

FILES = r.stage_files() + r.ci_files()
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL")
SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9]{8,}|AKIA[A-Z0-9]{12,}|ghp_[A-Za-z0-9]{8,})")


def _rendered(path: Path) -> tuple[dict, list[dict]]:
    values = r.load_values(path)
    return values, r.objects(r.render(values, r.release_name(values)))


def _pod_specs(node: Any, where: str = "") -> Iterator[tuple[str, dict]]:
    """Every pod spec inside an object (Job, PyTorchJob replicas, TrainJob runtime patches)."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for k, v in node.items():
            yield from _pod_specs(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _pod_specs(v, f"{where}[{i}]")


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(r.ROOT).as_posix() for p in paths]


def pod_problems(values: dict, objs: list[dict]) -> list[str]:
    """Every way the pods of a render fall short of the posture above."""
    found: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            found.append(what)

    rdma = bool(values.get("rdma", {}).get("enabled"))
    host_network = bool(values.get("hostNetwork"))
    automount = bool(values.get("serviceAccount", {}).get("automountToken"))
    accounts = {
        o["metadata"]["name"]: o.get("automountServiceAccountToken") for o in objs if o["kind"] == "ServiceAccount"
    }
    pods = [(f"{o['kind']}/{o['metadata']['name']}{w}", spec) for o in objs for w, spec in _pod_specs(o)]
    check(bool(pods), "no pod spec rendered")
    for where, pod in pods:
        psc = pod.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0, f"{where}: runs as root")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp not RuntimeDefault")
        # The pod's own setting, else its ServiceAccount's (Kubernetes mounts the token if neither says no).
        account = accounts.get(pod.get("serviceAccountName", "default"))
        check(pod.get("automountServiceAccountToken", account) is automount, f"{where}: service-account token")
        check(not pod.get("hostPID") and not pod.get("hostIPC"), f"{where}: host PID or IPC")
        check(not pod.get("hostNetwork") or host_network, f"{where}: host network not asked for")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            cwhere = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            check(sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: privilege escalation")
            check(sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: writable root filesystem")
            check(not sc.get("privileged"), f"{cwhere}: privileged")
            caps = sc.get("capabilities", {})
            check("ALL" in caps.get("drop", []), f"{cwhere}: capabilities not dropped")
            check(set(caps.get("add", [])) <= ({"IPC_LOCK"} if rdma else set()), f"{cwhere}: capability added")
            check(all("hostPort" not in p for p in c.get("ports", [])), f"{cwhere}: hostPort")
            for mount in c.get("volumeMounts", []):
                if mount.get("readOnly"):
                    continue
                volume = volumes.get(mount["name"])
                if volume is None:  # a runtime patch: the volume is declared by the runtime
                    continue
                check(
                    "emptyDir" in volume or "persistentVolumeClaim" in volume,
                    f"{cwhere}: writable mount {mount['mountPath']} of a {sorted(set(volume) - {'name'})} volume",
                )
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    check("secretKeyRef" in env.get("valueFrom", {}), f"{cwhere}: {env['name']} not from a Secret")
                check(not SECRET_VALUE.match(str(env.get("value", ""))), f"{cwhere}: {env['name']} holds a credential")
    return found


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_pods_and_containers_are_locked_down(path):
    values, objs = _rendered(path)
    assert any(o["kind"] in ("PyTorchJob", "TrainJob") for o in objs)
    assert pod_problems(values, objs) == []


def _trainer(objs: list[dict]) -> tuple[dict, dict]:
    job = next(o for o in objs if o["kind"] == "PyTorchJob")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    return pod, pod["containers"][0]


CONTROLS = {
    "writable-root": lambda pod, c: c["securityContext"].update(readOnlyRootFilesystem=False),
    "capability-added": lambda pod, c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "escalation": lambda pod, c: c["securityContext"].update(allowPrivilegeEscalation=True),
    "root": lambda pod, c: pod["securityContext"].update(runAsUser=0),
    "unconfined": lambda pod, c: pod["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "token-mounted": lambda pod, c: pod.update(automountServiceAccountToken=True),
    "host-pid": lambda pod, c: pod.update(hostPID=True),
    "host-port": lambda pod, c: c["ports"][0].update(hostPort=9401),
    "plain-token": lambda pod, c: c.setdefault("env", []).append({"name": "HF_TOKEN", "value": "hf_abcdefghijkl"}),
    "writable-host-path": lambda pod, c: (
        pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        c["volumeMounts"].append({"name": "host", "mountPath": "/host"}),
    ),
}


@pytest.mark.parametrize("control", CONTROLS)
def test_the_posture_check_catches_each_weakening(control):
    """Negative controls: the same render, weakened in one place, is caught."""
    values, objs = _rendered(r.ROOT / "jobs" / "tiny" / "stage1-depth.yaml")
    CONTROLS[control](*_trainer(objs))
    assert pod_problems(values, objs) != []


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_no_rbac_no_secrets_no_external_exposure(path):
    values, objs = _rendered(path)
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Secret"}, kinds
    # The one grant: a TrainJob stage's progress report may patch its own TrainJob's status, nothing else.
    roles = [o for o in objs if o["kind"] == "Role"]
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    progress_on = values.get("trainJob", {}).get("progress", {}).get("enabled", True)  # the chart's default
    progress = values.get("workload") == "TrainJob" and progress_on
    assert len(roles) == len(bindings) == (1 if progress else 0), kinds
    for role in roles:
        (job,) = [o for o in objs if o["kind"] == "TrainJob"]
        assert role["rules"] == [
            {
                "apiGroups": ["trainer.kubeflow.org"],
                "resources": ["trainjobs/status"],
                "resourceNames": [job["metadata"]["name"]],
                "verbs": ["patch"],
            }
        ]
    for o in objs:
        if o["kind"] == "ServiceAccount":
            assert o.get("automountServiceAccountToken") is False
        if o["kind"] == "Service":
            assert o["spec"].get("type", "ClusterIP") == "ClusterIP", o["metadata"]["name"]
        if o["kind"] == "NetworkPolicy":
            assert o["spec"]["policyTypes"] == ["Ingress"]
            for rule in o["spec"]["ingress"]:
                for peer in rule.get("from", []):
                    assert "ipBlock" not in peer, "metrics and rendezvous are for in-cluster peers only"
                if any("namespaceSelector" in p for p in rule.get("from", [])):
                    assert rule.get("ports") == [{"port": "metrics", "protocol": "TCP"}]
    if values.get("networkPolicy", {}).get("enabled") and not values.get("hostNetwork"):
        assert "NetworkPolicy" in kinds


def test_the_scenarios_cover_rdma_secrets_network_policy_and_trainjob():
    """The checks above run on the scenarios that exercise each relaxation."""
    scenarios = [r.load_values(p) for p in FILES]
    assert any(v.get("rdma", {}).get("enabled") for v in scenarios)
    assert any(v.get("secretEnv") for v in scenarios)
    assert any(v.get("networkPolicy", {}).get("enabled") for v in scenarios)
    assert any(v.get("workload") == "TrainJob" for v in scenarios)
