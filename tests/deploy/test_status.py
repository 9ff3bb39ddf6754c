"""`motif status` against a real kube-apiserver (tests/deploy/controlplane.py).

The objects are what the chart rendered (real Helm), created on the server, with the status the
training operator, the Job controller and the kubelet would write set through the status
subresource (the plane runs none of them). Offline servers only for what a real one does not do:
never answer, trickle, answer garbage.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from motif import cli, kube, status
from motif_dev.deploy import render as r

# The kubernetes client calls urllib3 APIs that warn of their removal; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ts(ago: dt.timedelta) -> str:
    return (NOW - ago).isoformat().replace("+00:00", "Z")


def _pod(job: dict, rtype: str, index: int, ready: bool, restarts: int, phase: str = "Running") -> tuple[dict, dict]:
    template = copy.deepcopy(job["spec"]["pytorchReplicaSpecs"][rtype]["template"])
    name = f"{job['metadata']['name']}-{rtype.lower()}-{index}"
    labels = {
        **template["metadata"]["labels"],
        "training.kubeflow.org/job-name": job["metadata"]["name"],
        "training.kubeflow.org/replica-type": rtype.lower(),
        "training.kubeflow.org/replica-index": str(index),
    }
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": template["spec"]}
    state = {"running": {"startedAt": _ts(dt.timedelta(hours=1))}}
    if phase == "Succeeded":
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": _ts(dt.timedelta(hours=1))}}
    return pod, {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": "pytorch",
                "ready": ready,
                "restartCount": restarts,
                "image": "motif",
                "imageID": "",
                "started": ready,
                "state": state,
            }
        ],
    }


def _job_done(ago: dt.timedelta = dt.timedelta()) -> dict:
    """The status the Job controller writes on a Job that succeeded."""
    return {
        "startTime": _ts(ago + dt.timedelta(minutes=30)),
        "completionTime": _ts(ago),
        "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": _ts(ago)},
            {"type": "Complete", "status": "True", "lastTransitionTime": _ts(ago)},
        ],
    }


def _cluster(namespace: str) -> list[tuple[dict, dict | None]]:
    """Two stages: tiny stage 1 running (one restart), 102B stage 2 succeeded; plus noise. Each
    object with the status its controller would write (None: none)."""
    out: list[tuple[dict, dict | None]] = []
    s1 = r.objects(r.render(r.load_values(r.ROOT / "jobs/tiny/stage1-depth.yaml"), "motif-tiny-s1", namespace))
    s2 = r.objects(r.render(r.load_values(r.ROOT / "jobs/llama3-motif-102b/stage2-width.yaml"), "motif-s2", namespace))
    jobs = []
    for objs, age, conditions, replicas in (
        (s1, dt.timedelta(minutes=95), [("Created", "True"), ("Running", "True")], {"Master": {"active": 1}}),
        (
            s2,
            dt.timedelta(days=2, hours=3),
            [("Created", "True"), ("Running", "False"), ("Succeeded", "True")],
            {"Master": {"succeeded": 1}, "Worker": {"succeeded": 15}},
        ),
    ):
        for o in objs:
            if o["kind"] == "PyTorchJob":
                jobs.append(o)
                status = {
                    "conditions": [
                        {
                            "type": t,
                            "status": s,
                            "reason": f"PyTorchJob{t}",
                            "message": f"PyTorchJob {t.lower()}",
                            "lastUpdateTime": _ts(age - dt.timedelta(minutes=i)),
                            "lastTransitionTime": _ts(age - dt.timedelta(minutes=i)),
                        }
                        for i, (t, s) in enumerate(conditions)
                    ],
                    "replicaStatuses": replicas,
                }
                out.append((o, status))
            elif o["kind"] == "Job":  # growth and eval Jobs
                out.append((o, _job_done()))
            else:
                out.append((o, None))
    (job1, job2) = jobs
    out.append(_pod(job1, "Master", 0, ready=True, restarts=1))
    out.append(_pod(job2, "Master", 0, ready=False, restarts=0, phase="Succeeded"))
    out += [_pod(job2, "Worker", i, ready=False, restarts=2 if i == 3 else 0, phase="Succeeded") for i in range(15)]
    # Not motif's: must be filtered out by the label selector the client sends.
    other = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "labels": {"app": "other"}}}
    sa = next(o["metadata"]["name"] for o in s1 if o["kind"] == "ServiceAccount")
    other["spec"] = {"serviceAccountName": sa, "containers": [{"name": "c", "image": "x"}]}
    out.append((other, None))
    return out


@pytest.fixture
def kubeconfig(admin, namespace, cluster_kubeconfig) -> Path:
    """The two stages created in a fresh namespace; KUBECONFIG is the admin's, in that namespace."""
    for obj, state in _cluster(namespace):
        admin.put(obj, namespace, state)
    return cluster_kubeconfig(namespace)


