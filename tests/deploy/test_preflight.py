"""`motif preflight` against a real kube-apiserver (tests/deploy/controlplane.py).

A cluster that has everything every ci scenario needs passes each scenario (exit 0); with any one
object taken away, the scenarios that need it fail (exit 1) and name exactly what is missing. The
objects are real API objects; what controllers and kubelets would write (a node's allocatable
resources and Ready condition, a claim's phase, an EndpointSlice) is written the same way.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import yaml

from motif import cli, preflight
from motif_dev.deploy import render as r

pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")

NS = "motif-preflight"  # the namespace the stage goes to
OPERATORS = "kubeflow"  # where the operators' webhook Services run
CI = r.CHART / "ci"
SESSION_CRDS = {  # installed for the whole session by conftest.control_plane
    "pytorchjobs.kubeflow.org",
    "trainjobs.trainer.kubeflow.org",
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
    "experiments.kubeflow.org",
}


def _crd(name: str) -> dict:
    plural, group = name.split(".", 1)
    kind = {"localqueues": "LocalQueue", "podgroups": "PodGroup"}[plural]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "names": {"plural": plural, "kind": kind},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def _cluster_crd(group: str, plural: str, kind: str, version: str = "v1beta1") -> dict:
    crd = _crd(f"localqueues.{group}")
    crd["metadata"]["name"] = f"{plural}.{group}"
    crd["spec"]["names"] = {"plural": plural, "kind": kind}
    crd["spec"]["scope"] = "Cluster"
    crd["spec"]["versions"][0]["name"] = version
    return crd


def _webhook(name: str, group: str, resource: str, operations: tuple[str, ...] = ("CREATE",)) -> dict:
    """An operator's webhook, as preflight sees it. The server never calls it: it selects only
    namespaces with a label no namespace has (the tests create these kinds elsewhere)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"validate.{resource}.{group}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "namespaceSelector": {"matchLabels": {"motif-tests/never": "selected"}},
                "clientConfig": {"service": {"name": name.replace(".", "-")[:63], "namespace": OPERATORS}},
                "rules": [
                    {
                        "apiGroups": [group],
                        "apiVersions": ["*"],
                        "operations": list(operations),
                        "resources": [resource],
                    }
                ],
            }
        ],
    }


def _service(webhook: dict) -> list[tuple[dict, dict | None]]:
    """The webhook's Service with one ready endpoint (an EndpointSlice, as the controller writes it)."""
    name = webhook["webhooks"][0]["clientConfig"]["service"]["name"]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": OPERATORS}}
    service["spec"] = {"selector": {"app": name}, "ports": [{"port": 443, "targetPort": 9443}]}
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-x", "namespace": OPERATORS, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": True}}],
        "ports": [{"port": 9443, "protocol": "TCP"}],
    }
    return [(service, None), (endpoints, None)]


def _obj(api_version: str, kind: str, name: str, namespace: str | None = None, **rest) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **rest}


def _pvc(name: str) -> tuple[dict, dict]:
    spec = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}, "storageClassName": ""}
    return _obj("v1", "PersistentVolumeClaim", name, NS, spec=spec), {"phase": "Bound"}


def _node(name: str, allocatable: dict, ready: str = "True", taints: list | None = None) -> tuple[dict, dict]:
    node = _obj("v1", "Node", name, spec={"taints": taints or []})
    status = {"capacity": allocatable, "allocatable": allocatable}
    status["conditions"] = [
        {"type": "Ready", "status": ready, "reason": "KubeletReady", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}
    ]
    return node, status


GPU_NODE = {"nvidia.com/gpu": "8", "rdma/hca_shared_devices_a": "1", "cpu": "64", "memory": "1Ti", "pods": "110"}
OPERATOR_WEBHOOKS = {
    "webhook/training-operator": _webhook("validator.training-operator.kubeflow.org", "kubeflow.org", "pytorchjobs"),
    "webhook/trainer": _webhook("validator.trainer.kubeflow.org", "trainer.kubeflow.org", "trainjobs"),
    "webhook/katib": _webhook("katib.kubeflow.org", "kubeflow.org", "experiments"),
}

