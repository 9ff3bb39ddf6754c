"""Render the motif-stage chart with real Helm, lint it, and validate every object it makes.

Helm (the Go SDK, through helm-python-sdk) renders and lints; core kinds are validated against
the Kubernetes OpenAPI schemas (kubernetes-validate); custom resources (PyTorchJob, TrainJob,
PodMonitor, PrometheusRule) against their CRD's openAPIV3Schema, made strict: an API server
silently prunes unknown fields of a custom resource, so a misspelt key would otherwise vanish at
install time instead of failing here. Katib's Experiment, whose CRD carries no schema (its webhook
validates), is checked against Katib's OpenAPI spec, and its trial template against the PyTorchJob
CRD. Every object is then checked for what the API server enforces beyond JSON Schema
(motif_dev/deploy/apirules.py): list-map and set uniqueness, and the CRDs' CEL rules.

    python -m motif_dev.deploy.render --lint --validate            # every stage file and ci scenario
    python -m motif_dev.deploy.render -o out/manifests jobs/tiny/stage1-depth.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "motif-stage"
KUBE_VERSION = "1.31.0"
NAMESPACE = "motif"

# Custom resources the chart renders -> the CRD file (in the shared schemas folder) describing them.
CRD_FILES = {
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


# Custom resources validated against an OpenAPI spec instead of a CRD: (file, schema name).
OPENAPI_FILES = {
    ("kubeflow.org/v1beta1", "Experiment"): ("katib.v1beta1.openapi.json", "v1beta1.Experiment"),
}


class RenderError(Exception):
    """A values file the chart rejects, a lint finding, or an object that fails validation."""


def schemas_dir() -> Path:
    """CRD schemas: $MOTIF_SCHEMAS, else the upstream copies in tests/schemas (see SOURCES.md there)."""
    return Path(os.environ.get("MOTIF_SCHEMAS", ROOT / "tests" / "schemas"))


def stage_files() -> list[Path]:
    return sorted((ROOT / "jobs").rglob("*.yaml"))


def ci_files() -> list[Path]:
    return sorted((CHART / "ci").glob("*-values.yaml"))


def release_name(values: dict[str, Any]) -> str:
    """The release name the docs use for a stage: motif-<stage name>."""
    return f"motif-{values.get('motif', {}).get('name', 'stage')}"


def load_values(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise RenderError(f"{path}: a values file must be a mapping")
    return doc


@functools.cache
def _chart():
    import helm_python

    with _helm_stderr():
        return helm_python.Chart.load(CHART)


@contextlib.contextmanager
def _helm_stderr():
    """Drop the Go library's INFO line saying, on every chart load, that the chart's monitoring/
    is a symbolic link (which is how it is meant to be); pass anything else through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if "found symbolic link in path" not in line:
                    sys.stderr.write(line)