def test_status_json_through_the_kubernetes_client(kubeconfig, control_plane, namespace, capsys):
    began = len(control_plane.requests())
    assert cli.main(["status", "--json"]) == 0
    stages = {s["stage"]: s for s in json.loads(capsys.readouterr().out)}
    assert set(stages) == {"tiny-s1-depth", "s2-width"}
    s1, s2 = stages["tiny-s1-depth"], stages["s2-width"]
    assert (s1["phase"], s1["replicas"], s1["ready"], s1["active"], s1["restarts"]) == ("Running", 1, 1, 1, 1)
    assert s1["grow"] == "Complete" and s1["release"] == "motif-tiny-s1"
    assert s1["checkpoint_dir"] == "/workspace/checkpoints/tiny-s1-depth"
    assert s1["input"] == "/workspace/checkpoints/tiny-s0-base/final"
    assert 0 <= s1["age_seconds"] < 120  # created by this test (the server sets creationTimestamp)
    assert (s2["phase"], s2["replicas"], s2["succeeded"], s2["failed"], s2["restarts"]) == ("Succeeded", 16, 16, 0, 2)
    assert s2["output"] == "/checkpoints/s2-width/final"
    assert s2["replica_types"] == {
        "Master": {"active": 0, "succeeded": 1, "failed": 0},
        "Worker": {"active": 0, "succeeded": 15, "failed": 0},
    }
    # The namespace came from the kubeconfig context; only motif's objects were asked for, only read.
    asked = control_plane.requests()[began:]
    assert len(asked) == 5, [e["requestURI"] for e in asked]  # pytorchjobs, trainjobs, pods, configmaps, jobs
    assert all(e["verb"] == "list" and e["objectRef"]["namespace"] == namespace for e in asked)
    assert all("labelSelector=app.kubernetes.io%2Fpart-of%3Dmotif" in e["requestURI"] for e in asked)


# Every Job of a stage is Complete: the eval Job too, when the stage file has one.
S2_EVAL = "Complete" if r.load_values(r.ROOT / "jobs/llama3-motif-102b/stage2-width.yaml")["motif"].get("eval") else "-"


