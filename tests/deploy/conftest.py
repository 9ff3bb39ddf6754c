"""A small fake Kubernetes API server on 127.0.0.1 for `motif status` and `motif preflight`.

It answers list and get calls (`/api/v1/...`, `/apis/GROUP/VERSION/...`, namespaced or not) from
a dict `(group, plural) -> [objects]`, filters lists by label selector (`k=v` and `k in (a,b)`),
and answers 404 as a real server does for anything else, so the real kubernetes client code path
runs: the kubeconfig, the HTTP requests, and the deserialisation into its models.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

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


def _matches(labels: dict, selector: str) -> bool:
    for term in re.split(r",(?![^(]*\))", selector):
        term = term.strip()
        if not term:
            continue
        found = re.fullmatch(r"(\S+) in \((.*)\)", term)
        if found:
            if labels.get(found.group(1)) not in [v.strip() for v in found.group(2).split(",")]:
                return False
        else:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
    return True


def _not_found(path: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "NotFound",
        "code": 404,
        "message": f"the server could not find the requested resource ({path})",
    }


class FakeAPI(BaseHTTPRequestHandler):
    objects: dict[tuple[str, str], list[dict]] = {}
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        url = urlparse(self.path)
        FakeAPI.requests.append(self.path)
        parts = url.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        namespace, name = None, None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, plural, name = rest[1], rest[2], (rest[3] if len(rest) > 3 else None)
        else:
            plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        items = FakeAPI.objects.get((group, plural))
        if items is None:
            return self._send(404, _not_found(url.path))
        items = [o for o in items if namespace is None or o["metadata"].get("namespace") == namespace]
        if name is not None:
            found = [o for o in items if o["metadata"]["name"] == name]
            return self._send(200, found[0]) if found else self._send(404, _not_found(url.path))
        selector = parse_qs(url.query).get("labelSelector", [""])[0]
        items = [o for o in items if _matches(o["metadata"].get("labels", {}), selector)]
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


def write_kubeconfig(path: Path, server: str, namespace: str = "motif", **cluster) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": namespace}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def kubeconfig_for(tmp_path, monkeypatch) -> Callable[..., Path]:
    """Write a kubeconfig for a server URL and point KUBECONFIG at it."""

    def write(server: str, **cluster) -> Path:
        path = write_kubeconfig(tmp_path / "kubeconfig", server, **cluster)
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return path

    return write


@pytest.fixture
def fake_https_api(tmp_path, kubeconfig_for) -> Iterator[Callable[[dict], Path]]:
    """The fake API server over TLS with a throw-away self-signed certificate, and a kubeconfig
    that skips verifying it (insecure-skip-tls-verify), as many test clusters are set up."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    servers = []

    def start(objects: dict[tuple[str, str], list[dict]]) -> Path:
        FakeAPI.objects = objects
        FakeAPI.requests.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return kubeconfig_for(f"https://127.0.0.1:{server.server_port}", **{"insecure-skip-tls-verify": True})

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_api(tmp_path, monkeypatch) -> Iterator[Callable[[dict], Path]]:
    """Start the fake API server with the objects given; returns the kubeconfig it sets (KUBECONFIG)."""
    servers = []

    def start(objects: dict[tuple[str, str], list[dict]]) -> Path:
        FakeAPI.objects = objects
        FakeAPI.requests.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        path = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return path

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api_requests() -> list[str]:
    """The request paths the fake API server received, in order."""
    return FakeAPI.requests


# ---- the real control plane (tests/deploy/controlplane.py) ----------------------------------------


def crds() -> list[dict]:
    """The CRDs of tests/schemas (upstream copies) and Katib's Experiment."""
    from motif.deploy.render import schemas_dir

    out = [KATIB_EXPERIMENT_CRD]
    for path in sorted(schemas_dir().glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            out.append(doc)
    return out


def install_crds(rest: Rest, documents: list[dict]) -> None:
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
