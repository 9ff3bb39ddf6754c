"""The motif-stage chart, rendered by real Helm for every stage file and ci scenario.

Each render must lint clean (strict), and every object must validate: core kinds against the
Kubernetes 1.31 OpenAPI schemas, custom resources against their CRD schemas made strict.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from motif import config
from motif_dev.deploy import render as r

VALUES_FILES = r.stage_files() + r.ci_files()
IDS = [str(p.relative_to(r.ROOT)) for p in VALUES_FILES]
NAMESPACED = {
    "ConfigMap",
    "Job",
    "PyTorchJob",
    "TrainJob",
    "ServiceAccount",
    "PersistentVolumeClaim",
    "PodMonitor",
    "PrometheusRule",
    "NetworkPolicy",
}


def _render(path: Path, name: str | None = None) -> list[dict]:
    values = r.load_values(path)
    return r.objects(r.render(values, name or r.release_name(values)))


def _workload(objs: list[dict]) -> dict:
    (job,) = [o for o in objs if o["kind"] in ("PyTorchJob", "TrainJob")]
    return job


def _grace(values: dict) -> int:
    return values.get("train", {}).get("terminationGracePeriodSeconds", 300)


def _grow_jobs(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "grow"]


def _stage_config(objs: list[dict]) -> dict:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "stage.yaml" in o.get("data", {})]
    return cm


def test_every_stage_file_and_scenario_is_found():
    assert len(r.stage_files()) >= 6
    names = [p.name for p in r.ci_files()]
    for scenario in ("hostnetwork-rdma", "volcano", "kueue", "new-pvcs", "trainjob"):
        assert any(scenario in n for n in names), f"no ci/NN-{scenario}-values.yaml in {names}"


@pytest.mark.parametrize("path", VALUES_FILES, ids=IDS)
def test_renders_lints_and_validates(path):
    values = r.load_values(path)
    objs = _render(path)
    assert {"ConfigMap"} <= {o["kind"] for o in objs}
    assert r.lint(values) == []
    for obj in objs:
        r.validate(obj)
        meta = obj["metadata"]
        if obj["kind"] in NAMESPACED:
            assert meta["namespace"] == r.NAMESPACE, f"{obj['kind']}/{meta['name']} has no namespace"
        labels = meta["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
            "helm.sh/chart",
        ):
            assert key in labels, f"{obj['kind']}/{meta['name']} lacks label {key}"
        assert labels["motif/stage"] == values["motif"]["name"]


@pytest.mark.parametrize("path", r.stage_files(), ids=[str(p.relative_to(r.ROOT)) for p in r.stage_files()])
def test_stage_config_configmap_is_the_stage_files_motif_section(path):
    """The pods read exactly what the stage file says (floats like 1e-05 included)."""
    cm = _stage_config(_render(path))
    shipped = config.parse_stage(yaml.safe_load(cm["data"]["stage.yaml"])["motif"])
    original = config.load_stage(path)
    original.source_file = None
    assert shipped == original


@pytest.mark.parametrize("path", VALUES_FILES, ids=IDS)
def test_workload_layout_comes_from_motif_parallel(path):
    values = r.load_values(path)
    par = values["motif"]["parallel"]
    nodes, procs, gpu = par.get("nodes", 1), par.get("procs_per_node", 1), par.get("device", "cuda") == "cuda"
    job = _workload(_render(path))
    if job["kind"] == "TrainJob":
        trainer = job["spec"]["trainer"]
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, procs)
        assert (trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu") == procs) == gpu
        assert trainer["command"] == ["motif-torchrun", "-m", "motif", "train", "/etc/motif/stage.yaml"]
        assert {"name": "MOTIF_GRACE_SECONDS", "value": str(_grace(values))} in trainer["env"]
        (patch,) = job["spec"]["runtimePatches"]
        (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        pod = rjob["template"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert {"name": "stage-config", "mountPath": "/etc/motif", "readOnly": True} in c["volumeMounts"]
        # The patch keys mounts by volume name: one mount per volume (issue: Duplicate value).
        names = [mt["name"] for mt in c["volumeMounts"]]
        assert len(names) == len(set(names))
        assert pod["terminationGracePeriodSeconds"] == _grace(values)
        assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
        assert {v["name"] for v in pod["volumes"]} >= {"stage-config", "tmp", "shm"}
        return
    spec = job["spec"]
    assert spec["nprocPerNode"] == str(procs)
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {"replicas": 0})["replicas"] == nodes - 1
    assert sorted(replicas) == (["Master", "Worker"] if nodes > 1 else ["Master"])
    for rtype, rs in replicas.items():
        pod = rs["template"]
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        (c,) = pod["spec"]["containers"]
        assert c["name"] == "pytorch", rtype
        assert c["command"] == ["motif-torchrun", "-m", "motif", "train", "/etc/motif/stage.yaml"]
        assert c["args"] == ["--resume", "auto"]
        assert pod["spec"]["terminationGracePeriodSeconds"] == _grace(values)
        assert {"name": "MOTIF_GRACE_SECONDS", "value": str(_grace(values))} in c["env"]
        limits = c["resources"]["limits"]
        assert (limits.get("nvidia.com/gpu") == procs) if gpu else ("nvidia.com/gpu" not in limits)
        assert {
            "name": "metrics",
            "containerPort": values["motif"].get("metrics", {}).get("port", 9401),
            "protocol": "TCP",
        } in c["ports"]
        shm = [v for v in pod["spec"]["volumes"] if v["name"] == "shm"]
        assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        sc, psc = c["securityContext"], pod["spec"]["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert psc["runAsNonRoot"] and psc["fsGroup"] and psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("path", r.stage_files(), ids=[str(p.relative_to(r.ROOT)) for p in r.stage_files()])
def test_stage_chaining(path):
    """Growth runs once in a Job of the release; training waits for a complete start checkpoint;
    the stage can write only its own checkpoint directory."""
    values = r.load_values(path)
    m = values["motif"]
    objs = _render(path)
    grow = _grow_jobs(objs)
    job = _workload(objs)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    if m.get("growth"):
        (g,) = grow
        assert "helm.sh/hook" not in g["metadata"].get("annotations", {})
        assert g["spec"]["template"]["spec"]["containers"][0]["command"] == [
            "motif",
            "grow",
            "--stage",
            "/etc/motif/stage.yaml",
        ]
    else:
        assert grow == []

    def absolute(p: str) -> str:
        return p if p.startswith("/") else f"{values.get('workingDir', '/workspace')}/{p}"

    start = m.get("growth", {}).get("output") or m.get("input")
    init = pod.get("initContainers", [])
    if start:
        (wait,) = init
        assert wait["command"][-1] == absolute(start)
        assert "config.json" in wait["command"][2]
    else:
        assert init == []
    mounts = pod["containers"][0]["volumeMounts"]
    ckpt = [mt for mt in mounts if mt.get("subPath")]
    assert len(ckpt) == 1 and ckpt[0]["mountPath"] == absolute(m["checkpoint"]["dir"])
    parent = [mt for mt in mounts if mt["name"] == ckpt[0]["name"] and not mt.get("subPath")]
    assert parent[0]["readOnly"] is True


def test_102b_stage_files_ask_for_the_cluster():
    for path in sorted((r.ROOT / "jobs" / "llama3-motif-102b").glob("*.yaml")):
        pod = _workload(_render(path))["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == 1
        assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
        assert pod["hostNetwork"] and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert pod["schedulerName"] == "volcano"
        assert any(e["name"] == "NCCL_IB_HCA" for e in c["env"])


def test_monitoring_ships_from_the_monitoring_folder_without_copies():
    link = r.CHART / "monitoring"
    assert link.is_symlink() and Path(link.readlink()) == Path("../../monitoring")
    objs = _render(r.ROOT / "jobs" / "llama3-motif-102b" / "stage1-depth.yaml")
    rules = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PrometheusRule"}
    rule_files = sorted((r.ROOT / "monitoring" / "rules").glob("*.yaml"))
    assert len(rules) == len(rule_files)
    for f in rule_files:
        rule = rules[f"motif-s1-depth-{f.stem.lower().replace('_', '-')}"]
        assert rule["spec"]["groups"] == yaml.safe_load(f.read_text())["groups"]
    dashboards = [o for o in objs if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    dash_files = sorted((r.ROOT / "monitoring" / "dashboards").glob("*.json"))
    assert len(dashboards) == len(dash_files)
    for f, cm in zip(dash_files, sorted(dashboards, key=lambda o: o["metadata"]["name"]), strict=True):
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text())
    (pm,) = [o for o in objs if o["kind"] == "PodMonitor"]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # `job` = the PyTorchJob name: what the dashboards and alerts group by (docs/monitoring.md).
    assert pm["spec"]["jobLabel"] == "training.kubeflow.org/job-name"
    # Only rank 0 (in the master pod) serves metrics: workers would be targets that are down.
    assert pm["spec"]["selector"]["matchLabels"]["motif/replica"] == "master"
    (job,) = [o for o in objs if o["kind"] == "PyTorchJob"]
    for rtype, spec in job["spec"]["pytorchReplicaSpecs"].items():
        labels = spec["template"]["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
        assert selected == (rtype == "Master"), rtype


def test_notes_print_commands_for_the_objects_it_made():
    values = r.load_values(r.ROOT / "jobs" / "llama3-motif-102b" / "stage1-depth.yaml")
    rendered = r.render(values, "motif-s1")
    notes = rendered["motif-stage/templates/NOTES.txt"]
    commands = [line.strip() for line in notes.splitlines() if line.strip().startswith("kubectl ")]
    assert "kubectl -n motif get pytorchjob motif-s1 -w" in commands
    (grow,) = _grow_jobs(r.objects(rendered))
    assert f"kubectl -n motif logs -f job/{grow['metadata']['name']}" in commands
    assert f"kubectl -n motif wait --for=condition=Complete job/{grow['metadata']['name']} --timeout=21600s" in commands
    assert "kubectl -n motif logs -f motif-s1-master-0 -c pytorch" in commands
    assert "kubectl -n motif wait --for=condition=Succeeded pytorchjob/motif-s1 --timeout=-1s" in commands
    selector = next(c for c in commands if " -l " in c).split(" -l ")[1]
    pod_labels = r.objects(rendered)
    (job,) = [o for o in pod_labels if o["kind"] == "PyTorchJob"]
    labels = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in (kv.split("=") for kv in selector.split(",")))


def test_validators_reject_what_they_should():
    """The validators are real: an unknown field in a custom resource and a wrong type in a core
    object are both errors."""
    objs = _render(r.ROOT / "jobs" / "tiny" / "stage1-depth.yaml")
    job = copy.deepcopy(_workload(objs))
    job["spec"]["runPolicy"]["backofLimit"] = 3
    with pytest.raises(r.RenderError, match="backofLimit"):
        r.validate(job)
    job = copy.deepcopy(_workload(objs))
    job["spec"]["nprocPerNode"] = 2
    with pytest.raises(r.RenderError, match="nprocPerNode"):
        r.validate(job)
    (sa,) = [copy.deepcopy(o) for o in objs if o["kind"] == "ServiceAccount"]
    sa["automountServiceAccountToken"] = "no"
    with pytest.raises(r.RenderError, match="automountServiceAccountToken"):
        r.validate(sa)
    (grow,) = [copy.deepcopy(o) for o in _grow_jobs(objs)]
    grow["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(r.RenderError, match="volumeMount"):
        r.validate(grow)


def test_render_command_line(tmp_path, capsys):
    assert r.main(["--lint", "--validate", "-o", str(tmp_path), str(r.ROOT / "jobs/tiny/stage0-base.yaml")]) == 0
    assert "ok   jobs/tiny/stage0-base.yaml" in capsys.readouterr().out
    docs = list(yaml.safe_load_all((tmp_path / "tiny-stage0-base.yaml").read_text()))
    assert "PyTorchJob" in {d["kind"] for d in docs}


def test_without_the_growth_job_rank_0_grows_and_nothing_waits():
    values = r.load_values(r.ROOT / "jobs" / "tiny" / "stage2-width.yaml")
    values["grow"] = {"enabled": False}
    objs = r.objects(r.render(values, "motif-s2"))
    assert _grow_jobs(objs) == []
    pod = _workload(objs)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "initContainers" not in pod


@pytest.mark.parametrize(
    "path",
    [r.CHART / "ci" / "08-eval-katib-values.yaml", r.ROOT / "jobs" / "llama3-motif-102b" / "stage3-cpt.yaml"],
    ids=["ci-08", "102b-stage3"],
)
def test_the_eval_job_reports_its_scores_as_the_termination_message(path):
    """`motif status` reads the scores from the eval pod's status: the container writes them where
    the kubelet takes the termination message from, a file it mounts apart from the read-only root."""
    objs = _render(path)
    (ev,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "eval"]
    (container,) = ev["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "eval"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MOTIF_TERMINATION_LOG"] == container["terminationMessagePath"]
    assert [e["name"] for e in container["env"]].count("MOTIF_TERMINATION_LOG") == 1
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    r.validate(ev)


def test_every_value_is_documented():
    """Each key of values.yaml carries a `# --` comment (helm-docs style), or sits under a key
    documented as a whole (a default such as resources or podSecurityContext)."""
    lines = (r.CHART / "values.yaml").read_text().splitlines()
    undocumented, documented_block = [], None
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w./-]*):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1))
        if documented_block is not None and indent > documented_block:
            continue
        documented_block = None
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#") and not lines[j].lstrip().startswith("# --"):
            j -= 1
        has_doc = j >= 0 and lines[j].lstrip().startswith("# --") and len(lines[j]) - len(lines[j].lstrip()) == indent
        is_group = line.rstrip().endswith(":") and i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("-")
        if has_doc:
            documented_block = indent
        elif not is_group:
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert undocumented == []
    # The schema knows every top-level key, and values.yaml sets every key the schema knows.
    schema = json.loads((r.CHART / "values.schema.json").read_text())
    top = {m.group(1) for m in (re.match(r"^([A-Za-z_]\w*):", ln) for ln in lines) if m}
    assert top == set(schema["properties"])


def test_new_claims_are_kept_and_mounted():
    objs = _render(r.CHART / "ci" / "04-new-pvcs-values.yaml")
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {"motif-ci-new-pvcs-models", "motif-ci-new-pvcs-data", "ci-checkpoints"}
    for claim in claims.values():
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claims["motif-ci-new-pvcs-models"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert claims["ci-checkpoints"]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    pod = _workload(objs)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    used = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert used == set(claims)


def test_readme_values_table_is_generated_from_values_yaml():
    from motif_dev.deploy import chartdoc

    assert chartdoc.main(["--check"]) == 0, "run: python -m motif_dev.deploy.chartdoc"
    keys = [k for k, _, _ in chartdoc.documented_values((r.CHART / "values.yaml").read_text())]
    assert {"motif", "image.repository", "volumes", "gang.scheduler", "monitoring.podMonitor.labels"} <= set(keys)


def test_numbers_survive_helm_into_the_stage_config():
    """Go writes 1e-08 where YAML 1.1 readers need 1.0e-08; big integers must stay integers."""
    values = r.load_values(r.ROOT / "jobs" / "tiny" / "stage0-base.yaml")
    values["motif"]["optim"].update(lr=2.5e-7, min_lr=0.0, eps=1e-8, beta2=0.999)
    values["motif"]["train"]["max_steps"] = 1_000_000
    values["motif"]["metrics"] = {"peak_flops": 989e12, "port": 9401}
    cm = _stage_config(r.objects(r.render(copy.deepcopy(values), "motif-numbers")))
    shipped = yaml.safe_load(cm["data"]["stage.yaml"])["motif"]
    assert config.parse_stage(shipped) == config.parse_stage(values["motif"])
    assert shipped["optim"]["eps"] == 1e-8 and shipped["train"]["max_steps"] == 1_000_000


def test_packaged_chart_carries_the_monitoring_files_not_their_sources(tmp_path):
    """`helm package` follows the monitoring/ link: the archive holds the generated rules and
    dashboards (real files), and none of the Python that generates them."""
    import tarfile

    import helm_python

    archive = helm_python.package(r.CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        members = {m.name: m for m in tar.getmembers()}
    shipped = sorted(n.split("motif-stage/", 1)[1] for n in names if "/monitoring/" in n)
    expected = sorted(
        f"monitoring/{p.relative_to(r.ROOT / 'monitoring')}"
        for p in [
            *(r.ROOT / "monitoring" / "rules").glob("*.yaml"),
            *(r.ROOT / "monitoring" / "dashboards").glob("*.json"),
        ]
    )
    assert [n for n in shipped if n.endswith((".yaml", ".json"))] == expected
    assert not [n for n in shipped if n.endswith((".py", ".pyc"))]
    assert all(members[n].isfile() for n in names if "/monitoring/" in n)
    values = r.load_values(r.ROOT / "jobs" / "llama3-motif-102b" / "stage1-depth.yaml")
    chart = helm_python.Chart.load_archive(Path(archive).read_bytes())
    rendered = chart.render(values=values, name="motif-s1", namespace="motif")
    assert "kind: PrometheusRule" in rendered["motif-stage/templates/prometheusrule.yaml"]


def test_monitoring_templates_render_nothing_without_files(tmp_path):
    """Without generated rules or dashboards (an empty monitoring/), the chart still renders."""
    import shutil

    import helm_python

    chart_dir = tmp_path / "motif-stage"
    shutil.copytree(r.CHART, chart_dir, symlinks=True)
    (chart_dir / "monitoring").unlink()
    (chart_dir / "monitoring").mkdir()
    values = r.load_values(r.ROOT / "jobs" / "llama3-motif-102b" / "stage1-depth.yaml")
    objs = r.objects(helm_python.Chart.load(chart_dir).render(values=values, name="motif-s1", namespace="motif"))
    kinds = sorted(o["kind"] for o in objs)
    assert "PrometheusRule" not in kinds and "PyTorchJob" in kinds and "PodMonitor" in kinds
    assert not [o for o in objs if o["metadata"].get("labels", {}).get("grafana_dashboard")]