def test_status_table_and_all_namespaces(kubeconfig, control_plane, namespace, capsys):
    began = len(control_plane.requests())
    assert cli.main(["status", "-A"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "STAGE",
        "RELEASE",
        "KIND",
        "PHASE",
        "READY",
        "ACTIVE",
        "SUCCEEDED",
        "FAILED",
        "RESTARTS",
        "AGE",
        "GROW",
        "EVAL",
        "SCORES",
        "CHECKPOINTS",
    ]
    rows = {line.split()[1]: line.split() for line in lines[1:] if line.split()[0] == namespace}
    assert rows["s2-width"][3:10] == ["PyTorchJob", "Succeeded", "0/16", "0", "16", "0", "2"]
    assert re.fullmatch(r"\d+s|\d+m(\d+s)?", rows["s2-width"][10])  # an age, kubectl style
    assert rows["s2-width"][11:] == ["Complete", S2_EVAL, "-", "/checkpoints/s2-width"]  # no eval pod reported
    assert rows["tiny-s1-depth"][4:7] == ["Running", "1/1", "1"]
    assert all(e["objectRef"].get("namespace") is None for e in control_plane.requests()[began:])


def test_status_in_an_empty_namespace(kubeconfig, capsys):
    assert cli.main(["status", "-n", "elsewhere"]) == 0
    assert capsys.readouterr().out.strip() == "No motif stages in namespace elsewhere."


def test_kubectl_plugin_entry_point(kubeconfig, namespace):
    """`kubectl motif status` runs the kubectl-motif console script from PATH."""
    plugin = Path(sys.executable).parent / "kubectl-motif"
    assert plugin.exists(), "kubectl-motif console script not installed (pip install -e .)"
    result = subprocess.run(
        [str(plugin), "status", "-n", namespace], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "tiny-s1-depth" in result.stdout and "s2-width" in result.stdout


def test_unreachable_api_server_is_a_clear_error(tmp_path, monkeypatch, capsys):
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me"}}],
    }
    (tmp_path / "kc").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["status"]) == 2
    assert "cannot reach the API server" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("conditions", "suspend", "phase"),
    [
        ([], False, "Pending"),
        ([], True, "Suspended"),
        ([("Created", "True", "t1"), ("Running", "True", "t2")], False, "Running"),
        ([("Created", "True", "t1"), ("Running", "False", "t2"), ("Restarting", "True", "t3")], False, "Restarting"),
        ([("Running", "True", "t2"), ("Failed", "True", "t3")], False, "Failed"),
        ([("Created", "True", "t1"), ("Succeeded", "True", "t3"), ("Running", "True", "t2")], False, "Succeeded"),
        ([("Created", "True", "t1"), ("Complete", "True", "t3")], False, "Succeeded"),
    ],
)
def test_job_phase_from_conditions(conditions, suspend, phase):
    job = {
        "spec": {"runPolicy": {"suspend": suspend}},
        "status": {"conditions": [{"type": t, "status": s, "lastTransitionTime": ts} for t, s, ts in conditions]},
    }
    assert status.job_phase(job)[0] == phase


def test_trainjob_counts_come_from_its_jobs_status():
    objs = r.objects(r.render(r.load_values(r.CHART / "ci" / "05-trainjob-values.yaml"), "motif-tj"))
    (job,) = [o for o in objs if o["kind"] == "TrainJob"]
    job["status"] = {
        "conditions": [{"type": "Created", "status": "True", "lastTransitionTime": _ts(dt.timedelta(hours=1))}],
        "jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0, "suspended": 0}],
    }
    (stage,) = status.collect([job], [], [o for o in objs if o["kind"] == "ConfigMap"], [])
    assert (stage.kind, stage.phase, stage.replicas, stage.active) == (
        "TrainJob",
        "Suspended",
        2,
        2,
    )  # Kueue has not admitted it
    assert stage.checkpoint_dir == "/checkpoints/ci-trainjob"


EVAL_STAGE = r.CHART / "ci" / "08-eval-katib-values.yaml"


def _eval_stage(namespace: str = "motif") -> tuple[list[dict], dict, dict, list[dict]]:
    """All objects of ci/08 (a stage with an eval Job), its PyTorchJob, eval Job and stage ConfigMap."""
    objs = r.objects(r.render(r.load_values(EVAL_STAGE), "motif-ev", namespace))
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    (ev,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "eval"]
    cms = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "motif-ev-stage"]
    return objs, job, ev, cms


SUCCEEDED = {"conditions": [{"type": "Succeeded", "status": "True", "lastTransitionTime": _ts(dt.timedelta())}]}


def _install(admin, namespace: str, objs: list[dict], states: dict[str, dict]) -> None:
    """Create `objs` (a cluster-scoped one another test made is reused), with the status of
    `states` by (kind, name)."""
    for obj in objs:
        if not admin.resource(obj["apiVersion"], obj["kind"])["namespaced"] and admin.get(obj).status == 200:
            continue
        admin.put(obj, namespace, states.get((obj["kind"], obj["metadata"]["name"])))