# key -> [(object, status)]: everything the ci scenarios need (a key taken away removes its objects).
CLUSTER: dict[str, list[tuple[dict, dict | None]]] = {
    **{f"crd/{n}": [] for n in sorted(SESSION_CRDS)},  # removed and put back by `_take_away` and `_ensure`
    **{
        f"crd/{n}": [(_crd(n), None)]
        for n in ("localqueues.kueue.x-k8s.io", "podgroups.scheduling.volcano.sh", "podgroups.scheduling.x-k8s.io")
    },
    **{key: [(hook, None), *_service(hook)] for key, hook in OPERATOR_WEBHOOKS.items()},
    "priorityclass/training-high": [(_obj("scheduling.k8s.io/v1", "PriorityClass", "training-high", value=1000), None)],
    "localqueue/gpu-queue": [
        (_obj("kueue.x-k8s.io/v1beta1", "LocalQueue", "gpu-queue", NS, spec={"clusterQueue": "gpus"}), None)
    ],
    "workloadpriorityclass/production": [
        (_obj("kueue.x-k8s.io/v1beta1", "WorkloadPriorityClass", "production", value=1000), None)
    ],
    "queue/research": [(_obj("scheduling.volcano.sh/v1beta1", "Queue", "research", spec={"weight": 1}), None)],
    "runtime/torch-distributed": [
        (
            _obj(
                "trainer.kubeflow.org/v1alpha1",
                "ClusterTrainingRuntime",
                "torch-distributed",
                spec=yaml.safe_load(
                    "template: {spec: {replicatedJobs: [{name: node, template: {spec: {template: {spec: "
                    "{containers: [{name: node, image: x}]}}}}}]}}"
                ),
            ),
            None,
        )
    ],  # fmt: skip
    "serviceaccount/trainer": [(_obj("v1", "ServiceAccount", "trainer", NS), None)],
    **{f"pvc/{n}": [_pvc(n)] for n in ("models", "data", "checkpoints")},
    "node/gpu": [_node("gpu-0", GPU_NODE)],
    "namespace/katib-label": [],  # a label on NS, removed by `_take_away`
    "namespace/privileged": [],  # NS enforces privileged; without: baseline
}
CPU_NODE = _node("cpu-0", {"cpu": "64", "memory": "256Gi", "pods": "110"})
EXTRA_CRDS = [
    _cluster_crd("kueue.x-k8s.io", "workloadpriorityclasses", "WorkloadPriorityClass"),
    _cluster_crd("scheduling.volcano.sh", "queues", "Queue"),
]


# What each scenario needs, written out by hand: the keys of CLUSTER.
NEEDS = {
    "01-hostnetwork-rdma": [
        "crd/pytorchjobs.kubeflow.org",
        "webhook/training-operator",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "pvc/checkpoints",
        "pvc/data",
        "pvc/models",
        "node/gpu",
    ],
    "02-volcano-gang": [
        "crd/pytorchjobs.kubeflow.org",
        "webhook/training-operator",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "priorityclass/training-high",
        "crd/podgroups.scheduling.volcano.sh",
        "queue/research",
        "pvc/checkpoints",
        "pvc/data",
        "pvc/models",
        "node/gpu",
    ],
    "03-kueue": [
        "crd/pytorchjobs.kubeflow.org",
        "webhook/training-operator",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "crd/localqueues.kueue.x-k8s.io",
        "localqueue/gpu-queue",
        "workloadpriorityclass/production",
        "pvc/checkpoints",
        "pvc/data",
        "pvc/models",
        "node/gpu",
    ],
    "05-trainjob": [
        "crd/trainjobs.trainer.kubeflow.org",
        "webhook/trainer",
        "runtime/torch-distributed",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "crd/localqueues.kueue.x-k8s.io",
        "localqueue/gpu-queue",
        "pvc/checkpoints",
        "pvc/data",
        "pvc/models",
        "node/gpu",
    ],
    "06-elastic-netpol-secrets": [
        "crd/pytorchjobs.kubeflow.org",
        "webhook/training-operator",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "crd/podgroups.scheduling.x-k8s.io",
        "pvc/checkpoints",
        "pvc/data",
        "pvc/models",
        "node/gpu",
    ],
    "07-minimal-no-monitoring": [
        "crd/pytorchjobs.kubeflow.org",
        "webhook/training-operator",
        "serviceaccount/trainer",
        "pvc/checkpoints",
    ],
    "08-eval-katib": [
        "crd/pytorchjobs.kubeflow.org",
        "webhook/training-operator",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "pvc/checkpoints",
        "pvc/data",
        "pvc/models",
        "node/gpu",
        "crd/experiments.kubeflow.org",
        "webhook/katib",
        "namespace/katib-label",
    ],
}
NEEDS["01-hostnetwork-rdma"].append("namespace/privileged")  # host network, IPC_LOCK


