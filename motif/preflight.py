"""`motif preflight STAGE_FILE`: what the cluster must provide for a stage, checked before installing it.

A stage file names things the chart does not create and the API server only refuses later, one
at a time: the CRDs of the workload and the monitoring objects (and an operator serving them),
a PriorityClass (pods naming a missing one are refused), a Kueue LocalQueue or a Volcano queue,
existing claims, a ServiceAccount, the GPU and RDMA device plugins (extended resources no node
advertises leave the pods Pending), Katib and its namespace label. `prerequisites` lists them from
the stage file merged with the chart's defaults (pure); `run` checks each with read-only API calls
(get, list) and names every one that is missing. Exit 0: all present; 1: something is missing.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from motif import kube
from motif.errors import MotifError

HELP = "Check a stage file's prerequisites on the cluster (CRDs, operators, queues, claims, devices)"
DESCRIPTION = """\
List what a stage file needs from the cluster and check each with read-only API calls: the CRDs
of its workload (PyTorchJob or TrainJob) and of the monitoring objects, an operator serving the
workload (its admission webhook), the PriorityClass, the Kueue LocalQueue or Volcano queue, the
existing PersistentVolumeClaims (bound, or on a StorageClass that binds on first consumer), an
existing ServiceAccount, Ready nodes that advertise the GPU and RDMA resources (their device
plugins), Katib with the namespace label its metrics collector needs, and the namespace's enforced
Pod Security level against the one the stage's pods need (privileged with hostNetwork or
rdma.ipcLock, else restricted). An operator counts as running when its admission webhook's Service
has a ready endpoint or its Deployment an available replica.

Exit status: 0 all present, 1 something is missing (each one named), 2 bad input or no cluster.
Also runs in the cluster as `helm test RELEASE` with preflight.helmTest: true.
"""

CHART_VALUES = Path(__file__).resolve().parents[1] / "charts" / "motif-stage" / "values.yaml"
KATIB_LABEL = ("katib.kubeflow.org/metrics-collector-injection", "enabled")
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
PSA_LEVELS = ("privileged", "baseline", "restricted")  # most permissive first
# Capabilities the baseline level lets a container add (Pod Security Standards).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip


@dataclass
class Prerequisite:
    """One thing the cluster must have: `check` says how to look it up, `name` what to look for."""

    what: str
    why: str
    check: str
    name: str
    namespace: str | None = None
    group: str = ""
    version: str = ""
    plural: str = ""
    present: bool | None = None
    detail: str = ""


# ---- what a stage needs (pure) ---------------------------------------------------------------


def load_values(path: str | Path) -> dict[str, Any]:
    """The stage file (YAML or JSON) merged over the chart's defaults, as Helm merges them."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise MotifError(f"{path}: cannot read the stage file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise MotifError(f"{path}: not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("motif"), dict) or not doc["motif"].get("name"):
        raise MotifError(f"{path}: motif.name: missing; expected a stage file (a mapping with a motif: section)")
    defaults = yaml.safe_load(CHART_VALUES.read_text()) if CHART_VALUES.is_file() else {}
    return _merge(defaults or {}, doc)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _crd(plural: str, group: str, why: str) -> Prerequisite:
    return Prerequisite(f"CRD {plural}.{group}", why, "crd", f"{plural}.{group}")


def _operator(group: str, plural: str, what: str, why: str) -> Prerequisite:
    return Prerequisite(what, why, "webhook", plural, group=group)


def pod_security_level(values: dict[str, Any]) -> tuple[str, str]:
    """(level, why): the strictest Pod Security level the stage's pods pass. Host networking
    (NCCL over the node's InfiniBand HCAs; it also puts host ports on the pods) and IPC_LOCK (RDMA
    memory registration) need `privileged`; the chart's default security contexts pass `restricted`."""
    if values.get("hostNetwork"):
        return "privileged", "hostNetwork: true (host network namespace and host ports)"
    rdma = values.get("rdma") or {}
    if rdma.get("enabled") and rdma.get("ipcLock", True) and "IPC_LOCK" not in BASELINE_CAPABILITIES:
        return "privileged", "rdma.ipcLock: true (capability IPC_LOCK)"
    pod, container = values.get("podSecurityContext") or {}, values.get("securityContext") or {}
    seccomp = (pod.get("seccompProfile") or container.get("seccompProfile") or {}).get("type")
    restricted = (
        (pod.get("runAsNonRoot") or container.get("runAsNonRoot"))
        and seccomp in ("RuntimeDefault", "Localhost")
        and container.get("allowPrivilegeEscalation") is False
        and "ALL" in ((container.get("capabilities") or {}).get("drop") or [])
    )
    if container.get("privileged"):
        return "privileged", "securityContext.privileged: true"
    if restricted:
        return "restricted", "the chart's security contexts"
    return "baseline", "securityContext does not meet restricted (runAsNonRoot, seccomp, no escalation, drop ALL)"