def test_the_eval_job_state_is_shown(admin, namespace, cluster_kubeconfig, capsys):
    """The eval Job of a stage (ci/08 renders one) is joined by release, like the growth Job."""
    objs, job, ev, _ = _eval_stage(namespace)
    running = {"active": 1, "ready": 0, "startTime": _ts(dt.timedelta())}
    _install(
        admin,
        namespace,
        objs,
        {("PyTorchJob", job["metadata"]["name"]): SUCCEEDED, ("Job", ev["metadata"]["name"]): running},
    )
    cluster_kubeconfig(namespace)
    assert cli.main(["status", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)
    assert (stage["phase"], stage["grow"], stage["eval"]) == ("Succeeded", "-", "Running")


def _eval_pod(ev: dict, suffix: str, exit_code: int, message: str | None, finished_ago: dt.timedelta) -> tuple:
    """A pod of the eval Job and the status the kubelet leaves on it: the eval container
    terminated, with the termination message it copied from terminationMessagePath (or the log
    tail, on an error)."""
    template = copy.deepcopy(ev["spec"]["template"])
    name = ev["metadata"]["name"]
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": _ts(finished_ago + dt.timedelta(minutes=30)),
        "finishedAt": _ts(finished_ago),
    }
    if message is not None:
        terminated["message"] = message
    labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name, "job-name": name}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-{suffix}", "labels": labels}}
    pod["spec"] = template["spec"]
    state = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": "eval",
                "ready": False,
                "restartCount": 0,
                "image": "motif",
                "imageID": "",
                "state": {"terminated": terminated},
            }
        ],
    }
    return pod, state


def _report(tasks: dict, heldout: dict) -> str:
    """The termination message as `motif eval` writes it."""
    from motif.eval.results import termination_message

    return termination_message({"stage": "ci-eval", "tasks": tasks, "heldout": heldout})


