"""The helm commands of docs/operations.md and docs/deployment.md work as pasted: each one is
parsed like the helm CLI would (-n, -f, --set, --set-json) and rendered with real Helm, and the
objects the kubectl commands name are objects the chart creates."""

from __future__ import annotations

import copy
import re
import shlex

import helm_python
import pytest

from motif_dev.deploy import render as r

DOCS = [r.ROOT / "docs" / "operations.md", r.ROOT / "docs" / "deployment.md"]


def _commands(prefix: str) -> list[str]:
    out = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        out += [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]
    return out


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def _helm(command: str) -> tuple[str, str, dict]:
    """(release, namespace, values) of a `helm install|template` command line."""
    args = shlex.split(command.split("|")[0])[2:]
    positional, values, namespace = [], {}, "default"
    while args:
        arg = args.pop(0)
        if arg in ("-n", "--namespace"):
            namespace = args.pop(0)
        elif arg in ("-f", "--values"):
            values = _merge(values, r.load_values(r.ROOT / args.pop(0)))
        elif arg == "--set":
            values = _merge(values, helm_python.parse_set_string(args.pop(0)))
        elif arg == "--set-json":
            values = _merge(values, helm_python.parse_set_json(args.pop(0)))
        elif arg == "--timeout":
            args.pop(0)
        else:
            assert not arg.startswith("-"), f"unexpected option {arg} in: {command}"
            positional.append(arg)
    release, chart = positional
    assert chart == "charts/motif-stage"
    return release, namespace, values


HELM = _commands("helm install") + _commands("helm template")


def test_the_docs_have_helm_commands():
    assert len(HELM) >= 8


@pytest.mark.parametrize("command", HELM)
def test_helm_command_renders(command):
    release, namespace, values = _helm(command)
    objs = r.objects(r.render(copy.deepcopy(values), release, namespace))
    for obj in objs:
        r.validate(obj)
    jobs = [o for o in objs if o["kind"] in ("PyTorchJob", "TrainJob")]
    assert [j["metadata"]["name"] for j in jobs] == [release]


def test_kubectl_commands_name_objects_the_chart_creates():
    """`kubectl ... pytorchjob/NAME`, `job/NAME-grow` and `NAME-master-0` refer to releases the docs
    install, in the namespace they install them in."""
    installed = {}
    for command in HELM:
        release, namespace, values = _helm(command)
        installed[release] = (namespace, values)
    kubectl = _commands("kubectl -n motif") + _commands("kubectl motif")
    assert len(kubectl) >= 10
    for command in kubectl:
        for name in re.findall(r"pytorchjob[/ ]([a-z0-9-]+)", command):
            assert name in installed, command
        for name in re.findall(r"job/([a-z0-9-]+)-grow", command):
            assert name in installed and installed[name][1]["motif"].get("growth"), command
        for name in re.findall(r"\b([a-z0-9-]+)-master-0\b", command):
            assert name in installed, command
        for name in re.findall(r"app\.kubernetes\.io/instance=([a-z0-9-]+)", command):
            assert name in installed, command


def test_deletes_by_label_are_scoped_to_one_release():
    """A `kubectl delete -l` in the docs names its release: a selector such as
    app.kubernetes.io/part-of=motif alone would delete the objects of every stage in the namespace."""
    deletes = [c for c in _commands("kubectl -n motif delete") if " -l " in c]
    assert deletes
    for command in deletes:
        assert "app.kubernetes.io/instance=" in command.split(" -l ", 1)[1], command
