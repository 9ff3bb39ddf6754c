"""Progress in the TrainJob's status.trainerStatus (motif/metrics/trainjob.py), against the real API
server of tests/deploy/controlplane.py: the chart's TrainJob, ServiceAccount, Role and RoleBinding
are rendered and created, the reporter runs with a bound token of that ServiceAccount, exactly as
the pod would (KUBERNETES_SERVICE_HOST/PORT, the token, the CA and the namespace in a service
account folder), and what the server holds afterwards is read back. A token without the Role's
permission is refused: one warning line, and the steps go on."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import pytest

from motif.deploy import render
from motif.metrics import names, trainjob

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
    with caplog.at_level(logging.WARNING, logger="motif.metrics.trainjob"):
        for step in range(6):
            _step(reporter, step)
            _wait(lambda n=step + 1: reporter.failed >= n)
        reporter.close()
    assert reporter.sent == 0 and reporter.failed == 6
    (line,) = [r.getMessage() for r in caplog.records]
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
        target = trainjob.Target(server, certifi.where(), str(sa / "token"), "ns", "job")
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