def prerequisites(values: dict[str, Any], namespace: str) -> list[Prerequisite]:
    """Everything the stage of `values` needs from the cluster in `namespace`."""
    v, m = values, values.get("motif") or {}
    level, why = pod_security_level(v)
    out: list[Prerequisite] = [
        Prerequisite(f"Pod Security admits {level} pods in {namespace}", why, "podsecurity", level, namespace)
    ]
    if v.get("workload", "PyTorchJob") == "TrainJob":
        out.append(_crd("trainjobs", "trainer.kubeflow.org", "workload: TrainJob"))
        out.append(
            _operator("trainer.kubeflow.org", "trainjobs", "Kubeflow Trainer v2 controller", "workload: TrainJob")
        )
        ref = (v.get("trainJob") or {}).get("runtimeRef") or {}
        cluster = ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime"
        plural = "clustertrainingruntimes" if cluster else "trainingruntimes"
        out.append(
            Prerequisite(
                f"{ref.get('kind', 'ClusterTrainingRuntime')} {ref.get('name')}",
                "trainJob.runtimeRef",
                "object",
                str(ref.get("name")),
                None if cluster else namespace,
                "trainer.kubeflow.org",
                "v1alpha1",
                plural,
            )
        )
    else:
        out.append(_crd("pytorchjobs", "kubeflow.org", "workload: PyTorchJob"))
        out.append(_operator("kubeflow.org", "pytorchjobs", "Kubeflow training operator", "workload: PyTorchJob"))
    monitoring = v.get("monitoring") or {}
    if (monitoring.get("podMonitor") or {}).get("enabled"):
        out.append(_crd("podmonitors", "monitoring.coreos.com", "monitoring.podMonitor.enabled"))
    if (monitoring.get("rules") or {}).get("enabled"):
        out.append(_crd("prometheusrules", "monitoring.coreos.com", "monitoring.rules.enabled"))
    pc = v.get("priorityClassName")
    if pc and not (v.get("priorityClass") or {}).get("create"):
        out.append(Prerequisite(f"PriorityClass {pc}", "priorityClassName", "priorityclass", pc))
    kueue = v.get("kueue") or {}
    if kueue.get("queueName"):
        out.append(_crd("localqueues", "kueue.x-k8s.io", "kueue.queueName"))
        out.append(
            Prerequisite(
                f"Kueue LocalQueue {kueue['queueName']}",
                "kueue.queueName",
                "object",
                kueue["queueName"],
                namespace,
                "kueue.x-k8s.io",
                "v1beta1",
                "localqueues",
            )
        )
    if kueue.get("priorityClass"):
        name = kueue["priorityClass"]
        out.append(
            Prerequisite(
                f"Kueue WorkloadPriorityClass {name}",
                "kueue.priorityClass",
                "object",
                name,
                None,
                "kueue.x-k8s.io",
                "v1beta1",
                "workloadpriorityclasses",
            )
        )
    gang = v.get("gang") or {}
    if gang.get("scheduler") == "volcano":
        out.append(_crd("podgroups", "scheduling.volcano.sh", "gang.scheduler: volcano"))
        if gang.get("queue"):
            out.append(
                Prerequisite(
                    f"Volcano Queue {gang['queue']}",
                    "gang.queue",
                    "object",
                    gang["queue"],
                    None,
                    "scheduling.volcano.sh",
                    "v1beta1",
                    "queues",
                )
            )
    elif gang.get("scheduler") == "scheduler-plugins":
        out.append(_crd("podgroups", "scheduling.x-k8s.io", "gang.scheduler: scheduler-plugins"))
    sa = v.get("serviceAccount") or {}
    if not sa.get("create", True) and sa.get("name"):
        out.append(
            Prerequisite(f"ServiceAccount {sa['name']}", "serviceAccount.name", "serviceaccount", sa["name"], namespace)
        )
    for vol, spec in sorted((v.get("volumes") or {}).items()):
        if isinstance(spec, dict) and spec.get("existingClaim"):
            claim = spec["existingClaim"]
            out.append(
                Prerequisite(f"PersistentVolumeClaim {claim}", f"volumes.{vol}.existingClaim", "pvc", claim, namespace)
            )
    parallel = m.get("parallel") or {}
    if parallel.get("device", "cuda") == "cuda":
        gpu = (v.get("gpu") or {}).get("resourceName", "nvidia.com/gpu")
        out.append(
            Prerequisite(f"nodes with {gpu} (GPU device plugin)", "motif.parallel.device: cuda", "resource", gpu)
        )
    rdma = v.get("rdma") or {}
    if rdma.get("enabled"):
        name = rdma.get("resourceName", "rdma/rdma_shared_device_a")
        out.append(Prerequisite(f"nodes with {name} (RDMA device plugin)", "rdma.enabled", "resource", name))
    if (v.get("katib") or {}).get("enabled"):
        out.append(_crd("experiments", "kubeflow.org", "katib.enabled"))
        out.append(_operator("kubeflow.org", "experiments", "Katib controller", "katib.enabled"))
        key, value = KATIB_LABEL
        out.append(Prerequisite(f"namespace {namespace} label {key}={value}", "katib.enabled", "label", namespace))
    return out


