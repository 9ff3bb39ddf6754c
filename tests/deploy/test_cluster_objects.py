"""Every object the chart renders, for every stage file and ci scenario, sent to a real API server
(tests/deploy/controlplane.py): a strict server-side dry run, then a real create, each accepted with
no warning. Negative controls show the check can fail."""

from __future__ import annotations

import copy

import pytest

from motif_dev.deploy import render

from .controlplane import ControlPlaneError, find_binary

FILES = render.stage_files() + render.ci_files()


def _id(path) -> str:
    return f"{path.parent.name}/{path.name}"


def rendered(path, namespace: str, **overrides) -> list[dict]:
    values = render.load_values(path)
    values.update(overrides)
    return render.objects(render.render(values, render.release_name(values), namespace=namespace))


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_every_object_is_accepted_by_a_strict_dry_run_then_created(admin, namespace, path):
    objects = rendered(path, namespace, preflight={"helmTest": True})
    assert objects
    # Cluster-scoped objects (PriorityClass, ClusterRole) have one name per cluster, and the session's
    # API server is shared by every test that runs on it, in whatever order: start without them, and
    # remove them after, so the next file's create is a create.
    shared = [o for o in objects if not admin.resource(o["apiVersion"], o["kind"])["namespaced"]]
    for obj in shared:
        admin.delete(obj)
    try:
        for obj in objects:
            what = f"{_id(path)}: {obj['kind']} {obj['metadata']['name']}"
            dry = admin.create(obj, namespace, dry_run=True)
            assert dry.status == 201, f"{what}: dry run {dry.status} {dry.body.get('message')}"
            assert dry.warnings == [], f"{what}: dry run warned {dry.warnings}"
            assert admin.get(obj, namespace).status == 404, f"{what}: a dry run must not create it"
            # then for real, in template order (a Pod's dry run needs its ServiceAccount to exist)
            made = admin.create(obj, namespace)
            assert made.status == 201, f"{what}: create {made.status} {made.body.get('message')}"
            assert made.warnings == [], f"{what}: create warned {made.warnings}"
    finally:
        for obj in shared:
            admin.delete(obj)


def _job(namespace: str) -> dict:
    objects = rendered(render.stage_files()[0], namespace)
    return next(o for o in objects if o["kind"] == "PyTorchJob")


def test_negative_control_an_unknown_field_is_refused_by_the_strict_dry_run(admin, namespace):
    job = _job(namespace)
    assert admin.create(job, namespace, dry_run=True).status == 201
    bad = copy.deepcopy(job)
    bad["spec"]["runPolicy"]["cleanPodPolizy"] = "None"
    refused = admin.create(bad, namespace, dry_run=True)
    assert refused.status in (400, 422), refused
    assert "cleanPodPolizy" in refused.body["message"]


def test_negative_control_a_wrong_type_is_refused(admin, namespace):
    bad = _job(namespace)
    bad["spec"]["nprocPerNode"] = 8  # a string in the CRD
    refused = admin.create(bad, namespace, dry_run=True)
    assert refused.status == 422, refused
    assert "nprocPerNode" in refused.body["message"]


def test_negative_control_a_warning_is_seen(admin, namespace):
    """The zero-warning check reads the Warning headers: an unknown field under fieldValidation=Warn
    is accepted with one."""
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "warned"}, "data": {}, "dta": {}}
    answer = admin.create(cm, namespace, dry_run=True, validation="Warn")
    assert answer.status == 201
    assert any("dta" in w for w in answer.warnings), answer.warnings


def test_a_missing_binary_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(ControlPlaneError, match=r"^kube-apiserver: not found \(KUBEBUILDER_ASSETS="):
        find_binary("kube-apiserver")
    monkeypatch.delenv("KUBEBUILDER_ASSETS")
    with pytest.raises(ControlPlaneError, match="kube-controller-manager: not found .KUBEBUILDER_ASSETS is not set"):
        find_binary("kube-controller-manager")


def test_the_plane_started_quickly(control_plane):
    """etcd + kube-apiserver ready (CRDs not counted); ~6 s on an idle 2-core machine."""
    assert 0 < control_plane.started_in_s <= 20, control_plane.started_in_s


# ---- Pod Security: the pods each workload makes, in namespaces that enforce a level -------------


