"""Every object the chart renders, for every stage file and ci scenario, sent to a real API server
(tests/deploy/controlplane.py): a strict server-side dry run, then a real create, each accepted with
no warning. Negative controls show the check can fail."""

from __future__ import annotations

import copy

import pytest

from motif.deploy import render

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
    for obj in objects:  # cluster-scoped ones (PriorityClass, ClusterRole) would collide with the next file
        if not admin.resource(obj["apiVersion"], obj["kind"])["namespaced"]:
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
