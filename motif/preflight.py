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

from motif.errors import MotifError

HELP = "Check a stage file's prerequisites on the cluster (CRDs, operators, queues, claims, devices)"
DESCRIPTION = """\
List what a stage file needs from the cluster and check each with read-only API calls: the CRDs
of its workload (PyTorchJob or TrainJob) and of the monitoring objects, an operator serving the
workload (its admission webhook), the PriorityClass, the Kueue LocalQueue or Volcano queue, the
existing PersistentVolumeClaims, an existing ServiceAccount, nodes that advertise the GPU and RDMA
resources (their device plugins), and Katib with the namespace label its metrics collector needs.

Exit status: 0 all present, 1 something is missing (each one named), 2 bad input or no cluster.
Also runs in the cluster as `helm test RELEASE` with preflight.helmTest: true.
"""

CHART_VALUES = Path(__file__).resolve().parents[1] / "charts" / "motif-stage" / "values.yaml"
KATIB_LABEL = ("katib.kubeflow.org/metrics-collector-injection", "enabled")


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


def prerequisites(values: dict[str, Any], namespace: str) -> list[Prerequisite]:
    """Everything the stage of `values` needs from the cluster in `namespace`."""
    v, m = values, values.get("motif") or {}
    out: list[Prerequisite] = []
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


def _look_up(api_client, p: Prerequisite) -> tuple[bool, str]:
    """(present, detail) of one prerequisite; 404 is absent, anything the API refuses is an error."""
    from kubernetes import client

    from motif.status import timeout

    t = {"_request_timeout": timeout()}
    if p.check == "crd":
        client.ApiextensionsV1Api(api_client).read_custom_resource_definition(p.name, **t)
        return True, ""
    if p.check == "webhook":
        return _webhook(client.AdmissionregistrationV1Api(api_client), p, t)
    if p.check == "priorityclass":
        pc = client.SchedulingV1Api(api_client).read_priority_class(p.name, **t)
        return True, f"value {pc.value}"
    if p.check == "serviceaccount":
        client.CoreV1Api(api_client).read_namespaced_service_account(p.name, p.namespace, **t)
        return True, ""
    if p.check == "pvc":
        pvc = client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(p.name, p.namespace, **t)
        modes = ",".join(pvc.spec.access_modes or [])
        return True, f"{pvc.status.phase if pvc.status else 'Unknown'} {modes}".strip()
    if p.check == "object":
        custom = client.CustomObjectsApi(api_client)
        if p.namespace:
            custom.get_namespaced_custom_object(p.group, p.version, p.namespace, p.plural, p.name, **t)
        else:
            custom.get_cluster_custom_object(p.group, p.version, p.plural, p.name, **t)
        return True, ""
    if p.check == "resource":
        nodes = client.CoreV1Api(api_client).list_node(**t).items
        having = [n.metadata.name for n in nodes if _quantity((n.status.allocatable or {}).get(p.name)) > 0]
        return (bool(having), f"{len(having)} of {len(nodes)} nodes") if having else (False, f"0 of {len(nodes)} nodes")
    if p.check == "label":
        ns = client.CoreV1Api(api_client).read_namespace(p.name, **t)
        key, value = KATIB_LABEL
        found = (ns.metadata.labels or {}).get(key)
        return found == value, "" if found == value else f"kubectl label namespace {p.name} {key}={value}"
    raise ValueError(p.check)


def _quantity(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 1.0  # a quantity with a suffix (e.g. 1k) is more than zero


def _webhook(api, p: Prerequisite, t: dict[str, Any]) -> tuple[bool, str]:
    """An operator is taken as running when an admission webhook of it covers the resource."""
    configs = list(api.list_validating_webhook_configuration(**t).items)
    configs += list(api.list_mutating_webhook_configuration(**t).items)
    for cfg in configs:
        for hook in cfg.webhooks or []:
            for rule in hook.rules or []:
                groups, resources = rule.api_groups or [], rule.resources or []
                if (p.group in groups or "*" in groups) and (p.name in resources or "*" in resources):
                    return True, f"webhook {cfg.metadata.name}"
    return False, f"no admission webhook serves {p.name}.{p.group}"


def check_all(prereqs: list[Prerequisite]) -> list[Prerequisite]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from motif.status import _reason

    api_client = client.ApiClient()
    for p in prereqs:
        try:
            p.present, p.detail = _look_up(api_client, p)
        except ApiException as e:
            if e.status == 404:
                p.present, p.detail = False, "not found"
            elif e.status in (401, 403):
                p.present, p.detail = False, f"not allowed to read it ({e.status} {e.reason})"
            else:
                raise MotifError(f"the API server refused a read of {p.what}: {e.status} {e.reason}") from None
        except HTTPError as e:
            raise MotifError(f"cannot reach the API server: {_reason(e)}") from None
    return prereqs


# ---- command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage_file", metavar="STAGE_FILE", help="stage file (Helm values) of the stage to install")
    parser.add_argument("-n", "--namespace", help="namespace the stage goes to (default: the context's namespace)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per prerequisite)")


def run(args: argparse.Namespace) -> int:
    from motif.status import _load_config

    values = load_values(args.stage_file)
    default_ns = _load_config(args.context)
    namespace = args.namespace or default_ns
    results = check_all(prerequisites(values, namespace))
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