def _pods(objects: list[dict]) -> list[tuple[str, dict]]:
    """(role, Pod) for every pod template of the render: `trainer` for the training job's replicas
    (what the operator creates), `other` for the growth and eval Jobs' and the helm test pod."""
    out = []
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "PyTorchJob":
            for rtype, spec in obj["spec"]["pytorchReplicaSpecs"].items():
                out.append(("trainer", f"{name}-{rtype.lower()}-0"[:63], spec["template"]))
        elif obj["kind"] == "Job":
            out.append(("other", f"{name}-x"[:63], obj["spec"]["template"]))
        elif obj["kind"] == "Pod":
            out.append(("other", name, {"metadata": obj["metadata"], "spec": obj["spec"]}))
    return [
        (role, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name}, "spec": template["spec"]})
        for role, pod_name, template in out
    ]


def _enforcing(admin, level: str, name: str) -> str:
    labels = {"pod-security.kubernetes.io/enforce": level}
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    made = admin.call("POST", "/api/v1/namespaces", body)
    assert made.status in (201, 409), made.body
    return name


def _pod_security_verdicts(admin, namespace, path, values_override=None) -> tuple[str, dict[str, list]]:
    """(the level preflight says the stage needs, {level: [(role, pod, accepted, message)]})."""
    from motif import preflight

    values = preflight.load_values(path)
    values.update(values_override or {})
    needed, _ = preflight.pod_security_level(values)
    verdicts = {}
    for level in ("baseline", "restricted"):
        ns = _enforcing(admin, level, f"{namespace}-{level[:4]}")
        objects = render.objects(
            render.render({**render.load_values(path), **(values_override or {}), "preflight": {"helmTest": True}},
                          render.release_name(values), namespace=ns)
        )  # fmt: skip
        for obj in objects:  # what the pods refer to: ServiceAccounts, a PriorityClass
            if obj["kind"] in ("ServiceAccount", "PriorityClass") and admin.get(obj, ns).status == 404:
                assert admin.create(obj, ns).status == 201
        for name in {p["spec"].get("serviceAccountName") for _, p in _pods(objects)} - {None}:
            sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
            if admin.get(sa, ns).status == 404:  # an existing one the stage names (serviceAccount.create false)
                assert admin.create(sa, ns).status == 201
        for name in {p["spec"].get("priorityClassName") for _, p in _pods(objects)} - {None}:
            pc = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}}
            if admin.get({**pc, "value": 1}).status == 404:
                assert admin.create({**pc, "value": 1000}).status == 201
        verdicts[level] = []
        for role, pod in _pods(objects):
            answer = admin.create(pod, ns, dry_run=True)
            assert answer.status in (201, 403), (pod["metadata"]["name"], answer.body.get("message"))
            verdicts[level].append((role, pod["metadata"]["name"], answer.status == 201, answer.body.get("message")))
    return needed, verdicts


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_pods_pass_pod_security_exactly_as_preflight_says(admin, namespace, path):
    """Each training pod is admitted in a namespace enforcing `baseline`/`restricted` exactly when
    the level preflight computes for the stage allows it; the other pods pass `restricted`."""
    from motif import preflight

    needed, verdicts = _pod_security_verdicts(admin, namespace, path)
    for level, results in verdicts.items():
        allowed = preflight.PSA_LEVELS.index(level) <= preflight.PSA_LEVELS.index(needed)
        for role, name, accepted, message in results:
            expected = allowed if role == "trainer" else True
            assert accepted is expected, f"{_id(path)} {name} in a {level} namespace (needs {needed}): {message}"
            if not accepted:
                assert "violates PodSecurity" in message


def test_without_host_network_the_102b_stage_passes_restricted(admin, namespace):
    """The switch for clusters without host networking: pod network, RDMA devices from the device
    plugin, no IPC_LOCK (the runtime lifts memlock)."""
    path = render.ROOT / "jobs" / "llama3-motif-102b" / "stage1-depth.yaml"
    assert _pod_security_verdicts(admin, namespace, path)[0] == "privileged"
    rdma = {**render.load_values(path)["rdma"], "ipcLock": False}
    needed, verdicts = _pod_security_verdicts(admin, namespace, path, {"hostNetwork": False, "rdma": rdma})
    assert needed == "restricted"
    assert all(accepted for results in verdicts.values() for _, _, accepted, _ in results), verdicts
