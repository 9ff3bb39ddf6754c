"""What an API server enforces beyond JSON Schema, checked on the chart's objects, each rule kind
with a negative control: list-map keys (CRD and core), sets, CEL rules on create, CEL transition
rules on update. And the chart objects issue 13 added: the growth Job that `helm install` does not
wait for, the eval Job, the Katib Experiment, the PriorityClass, the grace period."""

from __future__ import annotations

import copy

import pytest

from motif_dev.deploy import render as r

CI = r.CHART / "ci"


def _objs(path, name: str | None = None, **changes) -> list[dict]:
    values = r.load_values(path)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return r.objects(r.render(values, name or r.release_name(values)))


def _one(objs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    (obj,) = found
    return copy.deepcopy(obj)


def _refused(obj: dict, fragment: str, old: dict | None = None) -> None:
    with pytest.raises(r.RenderError) as info:
        r.validate(obj, old=old)
    assert fragment in str(info.value), str(info.value)


# ---- list types ------------------------------------------------------------------------------


def test_list_map_keys_of_a_crd_the_trainjob_volume_mounts():
    job = _one(_objs(CI / "05-trainjob-values.yaml"), "TrainJob")
    r.validate(job)
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    (c,) = rjob["template"]["spec"]["template"]["spec"]["containers"]
    # What the chart rendered before: the checkpoints volume mounted twice (read-only + subPath).
    c["volumeMounts"].append({"name": "vol-checkpoints", "mountPath": "/checkpoints/ci-trainjob", "subPath": "x"})
    _refused(job, 'Duplicate value: {"name":"vol-checkpoints"}')


def test_list_map_keys_of_a_core_kind_mount_paths_and_env_names():
    grow = _one(_objs(r.ROOT / "jobs/tiny/stage1-depth.yaml"), "Job", "grow")
    c = grow["spec"]["template"]["spec"]["containers"][0]
    # A core Pod keys mounts by mountPath: two mounts of one volume are fine (the PyTorchJob's case)...
    assert len({m["name"] for m in c["volumeMounts"]}) < len(c["volumeMounts"])
    r.validate(grow)
    # ...two mounts at one path are not, nor two variables of one name.
    bad = copy.deepcopy(grow)
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append({"name": "tmp", "mountPath": "/etc/motif"})
    _refused(bad, 'Duplicate value: {"mountPath":"/etc/motif"}')
    bad = copy.deepcopy(grow)
    bad["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "HOME", "value": "/root"})
    _refused(bad, 'Duplicate value: {"name":"HOME"}')


def test_list_map_with_two_keys_container_ports():
    job = _one(_objs(r.ROOT / "jobs/tiny/stage0-base.yaml"), "PyTorchJob")
    ports = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"name": "metrics-udp", "containerPort": ports[-1]["containerPort"], "protocol": "UDP"})
    r.validate(job)  # same port, other protocol: another key
    ports.append({"name": "again", "containerPort": ports[-1]["containerPort"], "protocol": "UDP"})
    _refused(job, "Duplicate value")


def test_list_set_katib_feasible_space():
    exp = _one(_objs(CI / "08-eval-katib-values.yaml"), "Experiment")
    r.validate(exp)
    exp["spec"]["parameters"][0]["feasibleSpace"]["list"].append("0.5")
    _refused(exp, 'feasibleSpace.list[5]: Duplicate value: "0.5"')


# ---- CEL rules -------------------------------------------------------------------------------


def test_cel_rules_on_create_trainjob_name_and_managed_by():
    job = _one(_objs(CI / "05-trainjob-values.yaml"), "TrainJob")
    bad = copy.deepcopy(job)
    bad["metadata"]["name"] = "Stage_1"
    _refused(bad, "metadata.name must match RFC 1035 DNS label format")
    bad = copy.deepcopy(job)
    bad["spec"]["managedBy"] = "my-controller"
    _refused(bad, "ManagedBy must be trainer.kubeflow.org/trainjob-controller")


def test_cel_defaults_are_applied_before_the_rules():
    """managedBy is not rendered; the server defaults it, and the rule holds for the default."""
    job = _one(_objs(CI / "05-trainjob-values.yaml"), "TrainJob")
    assert "managedBy" not in job["spec"]
    assert r.api_rules(job) == []


