"""`motif preflight` against the fake API server of tests/deploy/conftest.py (the real kubernetes
client: kubeconfig, HTTP, deserialisation into its models).

A cluster that has everything every ci scenario needs passes each scenario (exit 0); with any one
object taken away, the scenarios that need it fail (exit 1) and name exactly what is missing.
"""

from __future__ import annotations

import json

import pytest
import yaml

from motif import cli, preflight
from motif.deploy import render as r

pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")

NS = "motif"
CI = r.CHART / "ci"


def _crd(name: str) -> dict:
    plural, group = name.split(".", 1)
    shipped = {
        "pytorchjobs.kubeflow.org": "kubeflow.org_pytorchjobs.yaml",
        "trainjobs.trainer.kubeflow.org": "trainer.kubeflow.org_trainjobs.yaml",
        "podmonitors.monitoring.coreos.com": "monitoring.coreos.com_podmonitors.yaml",
        "prometheusrules.monitoring.coreos.com": "monitoring.coreos.com_prometheusrules.yaml",
    }
    if name in shipped:  # the real CRD files the chart is validated against
        return yaml.safe_load((r.ROOT / "tests" / "schemas" / shipped[name]).read_text())
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "names": {"plural": plural, "kind": plural.title()[:-1]},
            "scope": "Namespaced",
            "versions": [{"name": "v1beta1", "served": True, "storage": True}],
        },
    }


def _webhook(name: str, group: str, resource: str) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"validate.{resource}.{group}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"service": {"name": name, "namespace": "kubeflow"}},
                "rules": [
                    {"apiGroups": [group], "apiVersions": ["*"], "operations": ["CREATE"], "resources": [resource]}
                ],
            }
        ],
    }


def _obj(kind: str, name: str, namespace: str | None = None, **rest) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, **rest}


def _pvc(name: str) -> dict:
    return _obj(
        "PersistentVolumeClaim",
        name,
        NS,
        spec={"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}},
        status={"phase": "Bound"},
    )


# key -> ((group, plural), object): everything the ci scenarios need, one object each.
CLUSTER = {
    **{
        f"crd/{n}": (("apiextensions.k8s.io", "customresourcedefinitions"), _crd(n))
        for n in (
            "pytorchjobs.kubeflow.org",
            "trainjobs.trainer.kubeflow.org",
            "podmonitors.monitoring.coreos.com",
            "prometheusrules.monitoring.coreos.com",
            "localqueues.kueue.x-k8s.io",
            "podgroups.scheduling.volcano.sh",
            "podgroups.scheduling.x-k8s.io",
            "experiments.kubeflow.org",
        )
    },
    "webhook/training-operator": (
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        _webhook("validator.training-operator.kubeflow.org", "kubeflow.org", "pytorchjobs"),
    ),
    "webhook/trainer": (
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        _webhook("validator.trainer.kubeflow.org", "trainer.kubeflow.org", "trainjobs"),
    ),
    "webhook/katib": (
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        _webhook("katib.kubeflow.org", "kubeflow.org", "experiments"),
    ),
    "priorityclass/training-high": (
        ("scheduling.k8s.io", "priorityclasses"),
        _obj("PriorityClass", "training-high", value=1000),
    ),
    "localqueue/gpu-queue": (("kueue.x-k8s.io", "localqueues"), _obj("LocalQueue", "gpu-queue", NS)),
    "workloadpriorityclass/production": (
        ("kueue.x-k8s.io", "workloadpriorityclasses"),
        _obj("WorkloadPriorityClass", "production", value=1000),
    ),
    "queue/research": (("scheduling.volcano.sh", "queues"), _obj("Queue", "research")),
    "runtime/torch-distributed": (
        ("trainer.kubeflow.org", "clustertrainingruntimes"),
        _obj("ClusterTrainingRuntime", "torch-distributed"),
    ),
    "serviceaccount/trainer": (("", "serviceaccounts"), _obj("ServiceAccount", "trainer", NS)),
    **{f"pvc/{n}": (("", "persistentvolumeclaims"), _pvc(n)) for n in ("models", "data", "checkpoints")},
    "node/gpu": (
        ("", "nodes"),
        _obj("Node", "gpu-0", status={"allocatable": {"nvidia.com/gpu": "8", "rdma/hca_shared_devices_a": "1"}}),
    ),
    "namespace/motif": (
        ("", "namespaces"),
        _obj("Namespace", NS, labels={}) | {"metadata": {"name": NS, "labels": dict([preflight.KATIB_LABEL])}},
    ),
}
CPU_NODE = _obj("Node", "cpu-0", status={"allocatable": {"cpu": "64"}})

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
        "namespace/motif",
    ],
}