def render(values: dict[str, Any], name: str, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` (NOTES.txt included)."""
    import helm_python

    try:
        with _helm_stderr():
            return _chart().render(values=values, name=name, namespace=namespace, is_install=True)
    except helm_python.HelmError as e:
        raise RenderError(str(e)) from None


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a render, in template order."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def lint(values: dict[str, Any], namespace: str = NAMESPACE) -> list[str]:
    """`helm lint --strict` findings (warnings and errors; info messages left out)."""
    import helm_python

    with _helm_stderr():
        report = helm_python.lint(CHART, values, strict=True, namespace=namespace, kube_version=f"v{KUBE_VERSION}")
    found = [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    return found + list(report.get("errors") or [])


# ---- validation ------------------------------------------------------------------------------


def strict_schema(schema: Any) -> Any:
    """A CRD openAPIV3Schema as a strict JSON Schema: unknown fields are errors, int-or-string is
    integer or string. Objects marked x-kubernetes-preserve-unknown-fields stay open."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: strict_schema(v) for k, v in schema.items()}
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    return s


@functools.cache
def _crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD serving `api_version`/`kind`, as the CRD file holds it."""
    path = schemas_dir() / CRD_FILES[(api_version, kind)]
    if not path.is_file():
        raise RenderError(f"{path}: CRD schema not found (set MOTIF_SCHEMAS to the folder holding the CRD files)")
    crd = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    (spec,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return spec["schema"]["openAPIV3Schema"]


@functools.cache
def _crd_validator(api_version: str, kind: str):
    import jsonschema

    schema = strict_schema(copy.deepcopy(_crd_schema(api_version, kind)))
    # The API server owns metadata; check the fields a chart may set.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


@functools.cache
def _openapi(file: str) -> dict[str, Any]:
    path = schemas_dir() / file
    if not path.is_file():
        raise RenderError(f"{path}: OpenAPI spec not found (set MOTIF_SCHEMAS to the folder holding it)")
    return json.loads(path.read_text())["components"]["schemas"]


@functools.cache
def _openapi_validator(api_version: str, kind: str):
    import jsonschema

    file, name = OPENAPI_FILES[(api_version, kind)]
    definitions = strict_schema(copy.deepcopy(_openapi(file)))
    definitions["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] = {"type": "object"}
    schema = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": definitions}}
    return jsonschema.Draft7Validator(schema)


@functools.cache
def _core_schema(api_version: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema, $defs) of a core kind, from kubernetes-validate's Kubernetes OpenAPI schemas."""
    import re

    from kubernetes_validate import utils

    folder = f"kubernetes-json-schema/v{KUBE_VERSION}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group}.json", KUBE_VERSION)
    return schema, utils.schema_contents(f"{folder}/_definitions.json", KUBE_VERSION)["$defs"]


def _schema_errors(validator, obj: dict[str, Any], where: str, what: str) -> None:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:10]]
        raise RenderError(f"{where}: invalid against {what}:\n  " + "\n  ".join(lines))


def api_rules(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would refuse beyond JSON Schema (list-map/set keys, CEL rules); with
    `old`, as an update of that object (transition rules such as "field is immutable" run)."""
    from motif_dev.deploy import apirules

    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_FILES:
        return apirules.check(obj, _crd_schema(*key), old=old)
    if key in OPENAPI_FILES:
        file, name = OPENAPI_FILES[key]
        problems = apirules.check(obj, {"$ref": name}, _openapi(file), old=old)
        trial = (((obj.get("spec") or {}).get("trialTemplate") or {}).get("trialSpec")) or {}
        if (trial.get("apiVersion"), trial.get("kind")) in CRD_FILES:
            problems += [f"spec.trialTemplate.trialSpec: {p}" for p in api_rules(trial)]
        return problems
    schema, definitions = _core_schema(*key)
    return apirules.check(obj, schema, definitions, old=old)


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    """Raise RenderError when `obj` is not a valid object of its kind, or when an API server would
    refuse it (as a create, or with `old` as an update of that object)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if key in CRD_FILES:
        _schema_errors(_crd_validator(*key), obj, where, "its CRD schema")
    elif key in OPENAPI_FILES:
        _schema_errors(_openapi_validator(*key), obj, where, f"{OPENAPI_FILES[key][0]}")
        trial = dict(obj["spec"]["trialTemplate"]["trialSpec"])
        # Katib names each trial; validate the template as the trial job it becomes.
        trial["metadata"] = {**(trial.get("metadata") or {}), "name": "trial"}
        validate(trial)
    else:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path)) or "<root>"
            raise RenderError(f"{where}: {path}: {e.message}") from None
        except kubernetes_validate.SchemaNotFoundError:
            raise RenderError(f"{where}: no schema for {key[0]} {key[1]} in Kubernetes {KUBE_VERSION}") from None
    problems = api_rules(obj, old)
    if problems:
        raise RenderError(f"{where}: the API server would refuse it:\n  " + "\n  ".join(problems[:10]))


# ---- command line ----------------------------------------------------------------------------


@dataclass
class Result:
    source: Path
    objects: list[dict[str, Any]]
    problems: list[str]


def check(path: Path, do_lint: bool, do_validate: bool) -> Result:
    values = load_values(path)
    problems: list[str] = []
    try:
        objs = objects(render(values, release_name(values)))
    except RenderError as e:
        return Result(path, [], [f"render: {e}"])
    if do_lint:
        problems += [f"lint: {p}" for p in lint(values)]
    if do_validate:
        for obj in objs:
            try:
                validate(obj)
            except RenderError as e:
                problems.append(f"validate: {e}")
    return Result(path, objs, problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motif_dev.deploy.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="values files (default: jobs/**/*.yaml and chart ci/)")
    parser.add_argument("--lint", action="store_true", help="helm lint --strict with each values file")
    parser.add_argument("--validate", action="store_true", help="validate every object (core kinds and CRDs)")
    parser.add_argument("-o", "--out", type=Path, help="write the manifests of each values file here")
    args = parser.parse_args(argv)
    files = args.files or stage_files() + ci_files()
    failed = 0
    for path in files:
        result = check(path, args.lint, args.validate)
        kinds = ", ".join(sorted({o["kind"] for o in result.objects}))
        rel = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        if result.problems:
            failed += 1
            print(f"FAIL {rel}", *[f"  {p}" for p in result.problems], sep="\n")
        else:
            print(f"ok   {rel}: {len(result.objects)} objects ({kinds})")
        if args.out and result.objects:
            args.out.mkdir(parents=True, exist_ok=True)
            target = args.out / f"{path.parent.name}-{path.stem}.yaml"
            target.write_text(yaml.safe_dump_all(result.objects, sort_keys=False))
    if failed:
        print(f"{failed} of {len(files)} values files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