def test_cel_transition_rules_on_update():
    """`self == oldSelf` rules run on an update only: an upgrade with the same values passes, one
    that changes an immutable field is refused, as the API server refuses the `helm upgrade`."""
    old = _one(_objs(CI / "05-trainjob-values.yaml", "motif-tj"), "TrainJob")
    r.validate(old, old=old)
    new = _one(_objs(CI / "05-trainjob-values.yaml", "motif-tj", train__terminationGracePeriodSeconds=900), "TrainJob")
    r.validate(new)  # fine as a create
    _refused(new, "field is immutable", old=old)
    old = _one(_objs(CI / "02-volcano-gang-values.yaml", "motif-v"), "PyTorchJob")
    new = _one(_objs(CI / "02-volcano-gang-values.yaml", "motif-v", gang__queue="other"), "PyTorchJob")
    _refused(new, "spec.runPolicy.schedulingPolicy.queue is immutable", old=old)


@pytest.mark.parametrize("path", r.stage_files() + r.ci_files(), ids=lambda p: p.name)
def test_an_upgrade_with_the_same_values_passes_every_transition_rule(path):
    for obj in _objs(path):
        r.validate(obj, old=obj)


def test_a_cel_rule_that_cannot_be_evaluated_is_a_failure():
    from motif_dev.deploy import apirules

    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.missing.size() > 0"}]}
    (problem,) = apirules.check({"present": 1}, schema)
    assert "could not be evaluated" in problem


# ---- growth that helm install does not wait for ----------------------------------------------

GROWING = [p for p in r.stage_files() if r.load_values(p)["motif"].get("growth")]


