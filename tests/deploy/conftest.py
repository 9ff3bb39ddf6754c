"""Fixtures of the deploy tests: a real Kubernetes control plane (etcd + kube-apiserver, see
controlplane.py) started once per test session with the CRDs the chart needs, a fresh namespace
per test and kubeconfigs for it; and kubeconfigs for the offline servers that play what a real one
does not do (never answer, trickle, answer garbage).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from .controlplane import ControlPlane, ControlPlaneError, Rest

# Katib's Experiment CRD carries no schema (its webhook validates): the same here.
KATIB_EXPERIMENT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "experiments.kubeflow.org"},
    "spec": {
        "group": "kubeflow.org",
        "names": {
            "kind": "Experiment",
            "listKind": "ExperimentList",
            "plural": "experiments",
            "singular": "experiment",
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def write_kubeconfig(path: Path, server: str, namespace: str = "motif", **cluster) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "offline", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "me", "namespace": namespace}}],
        "current-context": "offline",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def kubeconfig_for(tmp_path, monkeypatch) -> Callable[..., Path]:
    """Write a kubeconfig for a server URL and point KUBECONFIG at it (the offline servers of the
    tests: one that never answers, trickles, or answers garbage)."""

    def write(server: str, **cluster) -> Path:
        path = write_kubeconfig(tmp_path / "kubeconfig", server, **cluster)
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return path

    return write


# ---- the real control plane (tests/deploy/controlplane.py) ----------------------------------------


@functools.cache
def crds() -> tuple[dict, ...]:
    """The CRDs of tests/schemas (upstream copies) and Katib's Experiment (read once: megabytes)."""
    from motif_dev.deploy.render import schemas_dir

    out = [KATIB_EXPERIMENT_CRD]
    for path in sorted(schemas_dir().glob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            out.append(doc)
    return tuple(out)


def install_crds(rest: Rest, documents) -> None:
    """Server-side apply (some are too large for the last-applied annotation), then wait until
    each is Established, so its kind is served."""
    import time

    for crd in documents:
        done = rest.apply(crd)
        assert done.status in (200, 201), f"CRD {crd['metadata']['name']}: {done.status} {done.body.get('message')}"
    deadline = time.monotonic() + 30
    pending = {c["metadata"]["name"] for c in documents}
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            got = rest.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").body
            conditions = (got.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                pending.discard(name)
        time.sleep(0.2)
    assert not pending, f"CRDs not established after 30 s: {sorted(pending)}"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (RBAC) on loopback, the CRDs installed; one per test session. A binary
    that cannot be found fails the tests that use it, naming the binary."""
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    try:
        plane.start()
        install_crds(Rest(plane), crds())
    except ControlPlaneError as e:
        plane.stop()
        pytest.fail(str(e), pytrace=False)
    except BaseException:
        plane.stop()
        raise
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def admin(control_plane) -> Rest:
    """REST calls as a cluster admin (client certificate in system:masters)."""
    return Rest(control_plane)


@pytest.fixture
def namespace(admin, request) -> str:
    """A fresh namespace for one test (named after it), with the admin's kubeconfig as KUBECONFIG."""
    import hashlib

    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    name = f"t-{digest}"
    made = admin.call(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert made.status == 201, made.body
    return name


@pytest.fixture
def cluster_kubeconfig(control_plane, monkeypatch) -> Callable[..., Path]:
    """Point KUBECONFIG at the plane: the admin's, or one with a bearer token."""

    def use(namespace: str = "default", token: str | None = None) -> Path:
        if token is None:
            p = control_plane.pki
            user = {"client-certificate": str(p / "admin.crt"), "client-key": str(p / "admin.key")}
        else:
            user = {"token": token}
        path = control_plane._write_kubeconfig(f"kc-{namespace}-{abs(hash(token))}", user, namespace)
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return path

    return use