def _status_of(admin, namespace, cluster_kubeconfig, capsys, pods: list[tuple]) -> tuple[dict, list[str]]:
    """(the stage of `motif status --json`, the table row of `motif status`) with ci/08 installed,
    training succeeded, eval Complete, and the eval pods `pods`."""
    objs, job, ev, _ = _eval_stage(namespace)
    _install(
        admin,
        namespace,
        objs,
        {("PyTorchJob", job["metadata"]["name"]): SUCCEEDED, ("Job", ev["metadata"]["name"]): _job_done()},
    )
    for pod, state in pods:
        admin.put(pod, namespace, state)
    cluster_kubeconfig(namespace)
    assert cli.main(["status", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)
    assert cli.main(["status"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    return stage, dict(zip(header.split(), row.split(), strict=True))


@pytest.fixture
def status_of(admin, namespace, cluster_kubeconfig, capsys):
    return lambda pods: _status_of(admin, namespace, cluster_kubeconfig, capsys, pods)


def test_the_scores_of_the_eval_pod_are_shown(status_of, namespace):
    """The newest eval pod that exited 0 with a readable report wins; later failed attempts (one's
    message is the log tail, FallbackToLogsOnError; one reported, then its push failed) and an
    older success do not."""
    _, _, ev, _ = _eval_stage(namespace)
    old = {"demo_kmmlu": {"acc": 0.25, "acc_stderr": 0.04}}
    new = {"demo_kmmlu": {"acc": 0.5, "acc_stderr": 0.05}, "demo_mmlu": {"acc": 0.375, "acc_stderr": 0.05}}
    pods = [
        _eval_pod(ev, "old", 0, _report(old, {"ko": 1.9, "en": 1.8}), dt.timedelta(hours=5)),
        _eval_pod(ev, "new", 0, _report(new, {"ko": 0.6124, "en": 0.5506}), dt.timedelta(hours=2)),
        _eval_pod(ev, "retry", 1, "Traceback (most recent call last):\n  ...\nOSError: disk full", dt.timedelta()),
        # Scores written, then the push refused (exit 1): not a finished evaluation.
        _eval_pod(ev, "push", 1, _report(old, {"ko": 3.0}), dt.timedelta(minutes=5)),
    ]
    stage, row = status_of(pods)
    assert stage["eval"] == "Complete"
    assert stage["scores"] == new and stage["heldout"] == {"ko": 0.6124, "en": 0.5506}
    assert stage["scores_truncated"] is False
    assert (row["EVAL"], row["SCORES"]) == ("Complete", "ko=0.612,en=0.551,tasks=2")
    assert row["CHECKPOINTS"] == stage["checkpoint_dir"]


def test_a_cut_report_says_so(status_of, namespace):
    _, _, ev, _ = _eval_stage(namespace)
    tasks = {f"kmmlu_subject_{i:03d}": {"acc": 0.25 + i / 1000, "acc_stderr": 0.0123456789} for i in range(200)}
    stage, row = status_of([_eval_pod(ev, "a", 0, _report(tasks, {}), dt.timedelta())])
    assert stage["scores_truncated"] is True and 0 < len(stage["scores"]) < 200
    assert row["SCORES"] == f"tasks={len(stage['scores'])}+"


def test_no_report_is_a_dash(status_of):
    stage, row = status_of([])
    assert (stage["scores"], stage["heldout"], row["SCORES"]) == (None, None, "-")


GARBAGE_MESSAGES = {
    "not-json": "motif eval: wrote summary.json",
    "cut-json": '{"stage":"s","scores":{"mmlu":{"acc":0.5',
    "a-list": "[1, 2]",
    "no-scores": '{"stage": "s", "heldout": {"ko": 0.6}}',
    "scores-a-string": '{"scores": "high"}',
    "metric-a-string": '{"scores": {"mmlu": {"acc": "0.5"}}}',
    "metric-a-bool": '{"scores": {"mmlu": {"acc": true}}}',
    "heldout-a-list": '{"scores": {}, "heldout": [0.6]}',
    "empty": "",
    "binary": "\x00\x01\ufffd",
}


@pytest.mark.parametrize("message", GARBAGE_MESSAGES.values(), ids=GARBAGE_MESSAGES.keys())
def test_a_garbage_termination_message_is_a_dash(message):
    _, job, ev, cms = _eval_stage()
    ev["status"] = _job_done()
    pod, state = _eval_pod(ev, "a", 0, message, dt.timedelta())
    pod["metadata"]["namespace"] = "motif"
    (stage,) = status.collect([job], [{**pod, "status": state}], cms, [], eval_jobs=[ev])
    assert (stage.eval, stage.scores, stage.heldout) == ("Complete", None, None)
    assert status.format_table([stage]).splitlines()[1].split()[-2] == "-"


def test_a_garbage_termination_message_through_the_api_is_a_dash(status_of, namespace):
    _, _, ev, _ = _eval_stage(namespace)
    pods = [_eval_pod(ev, "a", 0, "{not json", dt.timedelta()), _eval_pod(ev, "b", 0, None, dt.timedelta())]
    stage, row = status_of(pods)
    assert (stage["scores"], stage["heldout"], row["SCORES"], row["EVAL"]) == (None, None, "-", "Complete")


def _silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts connections and never answers: an API server that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []

    def accept():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return sock, held


def test_a_server_that_never_answers_is_one_line(kubeconfig_for, monkeypatch, capsys):
    sock, held = _silent_server()
    monkeypatch.setattr(kube, "READ_TIMEOUT_S", 1.0)
    kubeconfig_for(f"http://127.0.0.1:{sock.getsockname()[1]}")
    try:
        started = time.monotonic()
        assert cli.main(["status"]) == 2
        elapsed = time.monotonic() - started
    finally:
        sock.close()
        for conn in held:
            conn.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach the API server" in err and "timed out" in err, err
    assert "Traceback" not in err
    assert elapsed < 10, "one read timeout, no retries"


GARBAGE_KUBECONFIGS = {
    "not-yaml": "clusters: [\n  - {name: x",
    "a-list": "- a\n- b\n",
    "a-number": "42\n",
    "no-contexts": "apiVersion: v1\nkind: Config\nclusters: []\n",
    "context-not-a-mapping": "kind: Config\ncurrent-context: c\ncontexts: [c]\nclusters: []\nusers: []\n",
    "empty": "",
    "binary": "\x00\x01\x02\xff",
}


@pytest.mark.parametrize("text", GARBAGE_KUBECONFIGS.values(), ids=GARBAGE_KUBECONFIGS.keys())
def test_a_garbage_kubeconfig_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, text):
    kc = tmp_path / "kc"
    kc.write_text(text, errors="surrogateescape")
    before = kc.read_bytes()
    monkeypatch.setenv("KUBECONFIG", str(kc))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(kc) in err and "Traceback" not in err, err
    assert kc.read_bytes() == before


def test_an_insecure_kubeconfig_warns_once_in_one_line(kubeconfig, control_plane, namespace):
    """With insecure-skip-tls-verify urllib3 warns on every request (five per run): motif says it
    once, in one line. A subprocess, so the warning filters are the interpreter's, as for a user."""
    cfg = yaml.safe_load(kubeconfig.read_text())
    del cfg["clusters"][0]["cluster"]["certificate-authority"]
    cfg["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    kubeconfig.write_text(yaml.safe_dump(cfg))
    result = subprocess.run(
        [sys.executable, "-m", "motif", "status"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert result.returncode == 0, result.stderr
    assert "tiny-s1-depth" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TLS verification" in lines[0] and "insecure-skip-tls-verify" in lines[0], lines
    assert "InsecureRequestWarning" not in result.stderr


# ---- RBAC: what status reads, as a ServiceAccount with exactly that ----------------------------

# The reads of `motif status` in one namespace (docs/deployment.md lists them).
STATUS_RULES = [
    {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["list"]},
    {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["list"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
]


def _reader_token(admin, namespace: str, rules: list[dict]) -> str:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "status-reader"}}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "status-reader"}}
    role["rules"] = rules
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "status-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "status-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "status-reader", "namespace": namespace}],
    }
    for obj in (sa, role, binding):
        admin.put(obj, namespace)
    return admin.token(namespace, "status-reader")