def _wait(what: str, done, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _label(admin, labels: dict) -> None:
    patched = admin.call(
        "PATCH", f"/api/v1/namespaces/{NS}", {"metadata": {"labels": labels}}, "application/merge-patch+json"
    )
    assert patched.status == 200, patched.body


def _ensure(admin) -> None:
    """Every object of CLUSTER present (re-made after a test took one away; removing a CRD also
    removes its objects)."""
    from .conftest import crds, install_crds

    wanted = [c for c in crds() if c["metadata"]["name"] in SESSION_CRDS] + EXTRA_CRDS
    wanted += [obj for key, items in CLUSTER.items() if key.startswith("crd/") for obj, _ in items]
    gone = [c for c in wanted if admin.get(c).status == 404]
    if gone:
        install_crds(admin, gone)
        admin._resources.clear()
    for items in [*CLUSTER.values(), [CPU_NODE]]:
        for obj, state in items:
            if admin.get(obj).status == 404:
                _put(admin, obj, state)
    _label(admin, {preflight.KATIB_LABEL[0]: preflight.KATIB_LABEL[1], preflight.PSA_ENFORCE: "privileged"})


def _put(admin, obj: dict, state: dict | None) -> None:
    admin.put(obj, obj["metadata"].get("namespace", NS), state)
    if obj["kind"] == "Node":  # admission taints a new node not-ready; the node controller lifts it
        taints = {"spec": {"taints": obj["spec"]["taints"] or None}}
        patched = admin.call("PATCH", admin.path(obj, name=True), taints, "application/merge-patch+json")
        assert patched.status == 200, patched.body


def _take_away(admin, key: str) -> None:
    if key == "namespace/katib-label":
        return _label(admin, {preflight.KATIB_LABEL[0]: None})
    if key == "namespace/privileged":
        return _label(admin, {preflight.PSA_ENFORCE: "baseline"})
    if key.startswith("crd/") and key[4:] in SESSION_CRDS:
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": key[4:]},
        }
        items = [(crd, None)]
    else:
        items = CLUSTER[key]
    for obj, _ in items:
        _take_away_one(admin, key, obj)
    admin._resources.clear()


def _take_away_one(admin, key: str, obj: dict) -> None:
    assert admin.delete(obj).status in (200, 202), key
    if obj["kind"] == "PersistentVolumeClaim":  # its protection finalizer waits for a controller
        admin.call(
            "PATCH", admin.path(obj, name=True), {"metadata": {"finalizers": None}}, "application/merge-patch+json"
        )
    _wait(f"{key} not removed", lambda: admin.get(obj).status == 404)


@pytest.fixture(scope="module")
def stage_namespace(admin, control_plane):
    """NS and the operators' namespace, and everything the scenarios need."""
    for name in (NS, OPERATORS):
        admin.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    _ensure(admin)
    yield NS
    for hook in OPERATOR_WEBHOOKS.values():
        admin.delete(hook)


@pytest.fixture
def cluster(stage_namespace, admin, cluster_kubeconfig):
    """A function taking one CLUSTER key away; after the test, whatever the test put in its place
    is removed and the original put back. KUBECONFIG is the admin's."""
    cluster_kubeconfig(NS)
    taken: list[str] = []

    def take(key: str) -> None:
        taken.append(key)
        _take_away(admin, key)

    yield take
    for key in dict.fromkeys(taken):
        if not key.startswith(("namespace/", "crd/")):
            for obj, _ in CLUSTER[key]:
                if admin.get(obj).status == 200:
                    _take_away_one(admin, key, obj)
    _ensure(admin)