@pytest.mark.parametrize("path", GROWING, ids=lambda p: str(p.relative_to(r.ROOT)))
def test_install_of_a_growing_stage_cannot_fail_because_growth_is_slow(path):
    """Helm waits only for hooks on install (and for `test` hooks only on `helm test`): a growing
    stage has no install or upgrade hook, so `helm install` ends when its objects are created,
    with a deployed release, however long growth takes. Growth is an ordinary Job of the release
    that the training pods wait for."""
    rendered = r.render(r.load_values(path), "motif-g")
    objs = r.objects(rendered)
    hooks = {o["metadata"].get("annotations", {}).get("helm.sh/hook") for o in objs} - {None}
    assert hooks <= {"test"}, hooks
    grow = _one(objs, "Job", "grow")
    assert "helm.sh/hook" not in grow["metadata"].get("annotations", {})
    wait = _one(objs, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["initContainers"]
    assert wait[0]["command"][-1].endswith(r.load_values(path)["motif"]["growth"]["output"].lstrip("."))
    name = grow["metadata"]["name"]
    assert f"kubectl -n motif wait --for=condition=Complete job/{name}" in rendered["motif-stage/templates/NOTES.txt"]
    # A Job's pod template is immutable: nothing in it changes with the chart version.
    labels = grow["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels


def test_one_destination_one_growth_job():
    """The growth Job is named from its destination (claim and path), not the release: a second
    release of the same stage names the same Job, which Kubernetes holds once per namespace and
    Helm will not take over from the first release, so no second grower starts on it."""
    path = r.ROOT / "jobs/llama3-motif-102b/stage1-depth.yaml"
    a = _one(_objs(path, "motif-s1"), "Job", "grow")["metadata"]["name"]
    assert a == _one(_objs(path, "motif-s1-again"), "Job", "grow")["metadata"]["name"]
    assert a == _one(_objs(path, "motif-s1", grow__backoffLimit=5), "Job", "grow")["metadata"]["name"]
    other = _one(_objs(path, "motif-s1", motif__growth__output="/checkpoints/s1-depth/grown2"), "Job", "grow")
    assert other["metadata"]["name"] != a
    claim = _one(
        _objs(path, "motif-s1", volumes__checkpoints__existingClaim="other-claim"), "Job", "grow"
    )  # same path, another volume
    assert claim["metadata"]["name"] != a
    assert len(a) <= 63


# ---- eval Job, Katib, PriorityClass ----------------------------------------------------------


def test_eval_job_waits_for_the_final_output_and_pushes_through_the_network_policy():
    objs = _objs(CI / "08-eval-katib-values.yaml")
    ev = _one(objs, "Job", "eval")
    pod = ev["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["motif", "eval", "--stage", "/etc/motif/stage.yaml"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    (wait,) = pod["initContainers"]
    assert wait["command"][-1] == "/checkpoints/ci-eval/final" and "config.json" in wait["command"][2]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # The NetworkPolicies never restrict egress, so the push to the Pushgateway goes through;
    # the eval pod admits no ingress.
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert all("Egress" not in o["spec"]["policyTypes"] for o in policies)
    (policy,) = [
        o for o in policies if o["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "eval"
    ]
    assert policy["spec"]["ingress"] == []
    suspended = _one(_objs(CI / "08-eval-katib-values.yaml", eval__suspend=True), "Job", "eval")
    assert suspended["spec"]["suspend"] is True
    no_eval = r.load_values(r.ROOT / "jobs/tiny/stage1-depth.yaml")
    no_eval["motif"].pop("eval", None)  # a stage without a motif.eval section has no eval Job
    assert not [o for o in r.objects(r.render(no_eval, "x")) if o["metadata"]["name"] == "x-eval"]


def test_eval_results_must_be_writable():
    values = r.load_values(CI / "08-eval-katib-values.yaml")
    values["motif"]["eval"]["out"] = "/checkpoints/elsewhere/eval"
    with pytest.raises(r.RenderError, match="motif.eval.out"):
        r.render(values, "x")


def test_katib_experiment_sweeps_the_korean_share_with_the_stage_pytorchjob():
    objs = _objs(CI / "08-eval-katib-values.yaml")
    exp = _one(objs, "Experiment")
    spec = exp["spec"]
    assert spec["algorithm"]["algorithmName"] == "grid" and spec["maxTrialCount"] == 5
    (param,) = spec["parameters"]
    assert param["parameterType"] == "categorical" and param["feasibleSpace"]["list"] == [
        "0.1",
        "0.3",
        "0.5",
        "0.7",
        "0.9",
    ]
    assert spec["objective"]["objectiveMetricName"] == "objective"
    assert spec["objective"]["additionalMetricNames"] == ["heldout_bpb_en", "heldout_bpb_ko"]
    source = spec["metricsCollectorSpec"]["source"]["fileSystemPath"]
    assert (spec["metricsCollectorSpec"]["collector"]["kind"], source["format"]) == ("File", "JSON")
    trial = spec["trialTemplate"]
    assert trial["primaryContainerName"] == "pytorch"
    master = trial["trialSpec"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["command"][:5] == ["motif-torchrun", "-m", "motif", "mix", "trial"]
    assert master["command"][master["command"].index("--ko") + 1] == "${trialParameters.koShare}"
    assert master["command"][master["command"].index("--result") + 1] == source["path"]
    # The stage's own job is unchanged beside it.
    assert _one(objs, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"
    ] == ["motif-torchrun", "-m", "motif", "train", "/etc/motif/stage.yaml"]


def test_katib_needs_a_korean_source():
    values = r.load_values(CI / "08-eval-katib-values.yaml")
    for s in values["motif"]["data"]["sources"]:
        s["language"] = "en"
    with pytest.raises(r.RenderError, match="language: ko"):
        r.render(values, "x")


def test_priority_class_created_when_asked():
    objs = _objs(CI / "08-eval-katib-values.yaml")
    pc = _one(objs, "PriorityClass")
    assert (pc["metadata"]["name"], pc["value"], pc["globalDefault"]) == ("motif-training", 200000, False)
    pod = _one(objs, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["priorityClassName"] == "motif-training" and pod["terminationGracePeriodSeconds"] == 900
    values = r.load_values(r.ROOT / "jobs/tiny/stage0-base.yaml")
    values["priorityClass"] = {"create": True}
    with pytest.raises(r.RenderError, match="priorityClassName"):
        r.render(values, "x")