def test_status_with_a_service_account_allowed_its_reads(kubeconfig, admin, namespace, cluster_kubeconfig, capsys):
    cluster_kubeconfig(namespace, token=_reader_token(admin, namespace, STATUS_RULES))
    assert cli.main(["status", "--json"]) == 0
    assert {s["stage"] for s in json.loads(capsys.readouterr().out)} == {"tiny-s1-depth", "s2-width"}


def test_a_refused_read_names_verb_resource_and_namespace(kubeconfig, admin, namespace, cluster_kubeconfig, capsys):
    without_jobs = [rule for rule in STATUS_RULES if rule["apiGroups"] != ["batch"]]
    cluster_kubeconfig(namespace, token=_reader_token(admin, namespace, without_jobs))
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"refused to list jobs.batch in namespace {namespace}: 403 Forbidden" in err, err
    assert "system:serviceaccount" in err  # who was refused, from the server's message


# ---- a stage whose training job CRD is not installed -------------------------------------------


@pytest.fixture
def without_trainjob_crd(admin):
    """The TrainJob CRD removed for one test, installed again after it."""
    from .conftest import crds, install_crds

    (crd,) = [c for c in crds() if c["metadata"]["name"] == "trainjobs.trainer.kubeflow.org"]
    assert admin.delete(crd).status == 200
    deadline = time.monotonic() + 30
    while admin.call("GET", "/apis/trainer.kubeflow.org/v1alpha1/trainjobs").status != 404:
        assert time.monotonic() < deadline, "the TrainJob CRD was not removed"
        time.sleep(0.2)
    admin._resources.clear()
    yield
    install_crds(admin, [crd])
    admin._resources.clear()


