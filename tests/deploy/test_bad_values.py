"""A catalogue of bad values: each fails at render time (as `helm install` would), with a message
that names the offending value. Mistakes are applied to a real stage file."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from motif_dev.deploy import render as r

BASE = r.load_values(r.ROOT / "jobs" / "tiny" / "stage1-depth.yaml")
GPU_BASE = r.load_values(r.ROOT / "jobs" / "llama3-motif-102b" / "stage2-width.yaml")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(values: dict) -> None:
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return apply


def _del(path: str) -> Callable[[dict], None]:
    def apply(values: dict) -> None:
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node[key]
        del node[last]

    return apply


def _all(*fs: Callable[[dict], None]) -> Callable[[dict], None]:
    def apply(values: dict) -> None:
        for f in fs:
            f(values)

    return apply


# (id, mistake, message fragments that must all appear). Schema errors from Helm name the value
# by its JSON pointer (/motif/parallel/nodes); template errors by its dotted path.
CATALOGUE: list[tuple[str, Callable[[dict], None], tuple[str, ...]]] = [
    ("zero-nodes", _set("motif.parallel.nodes", 0), ("/motif/parallel/nodes", "minimum")),
    ("procs-as-string", _set("motif.parallel.procs_per_node", "8"), ("/motif/parallel/procs_per_node",)),
    ("bad-device", _set("motif.parallel.device", "tpu"), ("/motif/parallel/device",)),
    ("stage-name-not-a-label", _set("motif.name", "Stage_1"), ("/motif/name",)),
    ("no-stage-config", _set("motif", {}), ("name",)),
    ("metrics-port-out-of-range", _set("motif.metrics", {"port": 70000}), ("/motif/metrics/port",)),
    ("unknown-top-level-key", _set("replicas", 4), ("replicas", "not allowed")),
    ("typo-in-chart-key", _set("pytorchjob.runPolicy.backofLimit", 3), ("backofLimit", "not allowed")),
    ("unknown-workload", _set("workload", "MPIJob"), ("/workload",)),
    ("bad-restart-policy", _set("pytorchjob.restartPolicy", "Sometimes"), ("/pytorchjob/restartPolicy",)),
    ("bad-clean-pod-policy", _set("pytorchjob.runPolicy.cleanPodPolicy", "Finished"), ("cleanPodPolicy",)),
    ("bad-managed-by", _set("pytorchjob.runPolicy.managedBy", "my-controller"), ("managedBy",)),
    (
        "elastic-without-worker",
        _set("pytorchjob.elastic", {"enabled": True}),
        ("pytorchjob.elastic.enabled", "motif.parallel.nodes is 1"),
    ),
    ("fullname-too-long", _set("fullnameOverride", "a" * 64), ("fullnameOverride",)),
    ("fullname-not-dns-1035", _set("fullnameOverride", "1st-stage"), ("fullnameOverride",)),
    (
        "secret-value-instead-of-reference",
        _set("secretEnv", [{"name": "HF_TOKEN", "value": "hf_abc"}]),
        ("/secretEnv/0", "value"),
    ),
    ("secret-without-key", _set("secretEnv", [{"name": "HF_TOKEN", "secretName": "hf"}]), ("/secretEnv/0", "key")),
    ("bad-digest", _set("image.digest", "latest"), ("/image/digest",)),
    ("empty-image", _set("image.repository", ""), ("/image/repository",)),
    (
        "kueue-and-volcano",
        _all(_set("kueue.queueName", "q"), _set("gang.scheduler", "volcano")),
        ("kueue.queueName", "gang.scheduler"),
    ),
    ("volcano-queue-without-volcano", _set("gang.queue", "research"), ("gang.queue",)),
    ("bad-gang-scheduler", _set("gang.scheduler", "yunikorn"), ("/gang/scheduler",)),
    ("volume-without-claim", _set("volumes.data", {"mountPath": "/data"}), ("volumes.data",)),
    (
        "volume-claim-and-size",
        _set("volumes.data", {"mountPath": "/data", "existingClaim": "d", "size": "1Gi"}),
        ("volumes.data",),
    ),
    (
        "volume-relative-mount",
        _set("volumes.data", {"mountPath": "data", "existingClaim": "d"}),
        ("/volumes/data/mountPath",),
    ),
    ("checkpoints-read-only", _set("volumes.workspace.readOnly", True), ("volumes.workspace",)),
    (
        "checkpoint-dir-off-volume",
        _all(_set("volumes.workspace.mountPath", "/scratch"), _set("volumes.workspace.stageWritableOnly", True)),
        ("volumes.workspace.stageWritableOnly", "motif.checkpoint.dir"),
    ),
    (
        "output-outside-checkpoint-dir",
        _set("motif.output", "checkpoints/elsewhere/final"),
        ("motif.output", "outside motif.checkpoint.dir"),
    ),
    ("shm-size-not-a-quantity", _set("shmSize", "lots"), ("/shmSize",)),
    (
        "privilege-escalation",
        _set("securityContext.allowPrivilegeEscalation", True),
        ("/securityContext/allowPrivilegeEscalation",),
    ),
    ("run-as-root", _set("podSecurityContext.runAsNonRoot", False), ("/podSecurityContext/runAsNonRoot",)),
    ("no-existing-service-account", _set("serviceAccount", {"create": False}), ("serviceAccount.name",)),
    (
        "trainjob-with-managed-by",
        _all(_set("workload", "TrainJob"), _set("pytorchjob.runPolicy.managedBy", "kueue.x-k8s.io/multikueue")),
        ("pytorchjob.runPolicy.managedBy",),
    ),
]

GPU_CATALOGUE: list[tuple[str, Callable[[dict], None], tuple[str, ...]]] = [
    ("host-network-port-clash", _set("pytorchjob.masterPort", 9401), ("pytorchjob.masterPort", "motif.metrics.port")),
    ("gpus-per-pod-too-many", _set("motif.parallel.procs_per_node", 128), ("/motif/parallel/procs_per_node",)),
    ("growth-without-output", _del("motif.growth.output"), ("/motif/growth", "output")),
    ("rdma-zero-devices", _set("rdma.count", 0), ("/rdma/count",)),
]


def _expect_failure(base: dict, mistake: Callable[[dict], None], fragments: tuple[str, ...], name: str = "motif-s"):
    values = copy.deepcopy(base)
    mistake(values)
    with pytest.raises(r.RenderError) as info:
        r.render(values, name)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_the_catalogue_is_large():
    assert len(CATALOGUE) + len(GPU_CATALOGUE) >= 10


@pytest.mark.parametrize(("mistake", "fragments"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_value_fails_naming_it(mistake, fragments):
    _expect_failure(BASE, mistake, fragments)


@pytest.mark.parametrize(("mistake", "fragments"), [c[1:] for c in GPU_CATALOGUE], ids=[c[0] for c in GPU_CATALOGUE])
def test_bad_gpu_value_fails_naming_it(mistake, fragments):
    _expect_failure(GPU_BASE, mistake, fragments)


@pytest.mark.parametrize(
    ("release", "fragment"),
    [("9-stage", "DNS-1035"), ("stage.one", "DNS-1035"), ("s" * 64, "at most 63")],
)
def test_bad_release_name_fails_naming_it(release, fragment):
    with pytest.raises(r.RenderError) as info:
        r.render(copy.deepcopy(BASE), release)
    assert release in str(info.value) and fragment in str(info.value)


def test_release_name_too_long_for_the_workers_services():
    values = copy.deepcopy(GPU_BASE)  # 16 pods: Services up to <name>-worker-14
    with pytest.raises(r.RenderError, match="motif.parallel.nodes 16"):
        r.render(values, "s" * 55)


def test_the_base_values_render():
    """Control: without the mistakes, both bases render."""
    assert r.render(copy.deepcopy(BASE), "motif-s")
    assert r.render(copy.deepcopy(GPU_BASE), "motif-s")
