"""`motif status`: the growth stages running on a cluster, one line per stage.

Reads what the motif-stage chart created (objects labelled `app.kubernetes.io/part-of=motif`):
the PyTorchJob (or TrainJob) of each stage and its phase from the job conditions, its pods (ready,
restarts), the growth and eval Jobs, the scores of the eval pod (its container's termination
message: the volume with summary.json is not readable from here), and where the stage writes its
checkpoints (the chart's `motif/*` annotations, else the stage ConfigMap). Also runs as
`kubectl motif status`.

Every API call has a connect and a read timeout and is not retried, and all of them share one
deadline (--timeout): a server that never answers, or trickles its answer, ends the command with
one line, not a hang (motif/kube.py). A stage whose training job CRD is not installed is still
shown, with its growth and eval Jobs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from motif import kube

HELP = "Stages on the cluster: job phase, replicas, restarts, age, eval scores, checkpoint location"
DESCRIPTION = """\
Show every motif stage installed in a namespace: the phase of its PyTorchJob (from the job's
conditions), pods ready / active / succeeded / failed, container restarts, age, the growth and eval
Jobs, the eval scores, and where the stage writes its checkpoints and final model.

SCORES: the held-out bits per byte by language and the number of benchmark tasks scored (tasks=N+
when the report was cut to fit), from the termination message of the newest eval pod that finished
(exit 0); `-` when there is none or it is unreadable. --json carries every score.

A stage whose training job CRD is not installed is shown with kind -, phase NoJob and its Jobs.

Uses the current kubeconfig context (KUBECONFIG, ~/.kube/config) or the in-cluster service account,
and reads only (list pods, configmaps, jobs, pytorchjobs, trainjobs); a refused read is one line
naming the verb, resource and namespace. All calls share one deadline (--timeout).
"""

PART_OF = "app.kubernetes.io/part-of=motif"
EVAL_CONTAINER = "eval"  # the container of the chart's eval Job that writes the termination message
TERMINAL = ("Succeeded", "Failed")


@dataclass
class StageStatus:
    """One stage as `motif status` reports it."""

    namespace: str
    release: str
    stage: str
    kind: str
    phase: str
    replicas: int = 0
    ready: int = 0
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    restarts: int = 0
    age_seconds: int | None = None
    grow: str = "-"
    eval: str = "-"
    scores: dict[str, dict[str, float]] | None = None  # {task: {metric: value}}, None: no report read
    heldout: dict[str, float] | None = None  # {language: bits_per_byte}
    scores_truncated: bool = False  # the report dropped tasks to fit the 4096-byte message
    checkpoint_dir: str | None = None
    output: str | None = None
    input: str | None = None
    message: str = ""
    replica_types: dict[str, dict[str, int]] = field(default_factory=dict)


# ---- pure functions over API objects (dicts, as the API server returns them) ------------------


def job_phase(job: dict[str, Any]) -> tuple[str, str]:
    """(phase, message) of a PyTorchJob/TrainJob from its conditions: a terminal condition wins
    (TrainJob says Complete where PyTorchJob says Succeeded), else the most recent condition whose
    status is True."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = [c for c in conditions if str(c.get("status")) == "True"]
    for c in true:
        if c.get("type") in TERMINAL:
            return c["type"], c.get("message", "")
        if c.get("type") == "Complete":
            return "Succeeded", c.get("message", "")
    spec = job.get("spec") or {}
    suspended = (spec.get("runPolicy") or {}).get("suspend") or spec.get("suspend")
    if suspended and (not true or true[-1].get("type") != "Running"):
        return "Suspended", "waiting for admission (Kueue)"
    if not true:
        return "Pending", ""
    latest = max(enumerate(true), key=lambda ic: (ic[1].get("lastTransitionTime") or "", ic[0]))[1]
    return latest.get("type", "Unknown"), latest.get("message", "")


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and str(c.get("status")) == "True" for c in conditions)