def test_the_jobs_of_a_stage_show_when_its_job_crd_is_missing(
    without_trainjob_crd, admin, namespace, cluster_kubeconfig, capsys
):
    objs = r.objects(r.render(r.load_values(r.CHART / "ci" / "05-trainjob-values.yaml"), "motif-tj", namespace))
    assert any(o["kind"] == "TrainJob" for o in objs)
    running = {"active": 1, "ready": 0, "startTime": _ts(dt.timedelta())}
    for obj in objs:
        if obj["kind"] == "TrainJob":  # refused: its CRD is gone
            path = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs"
            assert admin.call("POST", path, obj).status == 404
        else:
            admin.put(obj, namespace, running if obj["kind"] == "Job" else None)
    cluster_kubeconfig(namespace)
    assert cli.main(["status", "--json"]) == 0
    captured = capsys.readouterr()
    (stage,) = json.loads(captured.out)
    assert (stage["release"], stage["kind"], stage["phase"], stage["grow"]) == ("motif-tj", "-", "NoJob", "Running")
    assert "trainjobs.trainer.kubeflow.org not installed" in stage["message"]
    assert stage["checkpoint_dir"] == "/checkpoints/ci-trainjob"
    assert "CRD trainjobs.trainer.kubeflow.org not installed" in captured.err
    assert cli.main(["status"]) == 0
    assert "NoJob" in capsys.readouterr().out


# ---- what a real server does not do: trickle, answer garbage -----------------------------------


def _serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Trickle(BaseHTTPRequestHandler):
    """Answers 200 with a long body, one byte every 0.2 s: never idle long enough for a read timeout."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return


class _Garbage(BaseHTTPRequestHandler):
    """Answers 200 with a body that is not JSON (a proxy's error page, a cut answer)."""

    body = b'{"kind": "PodList", "items": [{"metadata": '

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def test_a_trickling_server_ends_at_the_overall_deadline(kubeconfig_for, capsys):
    server = _serve(_Trickle)
    kubeconfig_for(f"http://127.0.0.1:{server.server_port}")
    try:
        started = time.monotonic()
        assert cli.main(["status", "--timeout", "2"]) == 2
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "did not finish answering within 2s" in err and f"127.0.0.1:{server.server_port}" in err, err
    assert elapsed < 6, elapsed


@pytest.mark.parametrize("body", [b'{"kind": "PodList", "items": [{"metadata": ', b"<html>bad gateway</html>", b"[]"])
def test_a_malformed_answer_is_one_line_and_exit_2(kubeconfig_for, capsys, body):
    handler = type("Garbage", (_Garbage,), {"body": body})
    server = _serve(handler)
    kubeconfig_for(f"http://127.0.0.1:{server.server_port}")
    try:
        assert cli.main(["status"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "/apis/kubeflow.org/v1/namespaces/motif/pytorchjobs" in err and "JSON" in err, err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_timeout_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["status", "--timeout", value])
    assert exit.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_a_large_answer_is_joined_in_linear_time():
    """3,000 stages with 30,000 pods: joining pods to jobs by scanning every pod per job takes
    minutes; indexed, well under a second (the bound leaves room for a loaded machine)."""
    jobs, pods = [], []
    for i in range(3000):
        meta = {"namespace": "m", "name": f"j{i}", "labels": {"app.kubernetes.io/instance": f"r{i}"}}
        jobs.append({"kind": "PyTorchJob", "metadata": meta, "spec": {"pytorchReplicaSpecs": {}}})
        for k in range(10):
            labels = {"app.kubernetes.io/instance": f"r{i}", "app.kubernetes.io/component": "trainer"}
            pods.append({"metadata": {"namespace": "m", "name": f"p{i}-{k}", "labels": labels}, "status": {}})
    started = time.monotonic()
    stages = status.collect(jobs, pods, [], [])
    assert time.monotonic() - started < 10
    assert len(stages) == 3000 and all(s.replicas == 0 for s in stages)