def _preflight(scenario: str, capsys) -> tuple[int, list[dict]]:
    code = cli.main(["preflight", str(CI / f"{scenario}-values.yaml"), "--json"])
    return code, json.loads(capsys.readouterr().out)


NAMES = {
    "webhook/training-operator": ("Kubeflow training operator",),
    "webhook/trainer": ("Kubeflow Trainer v2 controller",),
    "webhook/katib": ("Katib controller",),
    "node/gpu": ("nvidia.com/gpu (GPU device plugin)", "rdma/hca_shared_devices_a (RDMA device plugin)"),
    "namespace/katib-label": (f"namespace {NS} label {'='.join(preflight.KATIB_LABEL)}",),
    "namespace/privileged": ("Pod Security admits privileged pods",),
    # Without its CRD, no LocalQueue can exist either.
    "crd/localqueues.kueue.x-k8s.io": ("localqueues.kueue.x-k8s.io", "Kueue LocalQueue gpu-queue"),
}


def _named(key: str, what: str) -> bool:
    """Whether a prerequisite's line names the CLUSTER entry `key`."""
    return any(name in what for name in NAMES.get(key, (key.split("/", 1)[1],)))


@pytest.mark.parametrize("scenario", NEEDS)
def test_everything_present_passes_and_lists_what_the_stage_needs(cluster, capsys, scenario):
    code, results = _preflight(scenario, capsys)
    assert code == 0, [(p["what"], p["detail"]) for p in results if not p["present"]]
    assert all(p["present"] for p in results)
    needed = NEEDS[scenario] + (["node/gpu"] if scenario == "01-hostnetwork-rdma" else [])  # GPUs and RDMA
    pod_security = 0 if "namespace/privileged" in needed else 1  # every stage has one such line
    assert len(results) == len(needed) + pod_security
    for key in needed:
        assert any(_named(key, p["what"]) for p in results), (key, [p["what"] for p in results])


@pytest.mark.parametrize("key", CLUSTER)
def test_each_missing_prerequisite_is_named_and_fails(cluster, capsys, key):
    cluster(key)
    scenarios = [s for s, keys in NEEDS.items() if key in keys]
    assert scenarios, f"{key}: no scenario needs it"
    for scenario in scenarios:
        code, results = _preflight(scenario, capsys)
        missing = [p for p in results if not p["present"]]
        assert code == 1, (scenario, key)
        assert missing and all(_named(key, p["what"]) for p in missing), (scenario, key, missing)