def _restarts(pod: dict[str, Any]) -> int:
    status = pod.get("status") or {}
    statuses = (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def _age(meta: dict[str, Any], now: dt.datetime) -> int | None:
    created = _time(meta.get("creationTimestamp"))
    if created is None:
        return None
    return max(0, int((now - created).total_seconds()))


def _replicas(job: dict[str, Any]) -> int:
    spec = job.get("spec") or {}
    if "pytorchReplicaSpecs" in spec:
        return sum(int(rs.get("replicas", 1)) for rs in spec["pytorchReplicaSpecs"].values())
    return int((spec.get("trainer") or {}).get("numNodes") or 1)


def _batch_job_state(job: dict[str, Any] | None) -> str:
    """State of a growth or eval Job: Complete, Failed, Suspended, Running or Pending."""
    if job is None:
        return "-"
    status = job.get("status") or {}
    for c in status.get("conditions") or []:
        if str(c.get("status")) == "True" and c.get("type") in ("Complete", "Failed"):
            return c["type"]
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended"
    if status.get("active"):
        return "Running"
    return "Pending"


_grow_state = _batch_job_state


def _component(obj: dict[str, Any]) -> str:
    """The chart's component label of an object (trainer, grow, eval, stage-config)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component", "")


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)  # comparable with the API's times


def parse_scores(message: Any) -> dict[str, Any] | None:
    """The report `motif eval` writes as its termination message, checked: `{"scores": {task:
    {metric: number}}, "heldout": {language: number}, "truncated": bool}`, or None for anything else
    (no message, the log tail FallbackToLogsOnError puts there, hand-written garbage)."""
    if not isinstance(message, str) or not message.strip():
        return None
    try:
        report = json.loads(message)
    except ValueError:
        return None
    if not isinstance(report, dict) or "scores" not in report:
        return None
    scores, heldout = report["scores"], report.get("heldout", {})
    if not isinstance(scores, dict) or not _numbers(heldout) or not all(_numbers(m) for m in scores.values()):
        return None
    return {"scores": scores, "heldout": heldout, "truncated": report.get("truncated") is True}


def _numbers(values: Any) -> bool:
    return isinstance(values, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()
    )


def eval_report(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The scores of the newest eval pod whose eval container exited 0 with a readable report; a
    failed attempt's pod (the Job retries) or a garbage message does not hide an earlier success."""
    found = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") != EVAL_CONTAINER or terminated.get("exitCode") != 0:
                continue
            report = parse_scores(terminated.get("message"))
            when = _time(terminated.get("finishedAt")) or _time(meta.get("creationTimestamp"))
            if report is not None:
                found.append((when or dt.datetime.min.replace(tzinfo=dt.UTC), report))
    return max(found, key=lambda f: f[0])[1] if found else None


def _paths_from_configmap(cm: dict[str, Any] | None) -> dict[str, str | None]:
    if not cm:
        return {}
    try:
        motif = (yaml.safe_load((cm.get("data") or {}).get("stage.yaml") or "") or {}).get("motif") or {}
    except yaml.YAMLError:
        return {}
    return {
        "checkpoint_dir": (motif.get("checkpoint") or {}).get("dir"),
        "output": motif.get("output"),
        "input": motif.get("input"),
    }


def collect(
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    configmaps: list[dict[str, Any]],
    grow_jobs: list[dict[str, Any]],
    now: dt.datetime | None = None,
    eval_jobs: list[dict[str, Any]] | None = None,
    missing_crds: list[str] | None = None,
) -> list[StageStatus]:
    """One StageStatus per training job, joined with its pods, growth and eval Jobs and stage
    ConfigMap by the release label (`app.kubernetes.io/instance`); each list is indexed once, so
    the join is linear in the size of the answer. A release with Jobs or a stage ConfigMap but no
    training job (its CRD missing, or the job deleted) is shown too, as kind `-`."""
    now = now or dt.datetime.now(dt.UTC)
    cms = {_release_of(c): c for c in configmaps}
    grows = {_release_of(j): j for j in grow_jobs}
    evals = {_release_of(j): j for j in eval_jobs or []}
    pods_of: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in pods:
        pods_of.setdefault(_release_of(pod), []).append(pod)
    out = [_stage(job, pods_of.get(_release_of(job), []), cms, grows, evals, now) for job in jobs]
    with_job = {_release_of(j) for j in jobs}
    why = f"no training job (CRD {', '.join(missing_crds)} not installed)" if missing_crds else "no training job"
    for key in sorted((set(grows) | set(evals) | set(cms)) - with_job):
        if not key[1]:
            continue
        source = grows.get(key) or evals.get(key) or cms[key]
        meta = source.get("metadata") or {}
        paths = _paths_from_configmap(cms.get(key))
        out.append(
            StageStatus(
                namespace=key[0],
                release=key[1],
                stage=(meta.get("labels") or {}).get("motif/stage", key[1]),
                kind="-",
                phase="NoJob",
                age_seconds=_age(meta, now),
                grow=_batch_job_state(grows.get(key)),
                eval=_batch_job_state(evals.get(key)),
                checkpoint_dir=paths.get("checkpoint_dir"),
                output=paths.get("output"),
                input=paths.get("input"),
                message=why,
            )
        )
    return sorted(out, key=lambda s: (s.namespace, s.release))


def _release_of(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), (meta.get("labels") or {}).get("app.kubernetes.io/instance", "")


def _stage(job, stage_pods, cms, grows, evals, now: dt.datetime) -> StageStatus:
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    key = _release_of(job)
    phase, message = job_phase(job)
    job_pods = [p for p in stage_pods if _component(p) == "trainer"]
    report = eval_report([p for p in stage_pods if _component(p) == "eval"]) or {}
    job_status = job.get("status") or {}
    # PyTorchJob: replicaStatuses by replica type; TrainJob: jobsStatus by replicated job.
    replica_statuses = job_status.get("replicaStatuses") or {
        js.get("name", "?"): js for js in job_status.get("jobsStatus") or []
    }
    counts = {
        rtype: {k: int(v.get(k) or 0) for k in ("active", "succeeded", "failed")}
        for rtype, v in replica_statuses.items()
    }
    paths = _paths_from_configmap(cms.get(key))
    return StageStatus(
        namespace=meta.get("namespace", ""),
        release=key[1] or meta.get("name", ""),
        stage=labels.get("motif/stage", meta.get("name", "")),
        kind=job.get("kind", ""),
        phase=phase,
        replicas=_replicas(job),
        ready=sum(_pod_ready(p) for p in job_pods),
        active=sum(c["active"] for c in counts.values()),
        succeeded=sum(c["succeeded"] for c in counts.values()),
        failed=sum(c["failed"] for c in counts.values()),
        restarts=sum(_restarts(p) for p in job_pods),
        age_seconds=_age(meta, now),
        grow=_batch_job_state(grows.get(key)),
        eval=_batch_job_state(evals.get(key)),
        scores=report.get("scores"),
        heldout=report.get("heldout"),
        scores_truncated=report.get("truncated", False),
        checkpoint_dir=annotations.get("motif/checkpoint-dir") or paths.get("checkpoint_dir"),
        output=annotations.get("motif/output") or paths.get("output"),
        input=annotations.get("motif/input") or paths.get("input"),
        message=message,
        replica_types=counts,
    )


def human_age(seconds: int | None) -> str:
    """kubectl-style age: 45s, 3m12s, 5h7m, 2d3h."""
    if seconds is None:
        return "-"
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    for i, (unit, size) in enumerate(units[:-1]):
        if seconds >= size:
            small, small_size = units[i + 1]
            rest = seconds % size // small_size
            return f"{seconds // size}{unit}{rest}{small}" if rest else f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_scores(stage: StageStatus) -> str:
    """The SCORES cell, one word (the table is split on whitespace): `ko=0.612,en=0.551,tasks=5`."""
    if stage.scores is None and stage.heldout is None:
        return "-"
    parts = [f"{lang}={bpb:.3f}" for lang, bpb in (stage.heldout or {}).items()]
    if stage.scores or stage.scores_truncated:
        parts.append(f"tasks={len(stage.scores or {})}{'+' if stage.scores_truncated else ''}")
    return ",".join(parts) or "-"


def format_table(stages: list[StageStatus], all_namespaces: bool = False) -> str:
    header = [
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
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = []
    for s in stages:
        row = [
            s.stage,
            s.release,
            s.kind,
            s.phase,
            f"{s.ready}/{s.replicas}",
            str(s.active),
            str(s.succeeded),
            str(s.failed),
            str(s.restarts),
            human_age(s.age_seconds),
            s.grow,
            s.eval,
            format_scores(s),
            s.checkpoint_dir or "-",
        ]
        if all_namespaces:
            row.insert(0, s.namespace)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


# ---- talking to the API server (motif/kube.py) ----------------------------------------------------

# The training job kinds status looks for: (group, version, plural, kind).
JOB_KINDS = (
    ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
)


@dataclass
class Fetched:
    """What `fetch` read, as plain dicts."""

    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    configmaps: list[dict[str, Any]]
    grow_jobs: list[dict[str, Any]]
    eval_jobs: list[dict[str, Any]]
    missing_crds: list[str]  # training job CRDs the server does not serve (404 on their list)


def fetch(namespace: str | None) -> Fetched:
    """Everything status shows, in one pass per kind; namespace None: all namespaces."""
    from motif.kube import Reader, Refused

    reader = Reader()
    jobs: list[dict[str, Any]] = []
    missing = []
    for group, version, plural, kind in JOB_KINDS:
        try:
            found = reader.list(group, version, plural, namespace, PART_OF)
        except Refused as e:
            if e.status != 404:
                raise
            missing.append(f"{plural}.{group}")  # the CRD is not installed: no such jobs
            continue
        for job in found:  # lists of custom objects may leave out apiVersion/kind on their items
            job.setdefault("kind", kind)
        jobs += found
    pods = reader.list("", "v1", "pods", namespace, PART_OF)
    cms = reader.list("", "v1", "configmaps", namespace, f"{PART_OF},app.kubernetes.io/component=stage-config")
    batch_jobs = reader.list("batch", "v1", "jobs", namespace, f"{PART_OF},app.kubernetes.io/component in (grow,eval)")
    grows = [j for j in batch_jobs if _component(j) == "grow"]
    evals = [j for j in batch_jobs if _component(j) == "eval"]
    return Fetched(jobs, pods, cms, grows, evals, missing)


# ---- command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's namespace)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="stages in every namespace")
    kube.add_connection_arguments(parser, "call")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per stage) instead of a table")


def run(args: argparse.Namespace) -> int:
    default_ns = kube.load_config(args.context)
    namespace = None if args.all_namespaces else (args.namespace or default_ns)
    got = kube.with_deadline(lambda: fetch(namespace), args.timeout)
    stages = collect(
        got.jobs, got.pods, got.configmaps, got.grow_jobs, eval_jobs=got.eval_jobs, missing_crds=got.missing_crds
    )
    if got.missing_crds and any(s.kind == "-" for s in stages):
        print(
            f"warning: CRD {', '.join(got.missing_crds)} not installed: stages below show their Jobs without a "
            "training job",
            file=sys.stderr,
        )
    if args.json:
        json.dump([asdict(s) for s in stages], sys.stdout, indent=2)
        print()
    elif not stages:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No motif stages in {where}.")
    else:
        print(format_table(stages, all_namespaces=namespace is None))
    return 0
