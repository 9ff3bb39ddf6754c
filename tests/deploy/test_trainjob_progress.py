"""Progress in the TrainJob's status.trainerStatus (motif/metrics/trainjob.py), against the real API
server of tests/deploy/controlplane.py: the chart's TrainJob, ServiceAccount, Role and RoleBinding
are rendered and created, the reporter runs with a bound token of that ServiceAccount, exactly as
the pod would (KUBERNETES_SERVICE_HOST/PORT, the token, the CA and the namespace in a service
account folder), and what the server holds afterwards is read back. A token without the Role's
permission is refused: one warning line, and the steps go on.

Kubeflow Trainer's own route (KEP-2779) needs its controller's status server, which this plane does
not run: `TrainerStatusServer` stands in for it, doing what that server does with a request (the
bearer token reviewed by the API server for the audience trainer.kubeflow.org, the trainerStatus
server-side applied to the TrainJob's status subresource as field manager trainer-status), so the
reporter's requests meet the real API server's validation of the CRD."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import pytest

from motif import config
from motif.metrics import names, trainjob
from motif_dev.deploy import render

CI_TRAINJOB = render.ci_files()[0].parent / "05-trainjob-values.yaml"
RELEASE = "progress"


def _chart_objects(namespace: str, **overrides) -> list[dict]:
    values = render.load_values(CI_TRAINJOB)
    values.update(overrides)
    return render.objects(render.render(values, RELEASE, namespace=namespace))


def _install(admin, namespace: str) -> dict[str, dict]:
    """Create what the chart renders for a TrainJob that reports progress; returns them by kind."""
    wanted = ("ServiceAccount", "Role", "RoleBinding", "TrainJob")
    objects = {o["kind"]: o for o in _chart_objects(namespace) if o["kind"] in wanted}
    assert sorted(objects) == sorted(wanted), sorted(objects)
    for obj in objects.values():
        made = admin.create(obj, namespace)
        assert made.status == 201, f"{obj['kind']}: {made.status} {made.body.get('message')}"
    return objects


def _pod_credentials(tmp_path: Path, control_plane, token: str, namespace: str) -> tuple[dict, Path]:
    """The environment and the service account folder a pod of the TrainJob would have."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes((control_plane.pki / "ca.crt").read_bytes())
    (sa / "namespace").write_text(namespace)
    url = urlsplit(control_plane.server)
    env = {
        "KUBERNETES_SERVICE_HOST": url.hostname,
        "KUBERNETES_SERVICE_PORT": str(url.port),
        trainjob.ENV_NAME: RELEASE,
    }
    return env, sa


def _step(reporter, step: int, loss: float = 2.5, tokens_per_s: float = 1234.5) -> None:
    reporter.log(
        {names.STEP.name: step, names.LOSS.name: {"all": loss, "en": loss}, names.TOKENS_PER_SECOND.name: tokens_per_s},
        step,
    )


def _every_step_refused(reporter, steps: int, caplog) -> str:
    """Report `steps` steps, each one refused, then close: the one warning line they make."""
    with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
        for step in range(steps):
            _step(reporter, step)
            _wait(lambda n=step + 1: reporter.failed >= n)
        reporter.close()
    assert (reporter.sent, reporter.failed) == (0, steps)
    (line,) = [r.getMessage() for r in caplog.records]
    return line