def test_the_table_names_what_is_missing(cluster, capsys):
    cluster("priorityclass/training-high")
    assert cli.main(["preflight", str(CI / "02-volcano-gang-values.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    (line,) = [ln for ln in out if ln.startswith("MISSING")]
    assert "PriorityClass training-high" in line and "(priorityClassName)" in line and "not found" in line
    assert out[-1] == f"1 of 12 prerequisites of stage ci-volcano missing in namespace {NS}"


def test_only_reads(cluster, control_plane, capsys):
    """Read-only: the server's audit log shows gets and lists only."""
    began = len(control_plane.requests())
    assert cli.main(["preflight", str(CI / "08-eval-katib-values.yaml")]) == 0
    asked = control_plane.requests()[began:]
    assert asked and {e["verb"] for e in asked} <= {"get", "list"}, {e["verb"] for e in asked}


# ---- what a real server showed to be too lenient ------------------------------------------------


def _run(scenario: str, capsys) -> dict[str, dict]:
    _, results = _preflight(scenario, capsys)
    return {p["what"]: p for p in results}


def test_a_pending_claim_is_not_ready_unless_it_binds_on_first_consumer(cluster, admin, capsys):
    cluster("pvc/checkpoints")
    pvc, _ = _pvc("checkpoints")
    admin.put(pvc, NS)  # Pending: nothing binds it
    found = _run("07-minimal-no-monitoring", capsys)["PersistentVolumeClaim checkpoints"]
    assert (found["present"], found["detail"]) == (False, "Pending, not bound to a volume")
    cluster("pvc/checkpoints")
    sc = _obj("storage.k8s.io/v1", "StorageClass", "late-binding", provisioner="example.com/nfs")
    sc["volumeBindingMode"] = "WaitForFirstConsumer"
    if admin.get(sc).status == 404:
        admin.put(sc, NS)
    later = copy.deepcopy(pvc)
    later["spec"]["storageClassName"] = "late-binding"
    admin.put(later, NS)
    found = _run("07-minimal-no-monitoring", capsys)["PersistentVolumeClaim checkpoints"]
    assert found["present"] is True and "binds on first consumer" in found["detail"], found


def test_an_operator_runs_only_if_its_webhook_is_served(cluster, admin, capsys):
    hook, ((service, _), (endpoints, _)) = (
        OPERATOR_WEBHOOKS["webhook/training-operator"],
        _service(OPERATOR_WEBHOOKS["webhook/training-operator"]),
    )
    what = "Kubeflow training operator"
    assert _run("07-minimal-no-monitoring", capsys)[what]["present"] is True
    # Only for CONNECT, its Service gone: a leftover of an uninstalled operator.
    cluster("webhook/training-operator")
    connect = _webhook("validator.training-operator.kubeflow.org", "kubeflow.org", "pytorchjobs", ("CONNECT",))
    admin.put(connect, NS)
    found = _run("07-minimal-no-monitoring", capsys)[what]
    assert found["present"] is False and "no admission webhook serves creating" in found["detail"], found
    admin.delete(connect)
    _wait("webhook removed", lambda: admin.get(connect).status == 404)
    admin.put(hook, NS)
    found = _run("07-minimal-no-monitoring", capsys)[what]
    assert found["present"] is False and "does not exist" in found["detail"], found
    admin.put(service, OPERATORS)  # no endpoint ready yet
    found = _run("07-minimal-no-monitoring", capsys)[what]
    assert found["present"] is False and "no ready endpoint and no available Deployment" in found["detail"], found
    name = service["metadata"]["name"]
    deployment = _obj("apps/v1", "Deployment", name, OPERATORS)
    deployment["spec"] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "m", "image": "x"}]}},
    }
    admin.put(deployment, OPERATORS, {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1})
    found = _run("07-minimal-no-monitoring", capsys)[what]
    assert found["present"] is True and f"Deployment {OPERATORS}/{name}: 1 available" in found["detail"], found
    admin.delete(deployment)
    admin.put(endpoints, OPERATORS)
    found = _run("07-minimal-no-monitoring", capsys)[what]
    assert found["present"] is True and "1 ready endpoints" in found["detail"], found


@pytest.mark.parametrize(
    ("ready", "taints"),
    [("False", []), ("Unknown", [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}])],
    ids=["not-ready", "unreachable"],
)
def test_a_node_that_is_not_ready_does_not_count(cluster, admin, capsys, ready, taints):
    cluster("node/gpu")
    _put(admin, *_node("gpu-0", GPU_NODE, ready, taints))
    found = _run("01-hostnetwork-rdma", capsys)["nodes with nvidia.com/gpu (GPU device plugin)"]
    assert (found["present"], found["detail"]) == (False, "0 of 2 nodes (1 more NotReady or unreachable)")