def _objects(without: str | None = None) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for key, (route, obj) in CLUSTER.items():
        out.setdefault(route, [])
        if key != without:
            out[route].append(obj)
    out[("", "nodes")].append(CPU_NODE)
    out[("admissionregistration.k8s.io", "mutatingwebhookconfigurations")] = []
    if without == "namespace/motif":  # the namespace exists, without Katib's label
        out[("", "namespaces")].append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return out


def _preflight(scenario: str, capsys) -> tuple[int, list[dict]]:
    code = cli.main(["preflight", str(CI / f"{scenario}-values.yaml"), "--json"])
    return code, json.loads(capsys.readouterr().out)


NAMES = {
    "webhook/training-operator": ("Kubeflow training operator",),
    "webhook/trainer": ("Kubeflow Trainer v2 controller",),
    "webhook/katib": ("Katib controller",),
    "node/gpu": ("nvidia.com/gpu (GPU device plugin)", "rdma/hca_shared_devices_a (RDMA device plugin)"),
    "namespace/motif": (f"namespace motif label {'='.join(preflight.KATIB_LABEL)}",),
}


def _named(key: str, what: str) -> bool:
    """Whether a prerequisite's line names the CLUSTER entry `key`."""
    return any(name in what for name in NAMES.get(key, (key.split("/", 1)[1],)))


@pytest.mark.parametrize("scenario", NEEDS)
def test_everything_present_passes_and_lists_what_the_stage_needs(fake_api, capsys, scenario):
    fake_api(_objects())
    code, results = _preflight(scenario, capsys)
    assert code == 0, [p for p in results if not p["present"]]
    assert all(p["present"] for p in results)
    needed = NEEDS[scenario] + (["node/gpu"] if scenario == "01-hostnetwork-rdma" else [])  # GPUs and RDMA
    assert len(results) == len(needed)
    for key in needed:
        assert any(_named(key, p["what"]) for p in results), (key, [p["what"] for p in results])


@pytest.mark.parametrize("key", CLUSTER)
def test_each_missing_prerequisite_is_named_and_fails(fake_api, capsys, key):
    fake_api(_objects(without=key))
    scenarios = [s for s, keys in NEEDS.items() if key in keys]
    assert scenarios, f"{key}: no scenario needs it"
    for scenario in scenarios:
        code, results = _preflight(scenario, capsys)
        missing = [p for p in results if not p["present"]]
        assert code == 1, (scenario, key)
        assert missing and all(_named(key, p["what"]) for p in missing), (scenario, key, missing)


def test_the_table_names_what_is_missing(fake_api, capsys):
    fake_api(_objects(without="priorityclass/training-high"))
    assert cli.main(["preflight", str(CI / "02-volcano-gang-values.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    (line,) = [ln for ln in out if ln.startswith("MISSING")]
    assert "PriorityClass training-high" in line and "(priorityClassName)" in line and "not found" in line
    assert out[-1] == "1 of 11 prerequisites of stage ci-volcano missing in namespace motif"


def test_only_reads(fake_api, api_requests, capsys):
    """Read-only: the server saw GETs only (the fake answers no other method)."""
    fake_api(_objects())
    assert cli.main(["preflight", str(CI / "08-eval-katib-values.yaml")]) == 0
    assert api_requests and all(not q.startswith("/api/v1/namespaces/motif/pods") for q in api_requests)


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
