"""Run a sweep's proxies on the cluster: one Helm release of charts/motif-stage per proxy.

Each proxy stage file is the values of its release (`motif-<proxy>`), submitted to a Kueue
LocalQueue (`kueue.queueName`): the PyTorchJobs are created suspended and Kueue admits them as
quota frees up, so a sweep of nine proxies waits for capacity instead of failing. The proxies
read the stage's grown checkpoint (grown once before the sweep) and write only under their own
`motif.checkpoint.dir`, so the chart's growth Job and shared monitoring objects are off.

Before anything reaches the cluster, every release is rendered, linted (`helm lint --strict`) and
validated against the Kubernetes and CRD schemas, exactly as `make chart` checks the stage files.
`--dry-run` stops there, plus `helm install --dry-run=client` of each release.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from motif.errors import MotifError
from motif.mix.sweep import Sweep


def _renderer() -> ModuleType:
    """The chart renderer of the checkout this package runs from. The wheel ships neither the chart nor
    the schemas it is validated against, so `--helm` runs from a checkout of the repository."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "motif_dev" / "deploy" / "render.py").is_file() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        from motif_dev.deploy import render
    except ImportError:
        raise MotifError(
            f"--helm: renders charts/motif-stage from a checkout of motif, and {checkout} is not one "
            "(the wheel ships no chart): run `motif mix sweep --helm` from the repository"
        ) from None
    return render


def release(proxy_name: str) -> str:
    return f"motif-{proxy_name}"


def check(values: dict[str, Any], name: str, namespace: str) -> list[dict[str, Any]]:
    """Render, lint and validate one release; its objects, or a MotifError naming the first problem."""
    render = _renderer()
    try:
        objects = render.objects(render.render(values, name, namespace))
    except render.RenderError as e:
        raise MotifError(f"{name}: the chart refuses the proxy's values: {' '.join(str(e).split())}") from None
    problems = render.lint(values, namespace)
    if problems:
        raise MotifError(f"{name}: helm lint: {problems[0]}")
    for obj in objects:
        try:
            render.validate(obj)
        except render.RenderError as e:
            raise MotifError(f"{name}: {' '.join(str(e).split())}") from None
    return objects


def install(
    sweep_dir: Path, sweep: Sweep, docs: dict[str, dict[str, Any]], *, namespace: str, dry_run: bool
) -> list[dict[str, Any]]:
    """Check every release, then install each one (or only `--dry-run=client`). Writes each
    release's manifests to `<sweep>/<proxy>.manifest.yaml`; returns helm's release records."""
    import helm_python

    render = _renderer()
    checked = {}
    for proxy in sweep.proxies:
        checked[proxy.name] = check(docs[proxy.name], release(proxy.name), namespace)
    for proxy in sweep.proxies:
        path = sweep_dir / f"{proxy.name}.manifest.yaml"
        path.write_text(yaml.safe_dump_all(checked[proxy.name], sort_keys=False))
    config = helm_python.Config(namespace=namespace, storage_driver="memory" if dry_run else None)
    records = []
    for proxy in sweep.proxies:
        try:
            rel = config.install(
                render._chart(),
                release(proxy.name),
                docs[proxy.name],
                namespace=namespace,
                dry_run="client" if dry_run else None,
                description=f"motif mix sweep of {sweep.stage}: {proxy.name}",
                labels={"motif.dev/sweep": sweep.stage},
            )
        except helm_python.HelmError as e:
            raise MotifError(f"{release(proxy.name)}: helm install failed: {' '.join(str(e).split())}") from None
        proxy.status = "checked" if dry_run else "submitted"
        records.append(rel)
    return records