@pytest.mark.parametrize(("level", "ok"), [("privileged", True), ("baseline", False), ("restricted", False)])
def test_the_namespace_pod_security_level_is_checked(cluster, admin, capsys, level, ok):
    _label(admin, {preflight.PSA_ENFORCE: level})
    found = _run("01-hostnetwork-rdma", capsys)[f"Pod Security admits privileged pods in {NS}"]
    assert found["present"] is ok, found
    if not ok:
        assert f"namespace enforces {level}; the stage needs privileged" in found["detail"]
        assert f"{preflight.PSA_ENFORCE}=privileged" in found["detail"]
    restricted = _run("07-minimal-no-monitoring", capsys)[f"Pod Security admits restricted pods in {NS}"]
    assert restricted["present"] is True


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("motif: [", "not valid YAML"), ("- a\n", "motif.name"), ("image: {tag: x}\n", "motif.name")],
)
def test_a_bad_stage_file_is_one_line_and_exit_2(tmp_path, capsys, text, fragment):
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    assert cli.main(["preflight", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and fragment in err


def test_the_helm_test_hook_runs_preflight_on_the_release_values():
    """Opt-in (preflight.helmTest): the one part of the chart with API access, read-only, and only
    while `helm test` runs. It renders, lints and validates like every other template."""
    values = r.load_values(CI / "08-eval-katib-values.yaml")
    values["preflight"] = {"helmTest": True}
    assert r.lint(values) == []
    objs = r.objects(r.render(values, "motif-ci-eval"))
    for obj in objs:
        r.validate(obj)
    assert not [
        o
        for o in r.objects(r.render(r.load_values(CI / "08-eval-katib-values.yaml"), "x"))
        if o["kind"] in ("Role", "ClusterRole")
    ]
    hooks = [o for o in objs if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert sorted(o["kind"] for o in hooks) == sorted(
        ["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Pod"]
    )
    (pod,) = [o for o in hooks if o["kind"] == "Pod"]
    assert pod["spec"]["containers"][0]["command"][:3] == ["motif", "preflight", "/etc/motif-preflight/values.json"]
    # Read-only RBAC.
    for role in [o for o in hooks if o["kind"] in ("ClusterRole", "Role")]:
        assert all(set(rule["verbs"]) <= {"get", "list"} for rule in role["rules"])
    # The values it reads are the release's, and preflight finds the same prerequisites in them.
    (cm,) = [o for o in hooks if o["kind"] == "ConfigMap"]
    shipped = json.loads(cm["data"]["values.json"])
    assert [p.what for p in preflight.prerequisites(shipped, NS)] == [
        p.what for p in preflight.prerequisites(preflight.load_values(CI / "08-eval-katib-values.yaml"), NS)
    ]


# ---- as the chart's own preflight ServiceAccount (the helm test hook's RBAC) ---------------------


def _hook_rbac(admin) -> tuple[str, dict]:
    """The helm test hook's ServiceAccount, (Cluster)Roles and bindings made in NS; returns the
    ServiceAccount's name and its ClusterRole."""
    values = r.load_values(CI / "08-eval-katib-values.yaml")
    values["preflight"] = {"helmTest": True}
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    objs = [
        o
        for o in r.objects(r.render(values, "motif-ci-eval", NS))
        if o["kind"] in kinds and o["metadata"]["labels"].get("app.kubernetes.io/component") == "preflight"
    ]
    for obj in objs:
        if admin.get(obj, NS).status == 200:
            admin.delete(obj, NS)
            _wait(f"{obj['kind']} replaced", lambda o=obj: admin.get(o, NS).status == 404)
        admin.put(obj, NS)
    (sa,) = [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"]
    (role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    return sa, role


def test_preflight_as_the_charts_service_account_reads_everything_it_checks(cluster, admin, cluster_kubeconfig, capsys):
    sa, _ = _hook_rbac(admin)
    cluster_kubeconfig(NS, token=admin.token(NS, sa))
    for scenario in NEEDS:
        code, results = _preflight(scenario, capsys)
        assert code == 0, (scenario, [(p["what"], p["detail"]) for p in results if not p["present"]])


def test_a_permission_removed_is_named_with_verb_resource_and_namespace(cluster, admin, cluster_kubeconfig, capsys):
    sa, role = _hook_rbac(admin)
    role["rules"] = [rule for rule in role["rules"] if "services" not in rule["resources"]]
    replaced = admin.call("PUT", admin.path(role, name=True), role)
    assert replaced.status == 200, replaced.body
    cluster_kubeconfig(NS, token=admin.token(NS, sa))
    deadline = time.monotonic() + 10
    while True:  # the authorizer sees the new rules within a moment
        assert cli.main(["preflight", str(CI / "07-minimal-no-monitoring-values.yaml")]) == 1
        out = capsys.readouterr().out
        if "MISSING" in out or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("MISSING")]
    assert "Kubeflow training operator" in line
    assert f"not allowed to get services in namespace {OPERATORS} (403 Forbidden)" in line, line