# ---- checking them against the cluster (read-only) -------------------------------------------

UNREACHABLE_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


def _look_up(reader, p: Prerequisite) -> tuple[bool, str]:
    """(present, detail) of one prerequisite; Refused (404 included) is raised to the caller."""
    if p.check == "crd":
        reader.get("apiextensions.k8s.io", "v1", "customresourcedefinitions", p.name)
        return True, ""
    if p.check == "webhook":
        return _operator_running(reader, p)
    if p.check == "priorityclass":
        pc = reader.get("scheduling.k8s.io", "v1", "priorityclasses", p.name)
        return True, f"value {pc.get('value')}"
    if p.check == "serviceaccount":
        reader.get("", "v1", "serviceaccounts", p.name, p.namespace)
        return True, ""
    if p.check == "pvc":
        return _claim_ready(reader, p)
    if p.check == "object":
        reader.get(p.group, p.version, p.plural, p.name, p.namespace)
        return True, ""
    if p.check == "resource":
        return _nodes_with(reader, p.name)
    if p.check == "label":
        labels = (reader.get("", "v1", "namespaces", p.name).get("metadata") or {}).get("labels") or {}
        key, value = KATIB_LABEL
        found = labels.get(key)
        return found == value, "" if found == value else f"kubectl label namespace {p.name} {key}={value}"
    if p.check == "podsecurity":
        labels = (reader.get("", "v1", "namespaces", p.namespace).get("metadata") or {}).get("labels") or {}
        return _pod_security_allows(labels.get(PSA_ENFORCE), p.name, p.namespace)
    raise ValueError(p.check)