def _wait(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def _trainer_status(admin, job: dict, namespace: str) -> dict | None:
    got = admin.get(job, namespace)
    assert got.status == 200, got.body
    return (got.body.get("status") or {}).get("trainerStatus")


def test_the_chart_grants_patch_on_its_own_trainjob_status_only(admin, namespace):
    objects = {o["kind"]: o for o in _chart_objects(namespace)}
    (rule,) = objects["Role"]["rules"]
    assert rule == {
        "apiGroups": ["trainer.kubeflow.org"],
        "resources": ["trainjobs/status"],
        "resourceNames": [RELEASE],
        "verbs": ["patch"],
    }
    env = {e["name"]: e for e in objects["TrainJob"]["spec"]["trainer"]["env"]}
    assert env[trainjob.ENV_NAME]["value"] == objects["TrainJob"]["metadata"]["name"]
    assert env[trainjob.ENV_NAMESPACE]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert objects["RoleBinding"]["subjects"][0]["name"] == objects["ServiceAccount"]["metadata"]["name"]
    # off: no Role, no env, no token volume
    off = _chart_objects(
        namespace, trainJob={**render.load_values(CI_TRAINJOB).get("trainJob", {}), "progress": {"enabled": False}}
    )
    kinds = {o["kind"] for o in off}
    assert "Role" not in kinds and "RoleBinding" not in kinds
    (job,) = [o for o in off if o["kind"] == "TrainJob"]
    assert trainjob.ENV_NAME not in {e["name"] for e in job["spec"]["trainer"]["env"]}
    assert "trainjob-status-token" not in str(job["spec"]["runtimePatches"])


def test_progress_reaches_the_trainjob_status_with_the_charts_service_account(
    admin, control_plane, namespace, tmp_path, caplog
):
    objects = _install(admin, namespace)
    job = objects["TrainJob"]
    # what the Trainer controller wrote is kept: the reporter merge-patches trainerStatus only
    condition = {"type": "Created", "status": "True", "reason": "JobsCreated", "message": "made",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    set_by_controller = admin.call(
        "PATCH",
        admin.path(job, namespace, name=True) + "/status",
        {"status": {"conditions": [condition]}},
        content_type="application/merge-patch+json",
    )
    assert set_by_controller.status == 200, set_by_controller.body
    token = admin.token(namespace, objects["ServiceAccount"]["metadata"]["name"])
    env, sa = _pod_credentials(tmp_path, control_plane, token, namespace)
    target = trainjob.target_from_env(env, sa)
    assert target is not None and target.namespace == namespace and target.name == RELEASE

    reporter = trainjob.TrainJobProgress(target, max_steps=8, every_s=3600)
    with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
        _step(reporter, 0)  # the first report goes out at once, before any rate is known
        _wait(lambda: reporter.sent == 1)
        first = _trainer_status(admin, job, namespace)
        assert first["progressPercentage"] == 0
        assert "estimatedRemainingSeconds" not in first
        assert {m["name"]: m["value"] for m in first["metrics"]}["loss"] == "2.5"
        for step in range(1, 8):  # inside the interval: recorded, not sent
            _step(reporter, step, loss=2.5 - step / 10)
            time.sleep(0.01)
        assert reporter.sent == 1
        assert _trainer_status(admin, job, namespace)["progressPercentage"] == 0
        _step(reporter, 8, loss=1.75)  # the stage's last step is always sent
        reporter.close()
    assert (reporter.sent, reporter.failed) == (2, 0)
    assert caplog.records == []

    final = _trainer_status(admin, job, namespace)
    assert final["progressPercentage"] == 100
    assert final["estimatedRemainingSeconds"] == 0
    assert {m["name"]: m["value"] for m in final["metrics"]} == {
        "loss": "1.75",
        "tokens_per_second": "1234.5",
        "step": "8",
        "total_steps": "8",
    }
    assert final["lastUpdatedTime"].endswith("Z")
    assert admin.get(job, namespace).body["status"]["conditions"][0]["type"] == "Created"


def test_the_estimate_of_the_remaining_seconds_follows_the_steps(admin, control_plane, namespace, tmp_path):
    objects = _install(admin, namespace)
    token = admin.token(namespace, objects["ServiceAccount"]["metadata"]["name"])
    env, sa = _pod_credentials(tmp_path, control_plane, token, namespace)
    reporter = trainjob.TrainJobProgress(trainjob.target_from_env(env, sa), max_steps=1000, every_s=0.05)
    _step(reporter, 0)
    time.sleep(0.2)
    _step(reporter, 1)  # 0.2 s a step, 999 steps to go: ~200 s
    _wait(lambda: reporter.sent == 2)
    reporter.close()
    status = _trainer_status(admin, objects["TrainJob"], namespace)
    assert status["progressPercentage"] == 0
    assert 190 <= status["estimatedRemainingSeconds"] <= 300


def test_a_token_without_the_permission_is_one_warning_and_training_goes_on(
    admin, control_plane, namespace, tmp_path, caplog
):
    objects = _install(admin, namespace)
    stranger = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-role"}}
    assert admin.create(stranger, namespace).status == 201
    env, sa = _pod_credentials(tmp_path, control_plane, admin.token(namespace, "no-role"), namespace)
    reporter = trainjob.TrainJobProgress(trainjob.target_from_env(env, sa), max_steps=5, every_s=0.01)
    line = _every_step_refused(reporter, 6, caplog)
    assert "403 Forbidden" in line and f"trainjobs/status {RELEASE} in namespace {namespace}" in line
    assert "training continues" in line and "\n" not in line
    assert _trainer_status(admin, objects["TrainJob"], namespace) is None


def test_the_charts_token_cannot_patch_another_trainjob(admin, control_plane, namespace, tmp_path, caplog):
    objects = _install(admin, namespace)
    other = {**objects["TrainJob"], "metadata": {"name": "someone-else"}}
    assert admin.create(other, namespace).status == 201
    token = admin.token(namespace, objects["ServiceAccount"]["metadata"]["name"])
    env, sa = _pod_credentials(tmp_path, control_plane, token, namespace)
    env[trainjob.ENV_NAME] = "someone-else"
    reporter = trainjob.TrainJobProgress(trainjob.target_from_env(env, sa), max_steps=1)
    with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
        _step(reporter, 1)
        reporter.close()
    assert (reporter.sent, reporter.failed) == (0, 1)
    assert "403 Forbidden" in caplog.records[0].getMessage()
    assert _trainer_status(admin, other, namespace) is None


def test_a_server_that_never_answers_never_holds_a_step(tmp_path, caplog):
    """A listening socket that never answers: each `log()` returns at once, `close()` within the
    patch timeout, and one warning says why."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sa = tmp_path / "sa"
        sa.mkdir()
        (sa / "token").write_text("t")
        server = f"https://127.0.0.1:{silent.getsockname()[1]}"
        target = trainjob.Target(
            trainjob.api_server_url(server, "ns", "job"), certifi.where(), str(sa / "token"), "ns", "job"
        )
        reporter = trainjob.TrainJobProgress(target, max_steps=3, every_s=0.01, timeout_s=0.5)
        with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
            t0 = time.monotonic()
            for step in range(4):
                _step(reporter, step)
            logged = time.monotonic() - t0
            reporter.close()
            closed = time.monotonic() - t0
    assert logged < 0.1, f"log() waited {logged:.2f}s for the server"
    assert closed < 3.0
    assert len(caplog.records) == 1 and "training continues" in caplog.records[0].getMessage()


def test_off_unless_the_pod_names_a_trainjob(tmp_path, caplog):
    assert trainjob.target_from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path) is None
    with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
        env = {trainjob.ENV_NAME: "job", "KUBERNETES_SERVICE_HOST": "10.0.0.1", trainjob.ENV_NAMESPACE: "ns"}
        assert trainjob.target_from_env(env, tmp_path) is None  # no token, no CA in the folder
    (line,) = [r.getMessage() for r in caplog.records]
    assert "token" in line and "ca.crt" in line


@pytest.mark.parametrize(
    "step, max_steps, remaining, percent, seconds",
    [(0, 10, None, 0, None), (5, 10, 12.4, 50, 12), (10, 10, 0.0, 100, 0), (1, 3, 2**40, 33, 2**31 - 1)],
)
def test_trainer_status_fields_are_those_of_the_crd(step, max_steps, remaining, percent, seconds):
    status = trainjob.trainer_status(step, max_steps, remaining, float("nan"), None, 0.0)
    assert status["progressPercentage"] == percent
    assert status["estimatedRemainingSeconds"] == seconds
    assert status["lastUpdatedTime"] == "1970-01-01T00:00:00Z"
    assert [m["name"] for m in status["metrics"]] == ["step", "total_steps"]  # a NaN loss is left out


# ---- Kubeflow Trainer's status server (KEP-2779) ------------------------------------------------------

TRAINER_AUDIENCE = "trainer.kubeflow.org"


class TrainerStatusServer:
    """HTTPS on loopback (the plane's serving certificate) answering POST
    /apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status as Kubeflow
    Trainer's status server does: 403 unless the token is the TrainJob's ServiceAccount's for the
    audience trainer.kubeflow.org, else the API server's answer to the apply. `requests` keeps
    (method, content type, body) of each request."""

    def __init__(self, admin, control_plane, service_account: str):
        self.admin, self.service_account = admin, service_account
        self.requests: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.requests.append(("POST", self.headers.get("Content-Type", ""), body))
                code, answer = outer.handle(self.path, self.headers.get("Authorization", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # the test's output stays its own
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(control_plane.pki / "server.crt", control_plane.pki / "server.key")
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, namespace: str, name: str) -> str:
        return trainjob.api_server_url(f"https://127.0.0.1:{self.httpd.server_address[1]}", namespace, name)

    def handle(self, path: str, authorization: str, body: dict) -> tuple[int, dict]:
        found = trainjob.STATUS_PATH.fullmatch(path)
        if found is None:
            return 404, {"kind": "Status", "code": 404, "message": "not found"}
        namespace, name = found.groups()
        review = self.admin.call(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": authorization.removeprefix("Bearer "), "audiences": [TRAINER_AUDIENCE]},
            },
        )
        user = (review.body.get("status") or {}).get("user", {}).get("username")
        if user != f"system:serviceaccount:{namespace}:{self.service_account}":
            return 403, {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "Forbidden"}
        applied = self.admin.call(
            "PATCH",
            path + "?fieldManager=trainer-status&force=true",
            {
                "apiVersion": "trainer.kubeflow.org/v1alpha1",
                "kind": "TrainJob",
                "metadata": {"name": name, "namespace": namespace},
                "status": {"trainerStatus": body.get("trainerStatus")},
            },
            content_type="application/apply-patch+yaml",
        )
        return applied.status, applied.body

    def __enter__(self) -> TrainerStatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _audience_token(admin, namespace: str, service_account: str, audience: str) -> str:
    """A projected token as Kubeflow Trainer mounts it: bound to the pod's ServiceAccount, for its audience."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": [audience]}}
    made = admin.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", request)
    assert made.status == 201, made.body
    return made.body["status"]["token"]


def _trainer_injection(tmp_path: Path, control_plane, url: str, token: str) -> dict:
    """The environment Kubeflow Trainer's controller injects, with its files."""
    folder = tmp_path / "kubeflow-trainer"
    folder.mkdir()
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_bytes((control_plane.pki / "ca.crt").read_bytes())
    return {
        trainjob.ENV_STATUS_URL: url,
        trainjob.ENV_STATUS_CA_CERT: str(folder / "ca.crt"),
        trainjob.ENV_STATUS_TOKEN: str(folder / "token"),
    }


def test_progress_goes_through_kubeflow_trainers_status_server_when_it_is_injected(
    admin, control_plane, namespace, tmp_path, caplog
):
    objects = _install(admin, namespace)
    account = objects["ServiceAccount"]["metadata"]["name"]
    with TrainerStatusServer(admin, control_plane, account) as status_server:
        token = _audience_token(admin, namespace, account, TRAINER_AUDIENCE)
        # the pod has both routes (chart and Trainer); the Trainer's is taken
        env, sa = _pod_credentials(tmp_path, control_plane, admin.token(namespace, account), namespace)
        env |= _trainer_injection(tmp_path, control_plane, status_server.url(namespace, RELEASE), token)
        target = trainjob.target_from_env(env, sa)
        assert target.route == trainjob.STATUS_SERVER and (target.namespace, target.name) == (namespace, RELEASE)
        reporter = trainjob.TrainJobProgress(target, max_steps=4, every_s=3600)
        with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
            _step(reporter, 0)
            _wait(lambda: reporter.sent == 1)
            _step(reporter, 4, loss=1.5)
            reporter.close()
    assert (reporter.sent, reporter.failed) == (2, 0) and caplog.records == []
    # POSTed as the KEP has it: the trainerStatus alone, no null for what is not known yet
    (method, content_type, first), _ = status_server.requests
    assert (method, content_type) == ("POST", "application/json")
    assert set(first) == {"trainerStatus"} and "estimatedRemainingSeconds" not in first["trainerStatus"]
    got = admin.get(objects["TrainJob"], namespace).body
    status = got["status"]["trainerStatus"]
    assert (status["progressPercentage"], status["estimatedRemainingSeconds"]) == (100, 0)
    assert {m["name"]: m["value"] for m in status["metrics"]}["loss"] == "1.5"
    assert "trainer-status" in {f["manager"] for f in got["metadata"]["managedFields"]}


def test_a_refusal_of_trainers_status_server_is_one_warning_and_training_goes_on(
    admin, control_plane, namespace, tmp_path, caplog
):
    objects = _install(admin, namespace)
    account = objects["ServiceAccount"]["metadata"]["name"]
    with TrainerStatusServer(admin, control_plane, account) as status_server:
        api_token = admin.token(namespace, account)  # for the API server, not trainer.kubeflow.org
        env = _trainer_injection(tmp_path, control_plane, status_server.url(namespace, RELEASE), api_token)
        reporter = trainjob.TrainJobProgress(trainjob.target_from_env(env, tmp_path), max_steps=3, every_s=0.01)
        line = _every_step_refused(reporter, 4, caplog)
    assert "403 Forbidden" in line and "via Kubeflow Trainer's status server" in line and "training continues" in line
    assert _trainer_status(admin, objects["TrainJob"], namespace) is None


def test_a_partial_trainer_injection_falls_back_to_the_charts_route(tmp_path, caplog):
    sa = tmp_path / "sa"
    sa.mkdir()
    for name in ("token", "ca.crt"):
        (sa / name).write_text("x")
    env = {
        trainjob.ENV_STATUS_URL: "https://trainer.kubeflow:8082/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs/job/status",
        trainjob.ENV_STATUS_CA_CERT: str(tmp_path / "absent.crt"),
        trainjob.ENV_STATUS_TOKEN: str(sa / "token"),
        trainjob.ENV_NAME: "job",
        trainjob.ENV_NAMESPACE: "ns",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    }
    with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
        target = trainjob.target_from_env(env, sa)
    assert target.route == trainjob.API_SERVER
    assert target.url == "https://10.96.0.1:443/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs/job/status"
    (line,) = [r.getMessage() for r in caplog.records]
    assert trainjob.ENV_STATUS_CA_CERT in line


@pytest.mark.slow
def test_motif_train_on_two_ranks_reports_from_rank_0_only(admin, control_plane, namespace, tmp_path):
    """`motif train` of the tiny recipe's first stage, two ranks under torchrun, with what Kubeflow
    Trainer injects: the TrainJob ends at 100% with the run's last step, reported by rank 0 alone."""
    from motif.data.corpus import write_corpus
    from motif.demo import prepare_data
    from motif.eval.demo import HELDOUT_DOCS, HELDOUT_SEED

    objects = _install(admin, namespace)
    account = objects["ServiceAccount"]["metadata"]["name"]
    stage_file = render.ROOT / "jobs" / "tiny" / "stage0-base.yaml"
    prepare_data(tmp_path, config.load_stage(stage_file))
    write_corpus(tmp_path / "data" / "heldout", HELDOUT_DOCS, seed=HELDOUT_SEED)
    with TrainerStatusServer(admin, control_plane, account) as status_server:
        token = _audience_token(admin, namespace, account, TRAINER_AUDIENCE)
        env = {
            **os.environ,
            **_trainer_injection(tmp_path, control_plane, status_server.url(namespace, RELEASE), token),
            "PYTHONPATH": str(render.ROOT),
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false",
        }
        argv = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        argv += ["-m", "motif", "train", str(stage_file), "--max-steps", "3", "--metrics-port", "0"]
        done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trainjob progress: reporting to trainjobs/status progress" in done.stderr
    # the first report and the last step's, both from rank 0 (every_s is 30 s: none in between)
    assert len(status_server.requests) == 2, status_server.requests
    status = _trainer_status(admin, objects["TrainJob"], namespace)
    assert (status["progressPercentage"], status["estimatedRemainingSeconds"]) == (100, 0)
    metrics = {m["name"]: m["value"] for m in status["metrics"]}
    assert (metrics["step"], metrics["total_steps"]) == ("3", "3")
    assert float(metrics["loss"]) > 0 and float(metrics["tokens_per_second"]) > 0


def test_the_trainer_pod_with_its_token_passes_restricted_pod_security(admin, namespace):
    """The pod a TrainJob's runtime makes from the chart's patch (its token volume, the TrainJob's
    name in its environment) is valid and admitted where `restricted` is enforced."""
    restricted = f"{namespace}-rest"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    made = admin.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": restricted, "labels": labels}})  # fmt: skip
    assert made.status == 201, made.body
    objects = {o["kind"]: o for o in _chart_objects(restricted)}
    assert admin.create(objects["ServiceAccount"], restricted).status == 201
    trainer = objects["TrainJob"]["spec"]["trainer"]
    (patch,) = objects["TrainJob"]["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    spec = replicated["template"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    container |= {"image": trainer["image"], "command": trainer["command"], "args": trainer["args"]}
    container["env"] = trainer["env"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{RELEASE}-node-0-0"}, "spec": spec}
    answer = admin.create(pod, restricted, dry_run=True)
    assert answer.status == 201, answer.body.get("message")
    (token,) = [v for v in answer.body["spec"]["volumes"] if v["name"] == "trainjob-status-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["path"] == "token"
    # the token is the chart's (automountServiceAccountToken stays off): one volume at the account's path
    mounts = [m["mountPath"] for m in answer.body["spec"]["containers"][0]["volumeMounts"]]
    assert mounts.count("/var/run/secrets/kubernetes.io/serviceaccount") == 1
