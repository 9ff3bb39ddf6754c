"""`motif status` against a small fake Kubernetes API server on 127.0.0.1 (tests/deploy/conftest.py).

The server answers the list calls with objects the chart rendered (real Helm), given the status
the training operator and the kubelet would add. The real kubernetes client code path runs: the
kubeconfig, the HTTP requests with their label selectors, and the deserialisation.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from motif import cli, status
from motif.deploy import render as r

# The kubernetes client calls urllib3 APIs that warn of their removal; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ts(ago: dt.timedelta) -> str:
    return (NOW - ago).isoformat().replace("+00:00", "Z")


def _pod(job: dict, rtype: str, index: int, ready: bool, restarts: int, phase: str = "Running") -> dict:
    template = copy.deepcopy(job["spec"]["pytorchReplicaSpecs"][rtype]["template"])
    name = f"{job['metadata']['name']}-{rtype.lower()}-{index}"
    labels = {
        **template["metadata"]["labels"],
        "training.kubeflow.org/job-name": job["metadata"]["name"],
        "training.kubeflow.org/replica-type": rtype.lower(),
        "training.kubeflow.org/replica-index": str(index),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "motif",
            "labels": labels,
            "creationTimestamp": _ts(dt.timedelta(hours=1)),
        },
        "spec": template["spec"],
        "status": {
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
                }
            ],
        },
    }


def _cluster() -> dict[str, list[dict]]:
    """Two stages: tiny stage 1 running (one restart), 102B stage 2 succeeded; plus noise."""
    out: dict[str, list[dict]] = {"pytorchjobs": [], "pods": [], "configmaps": [], "jobs": []}
    s1 = r.objects(r.render(r.load_values(r.ROOT / "jobs/tiny/stage1-depth.yaml"), "motif-tiny-s1"))
    s2 = r.objects(r.render(r.load_values(r.ROOT / "jobs/llama3-motif-102b/stage2-width.yaml"), "motif-s2"))
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
            o["metadata"]["creationTimestamp"] = _ts(age)
            o["metadata"]["uid"] = f"uid-{o['metadata']['name']}"
        (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
        job["status"] = {
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": f"PyTorchJob{t}",
                    "message": f"PyTorchJob {t.lower()}",
                    "lastTransitionTime": _ts(age - dt.timedelta(minutes=i)),
                }
                for i, (t, s) in enumerate(conditions)
            ],
            "replicaStatuses": replicas,
        }
        out["pytorchjobs"].append(job)
        out["configmaps"] += [o for o in objs if o["kind"] == "ConfigMap"]
        for grow in [o for o in objs if o["kind"] == "Job"]:  # growth and eval Jobs
            grow["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            out["jobs"].append(grow)
    (job1, job2) = out["pytorchjobs"]
    out["pods"] += [_pod(job1, "Master", 0, ready=True, restarts=1)]
    out["pods"] += [_pod(job2, "Master", 0, ready=False, restarts=0, phase="Succeeded")]
    out["pods"] += [
        _pod(job2, "Worker", i, ready=False, restarts=2 if i == 3 else 0, phase="Succeeded") for i in range(15)
    ]
    # Not motif's: must be filtered out by the label selector the client sends.
    out["pods"].append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "other", "namespace": "motif", "labels": {"app": "other"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
    )
    return out


ROUTES = {
    "pytorchjobs": ("kubeflow.org", "pytorchjobs"),
    "pods": ("", "pods"),
    "configmaps": ("", "configmaps"),
    "jobs": ("batch", "jobs"),
}


@pytest.fixture
def kubeconfig(fake_api) -> Path:
    global NOW
    NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # ages are asserted against it
    return fake_api({ROUTES[k]: v for k, v in _cluster().items()})


def test_status_json_through_the_kubernetes_client(kubeconfig, api_requests, capsys):
    assert cli.main(["status", "--json"]) == 0
    stages = {s["stage"]: s for s in json.loads(capsys.readouterr().out)}
    assert set(stages) == {"tiny-s1-depth", "s2-width"}
    s1, s2 = stages["tiny-s1-depth"], stages["s2-width"]
    assert (s1["phase"], s1["replicas"], s1["ready"], s1["active"], s1["restarts"]) == ("Running", 1, 1, 1, 1)
    assert s1["grow"] == "Complete" and s1["release"] == "motif-tiny-s1"
    assert s1["checkpoint_dir"] == "/workspace/checkpoints/tiny-s1-depth"
    assert s1["input"] == "/workspace/checkpoints/tiny-s0-base/final"
    assert 95 * 60 <= s1["age_seconds"] < 96 * 60
    assert (s2["phase"], s2["replicas"], s2["succeeded"], s2["failed"], s2["restarts"]) == ("Succeeded", 16, 16, 0, 2)
    assert s2["output"] == "/checkpoints/s2-width/final"
    assert s2["replica_types"] == {
        "Master": {"active": 0, "succeeded": 1, "failed": 0},
        "Worker": {"active": 0, "succeeded": 15, "failed": 0},
    }
    # The namespace came from the kubeconfig context; only motif's objects were asked for.
    listed = [q for q in api_requests if "/namespaces/motif/" in q]
    assert len(listed) == len(api_requests) == 5  # pytorchjobs, trainjobs, pods, configmaps, jobs
    assert all("labelSelector=app.kubernetes.io%2Fpart-of%3Dmotif" in q for q in api_requests)


# The fake cluster marks every Job of a stage Complete: the eval Job too, when the stage file has one.
S2_EVAL = "Complete" if r.load_values(r.ROOT / "jobs/llama3-motif-102b/stage2-width.yaml")["motif"].get("eval") else "-"


def test_status_table_and_all_namespaces(kubeconfig, api_requests, capsys):
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
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["s2-width"][3:] == [
        "PyTorchJob",
        "Succeeded",
        "0/16",
        "0",
        "16",
        "0",
        "2",
        "2d3h",
        "Complete",
        S2_EVAL,
        "-",  # no eval pod has reported scores
        "/checkpoints/s2-width",
    ]
    assert rows["tiny-s1-depth"][4:7] == ["Running", "1/1", "1"]
    assert all("/namespaces/" not in q for q in api_requests)


def test_status_in_an_empty_namespace(kubeconfig, capsys):
    assert cli.main(["status", "-n", "elsewhere"]) == 0
    assert capsys.readouterr().out.strip() == "No motif stages in namespace elsewhere."


def test_kubectl_plugin_entry_point(kubeconfig):
    """`kubectl motif status` runs the kubectl-motif console script from PATH."""
    plugin = Path(sys.executable).parent / "kubectl-motif"
    assert plugin.exists(), "kubectl-motif console script not installed (pip install -e .)"
    result = subprocess.run(
        [str(plugin), "status", "-n", "motif"], capture_output=True, text=True, check=False, timeout=120
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


def test_the_eval_job_state_is_shown(fake_api, capsys):
    """The eval Job of a stage (ci/08 renders one) is joined by release, like the growth Job."""
    objs = r.objects(r.render(r.load_values(r.CHART / "ci" / "08-eval-katib-values.yaml"), "motif-ev"))
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    (ev,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "eval"]
    job["status"] = {"conditions": [{"type": "Succeeded", "status": "True", "lastTransitionTime": _ts(dt.timedelta())}]}
    ev["status"] = {"active": 1}
    cms = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "motif-ev-stage"]
    fake_api(
        {("kubeflow.org", "pytorchjobs"): [job], ("", "pods"): [], ("", "configmaps"): cms, ("batch", "jobs"): [ev]}
    )
    assert cli.main(["status", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)
    assert (stage["phase"], stage["grow"], stage["eval"]) == ("Succeeded", "-", "Running")


def _eval_stage() -> tuple[dict, dict, list[dict]]:
    """The PyTorchJob, eval Job and stage ConfigMap of ci/08 (a stage with an eval Job), both done."""
    objs = r.objects(r.render(r.load_values(r.CHART / "ci" / "08-eval-katib-values.yaml"), "motif-ev"))
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    (ev,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "eval"]
    job["status"] = {"conditions": [{"type": "Succeeded", "status": "True", "lastTransitionTime": _ts(dt.timedelta())}]}
    ev["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    cms = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "motif-ev-stage"]
    return job, ev, cms


def _eval_pod(ev: dict, suffix: str, exit_code: int, message: str | None, finished_ago: dt.timedelta) -> dict:
    """A pod of the eval Job as the kubelet leaves it: the eval container terminated, with the
    termination message it copied from terminationMessagePath (or the log tail, on an error)."""
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
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{suffix}",
            "namespace": "motif",
            "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name, "job-name": name},
            "creationTimestamp": _ts(finished_ago + dt.timedelta(minutes=31)),
        },
        "spec": template["spec"],
        "status": {
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
        },
    }


def _report(tasks: dict, heldout: dict) -> str:
    """The termination message as `motif eval` writes it."""
    from motif.eval.results import termination_message

    return termination_message({"stage": "ci-eval", "tasks": tasks, "heldout": heldout})


def _status_of(fake_api, capsys, job: dict, ev: dict, cms: list[dict], pods: list[dict]) -> tuple[dict, list[str]]:
    """(the stage of `motif status --json`, the table row of `motif status`) against the fake API."""
    fake_api(
        {("kubeflow.org", "pytorchjobs"): [job], ("", "pods"): pods, ("", "configmaps"): cms, ("batch", "jobs"): [ev]}
    )
    assert cli.main(["status", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)
    assert cli.main(["status"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    return stage, dict(zip(header.split(), row.split(), strict=True))


def test_the_scores_of_the_eval_pod_are_shown(fake_api, capsys):
    """The newest eval pod that exited 0 with a readable report wins; later failed attempts (one's
    message is the log tail, FallbackToLogsOnError; one reported, then its push failed) and an
    older success do not."""
    job, ev, cms = _eval_stage()
    old = {"demo_kmmlu": {"acc": 0.25, "acc_stderr": 0.04}}
    new = {"demo_kmmlu": {"acc": 0.5, "acc_stderr": 0.05}, "demo_mmlu": {"acc": 0.375, "acc_stderr": 0.05}}
    pods = [
        _eval_pod(ev, "old", 0, _report(old, {"ko": 1.9, "en": 1.8}), dt.timedelta(hours=5)),
        _eval_pod(ev, "new", 0, _report(new, {"ko": 0.6124, "en": 0.5506}), dt.timedelta(hours=2)),
        _eval_pod(ev, "retry", 1, "Traceback (most recent call last):\n  ...\nOSError: disk full", dt.timedelta()),
        # Scores written, then the push refused (exit 1): not a finished evaluation.
        _eval_pod(ev, "push", 1, _report(old, {"ko": 3.0}), dt.timedelta(minutes=5)),
    ]
    stage, row = _status_of(fake_api, capsys, job, ev, cms, pods)
    assert stage["eval"] == "Complete"
    assert stage["scores"] == new and stage["heldout"] == {"ko": 0.6124, "en": 0.5506}
    assert stage["scores_truncated"] is False
    assert (row["EVAL"], row["SCORES"]) == ("Complete", "ko=0.612,en=0.551,tasks=2")
    assert row["CHECKPOINTS"] == stage["checkpoint_dir"]


def test_a_cut_report_says_so_and_no_report_is_a_dash(fake_api, capsys):
    job, ev, cms = _eval_stage()
    tasks = {f"kmmlu_subject_{i:03d}": {"acc": 0.25 + i / 1000, "acc_stderr": 0.0123456789} for i in range(200)}
    stage, row = _status_of(fake_api, capsys, job, ev, cms, [_eval_pod(ev, "a", 0, _report(tasks, {}), dt.timedelta())])
    assert stage["scores_truncated"] is True and 0 < len(stage["scores"]) < 200
    assert row["SCORES"] == f"tasks={len(stage['scores'])}+"
    stage, row = _status_of(fake_api, capsys, job, ev, cms, [])
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
    job, ev, cms = _eval_stage()
    (stage,) = status.collect([job], [_eval_pod(ev, "a", 0, message, dt.timedelta())], cms, [], eval_jobs=[ev])
    assert (stage.eval, stage.scores, stage.heldout) == ("Complete", None, None)
    assert status.format_table([stage]).splitlines()[1].split()[-2] == "-"


def test_a_garbage_termination_message_through_the_api_is_a_dash(fake_api, capsys):
    job, ev, cms = _eval_stage()
    pods = [_eval_pod(ev, "a", 0, "{not json", dt.timedelta()), _eval_pod(ev, "b", 0, None, dt.timedelta())]
    stage, row = _status_of(fake_api, capsys, job, ev, cms, pods)
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
    monkeypatch.setattr(status, "READ_TIMEOUT_S", 1.0)
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


def test_an_insecure_kubeconfig_warns_once_in_one_line(fake_https_api):
    """With insecure-skip-tls-verify urllib3 warns on every request (five per run): motif says it
    once, in one line. A subprocess, so the warning filters are the interpreter's, as for a user."""
    kubeconfig = fake_https_api({ROUTES[k]: v for k, v in _cluster().items()})
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