def _quantity(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 1.0  # a quantity with a suffix (e.g. 1k) is more than zero


def _claim_ready(reader, p: Prerequisite) -> tuple[bool, str]:
    """A claim is ready when Bound, or Pending on a StorageClass that binds on first consumer (the
    stage's pod is that consumer); any other Pending claim leaves the pods Pending."""
    pvc = reader.get("", "v1", "persistentvolumeclaims", p.name, p.namespace)
    spec, phase = pvc.get("spec") or {}, (pvc.get("status") or {}).get("phase") or "Unknown"
    modes = ",".join(spec.get("accessModes") or [])
    if phase == "Bound":
        return True, f"Bound {modes}".strip()
    if phase == "Pending" and spec.get("storageClassName"):
        sc = reader.get("storage.k8s.io", "v1", "storageclasses", spec["storageClassName"])
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer":
            return True, f"Pending {modes}, binds on first consumer ({spec['storageClassName']})".strip()
    return False, f"{phase}, not bound to a volume"


def _nodes_with(reader, resource: str) -> tuple[bool, str]:
    """Ready, reachable nodes that advertise `resource`; NotReady or unreachable nodes do not count."""
    nodes = reader.list("", "v1", "nodes")
    having = [n for n in nodes if _quantity(((n.get("status") or {}).get("allocatable") or {}).get(resource)) > 0]
    usable = [n for n in having if _node_usable(n)]
    detail = f"{len(usable)} of {len(nodes)} nodes"
    if len(having) > len(usable):
        detail += f" ({len(having) - len(usable)} more NotReady or unreachable)"
    return bool(usable), detail


def _node_usable(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
    return ready and not taints.intersection(UNREACHABLE_TAINTS) and not (node.get("spec") or {}).get("unschedulable")


def _covers(hook: dict[str, Any], group: str, plural: str) -> bool:
    """Whether a webhook intercepts creating `plural.group` (a rule for CONNECT only does not)."""
    for rule in hook.get("rules") or []:
        groups, resources, ops = rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("operations") or []
        wanted = (group in groups or "*" in groups) and (plural in resources or "*" in resources)
        if wanted and ("CREATE" in ops or "*" in ops):
            return True
    return False


def _operator_running(reader, p: Prerequisite) -> tuple[bool, str]:
    """An operator is running when an admission webhook of it covers creating the resource and the
    webhook's Service has a ready endpoint, or a Deployment behind that Service has an available
    replica. A webhook configuration left behind by an uninstalled operator does not count."""
    configs = reader.list("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")
    configs += reader.list("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
    seen = []
    for cfg in configs:
        for hook in cfg.get("webhooks") or []:
            if not _covers(hook, p.group, p.name):
                continue
            service = (hook.get("clientConfig") or {}).get("service")
            name = (cfg.get("metadata") or {}).get("name", "?")
            if not service:  # a URL webhook outside the cluster: nothing here to look at
                return True, f"webhook {name} (external URL)"
            ok, why = _service_serving(reader, service.get("namespace", "default"), service.get("name", ""))
            if ok:
                return True, f"webhook {name}, {why}"
            seen.append(f"webhook {name}: {why}")
    if seen:
        return False, "; ".join(seen)
    return False, f"no admission webhook serves creating {p.name}.{p.group}"


def _service_serving(reader, namespace: str, name: str) -> tuple[bool, str]:
    from motif.kube import Refused

    where = f"Service {namespace}/{name}"
    try:
        service = reader.get("", "v1", "services", name, namespace)
    except Refused as e:
        if e.status == 404:
            return False, f"{where} does not exist"
        raise
    slices = reader.list("discovery.k8s.io", "v1", "endpointslices", namespace, f"kubernetes.io/service-name={name}")
    ready = sum(
        1 for s in slices for ep in s.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready") is not False
    )
    if ready:
        return True, f"{where}: {ready} ready endpoints"
    selector = (service.get("spec") or {}).get("selector") or {}
    if selector:
        for dep in reader.list("apps", "v1", "deployments", namespace):
            labels = ((((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")) or {}
            available = int((dep.get("status") or {}).get("availableReplicas") or 0)
            if all(labels.get(k) == v for k, v in selector.items()) and available > 0:
                return True, f"Deployment {namespace}/{dep['metadata']['name']}: {available} available"
    return False, f"{where} has no ready endpoint and no available Deployment"


def _pod_security_allows(enforced: str | None, needed: str, namespace: str | None) -> tuple[bool, str]:
    if enforced is None:
        return True, f"namespace not labelled {PSA_ENFORCE}: the cluster's default applies (stage needs {needed})"
    if enforced not in PSA_LEVELS:
        return False, f"{PSA_ENFORCE}={enforced} is not a Pod Security level"
    if PSA_LEVELS.index(enforced) <= PSA_LEVELS.index(needed):
        return True, f"enforces {enforced}"
    return False, (
        f"namespace enforces {enforced}; the stage needs {needed} "
        f"(kubectl label namespace {namespace} {PSA_ENFORCE}={needed} --overwrite)"
    )


def check_all(prereqs: list[Prerequisite]) -> list[Prerequisite]:
    from motif.kube import Reader, Refused

    reader = Reader()
    for p in prereqs:
        try:
            p.present, p.detail = _look_up(reader, p)
        except Refused as e:
            if e.status == 404:
                p.present, p.detail = False, "not found"
            elif e.status in (401, 403):
                where = f" in namespace {e.namespace}" if e.namespace else ""
                p.present, p.detail = False, f"not allowed to {e.verb} {e.resource}{where} ({e.status} {e.reason})"
            else:
                raise
    return prereqs


# ---- command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage_file", metavar="STAGE_FILE", help="stage file (Helm values) of the stage to install")
    parser.add_argument("-n", "--namespace", help="namespace the stage goes to (default: the context's namespace)")
    kube.add_connection_arguments(parser, "check")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per prerequisite)")


def run(args: argparse.Namespace) -> int:
    values = load_values(args.stage_file)
    default_ns = kube.load_config(args.context)
    namespace = args.namespace or default_ns
    results = kube.with_deadline(lambda: check_all(prerequisites(values, namespace)), args.timeout)
    missing = [p for p in results if not p.present]
    if args.json:
        json.dump([asdict(p) for p in results], sys.stdout, indent=2)
        print()
    else:
        width = max(len(p.what) for p in results)
        for p in results:
            mark = "ok     " if p.present else "MISSING"
            print(f"{mark}  {p.what.ljust(width)}  ({p.why}){'  ' + p.detail if p.detail else ''}")
        stage = values["motif"]["name"]
        if missing:
            print(f"{len(missing)} of {len(results)} prerequisites of stage {stage} missing in namespace {namespace}")
        else:
            print(f"all {len(results)} prerequisites of stage {stage} present in namespace {namespace}")
    return 1 if missing else 0
