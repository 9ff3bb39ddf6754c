"""The CPU image, built with podman on the local Debian base and run the way the chart runs it.

The stage config, commands, environment and mounts come from the chart rendered with real Helm:
the stage ConfigMap is mounted at /etc/motif, the workspace volume read-only except the stage's
own checkpoint directory, the root filesystem read-only, as uid 10001 with every capability
dropped and no network. torchrun gets the PET_* variables the training operator injects.

Budget: the first build takes ~3 min (debootstrap base ~1.5 min more if missing); with podman's
layer cache a rebuild takes ~30-70 s, and the tiny stages ~1.5 min. `make test` builds the image
before the tests start (a build artifact, as the venv is), so the suite's time is the tests'.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from motif import config
from motif_dev.deploy import images
from motif_dev.deploy import render as r

pytestmark = pytest.mark.slow

TINY = r.ROOT / "jobs" / "tiny"


@pytest.fixture(scope="module")
def image() -> str:
    """`make test` builds the image just before pytest starts (MOTIF_IMAGE_BUILT=1): use it as
    built; run alone, pytest builds it here (cached layers: about a minute)."""
    name = images.image_name()
    if os.environ.get("MOTIF_IMAGE_BUILT") == "1" and images.image_exists(name):
        return name
    return images.build()


def _check(result, what: str) -> str:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


class Stage:
    """A tiny stage file rendered by the chart: its stage.yaml, training and growth containers."""

    def __init__(self, name: str, release: str, tmp: Path):
        values = r.load_values(TINY / f"{name}.yaml")
        self.values = values
        self.objects = r.objects(r.render(values, release))
        (cm,) = [o for o in self.objects if o["kind"] == "ConfigMap" and "stage.yaml" in o.get("data", {})]
        self.etc = tmp / f"etc-{name}"
        self.etc.mkdir()
        (self.etc / "stage.yaml").write_text(cm["data"]["stage.yaml"])
        (job,) = [o for o in self.objects if o["kind"] == "PyTorchJob"]
        self.job = job
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        (self.trainer,) = pod["containers"]
        self.init = pod.get("initContainers", [])
        grow = [
            o
            for o in self.objects
            if o["kind"] == "Job" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "grow"
        ]
        self.grow = grow[0]["spec"]["template"]["spec"]["containers"][0] if grow else None
        self.stage = config.parse_stage(values["motif"])

    def env(self, container: dict) -> dict[str, str]:
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    def operator_env(self) -> dict[str, str]:
        """What the training operator injects into a single-pod PyTorchJob."""
        return {
            "PET_NPROC_PER_NODE": self.job["spec"]["nprocPerNode"],
            "PET_NNODES": "1",
            "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "localhost",
            "PET_MASTER_PORT": "23456",
        }

    def mounts(self, workspace: Path) -> dict[Path, str]:
        """The chart's volume mounts: /workspace read-only, the stage's checkpoint dir writable."""
        (mount,) = [m for m in self.trainer["volumeMounts"] if m.get("subPath")]
        own = workspace / mount["subPath"]
        own.mkdir(parents=True, exist_ok=True)
        os.chmod(own, 0o777)
        return {workspace: "/workspace:ro", own: mount["mountPath"], self.etc: "/etc/motif:ro"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The workspace volume of the tiny recipe: corpus, tokenizer and held-out sets, as `motif demo` makes them."""
    from motif.data.corpus import write_corpus
    from motif.demo import prepare_data
    from motif.eval.demo import HELDOUT_DOCS, HELDOUT_SEED

    ws = tmp_path_factory.mktemp("volume") / "workspace"
    prepare_data(ws, config.load_stage(TINY / "stage0-base.yaml"))
    write_corpus(ws / "data" / "heldout", HELDOUT_DOCS, seed=HELDOUT_SEED)  # the stages' motif.eval.heldout
    for path in [ws, *ws.rglob("*")]:
        os.chmod(path, 0o777 if path.is_dir() else 0o644)
    return ws


def test_image_runs_motif_as_non_root_on_a_read_only_root(image):
    out = _check(images.run(image, ["motif", "--help"]), "motif --help")
    for command in ("grow", "plan", "train", "status", "preflight", "demo"):
        assert command in out
    out = _check(images.run(image, ["sh", "-c", "command -v motif-torchrun"]), "motif-torchrun on PATH")
    assert out.strip() == "/opt/motif/bin/motif-torchrun"
    out = _check(images.run(image, ["motif", "preflight", "--help"]), "motif preflight --help")
    assert "STAGE_FILE" in out
    _check(images.run(image, ["python3", "-c", "import kubernetes"]), "the kubernetes client for helm test")
    script = "id -u; id -g; touch /opt/motif/x 2>/dev/null && echo writable || echo read-only; echo $HOME"
    out = _check(images.run(image, ["sh", "-c", script]), "id")
    assert out.split() == ["10001", "10001", "read-only", "/tmp/home"]
    probe = "import torch, motif; print(torch.__version__, torch.version.cuda)"
    out = _check(images.run(image, ["python3", "-c", probe]), "torch import")
    assert out.split() == ["2.13.0+cpu", "None"]


def test_motif_plan_of_the_tiny_recipe_in_the_image(image):
    out = _check(images.run(image, ["motif", "plan", "/recipes/tiny"], mounts={TINY: "/recipes/tiny:ro"}), "plan")
    for name in ("tiny-s0-base", "tiny-s1-depth", "tiny-s2-width"):
        assert name in out


def test_tiny_stages_train_and_grow_as_the_chart_runs_them(image, workspace, tmp_path):
    # Stage 0: the PyTorchJob's command, as is, plus a step limit.
    s0 = Stage("stage0-base", "motif-tiny-s0", tmp_path)
    cmd = [*s0.trainer["command"], *s0.trainer["args"], "--max-steps", "2"]
    assert cmd[:5] == ["motif-torchrun", "-m", "motif", "train", "/etc/motif/stage.yaml"]
    env = {**s0.env(s0.trainer), **s0.operator_env()}
    out = _check(images.run(image, cmd, s0.mounts(workspace), s0.trainer["workingDir"], env), "stage 0 training")
    assert "2 ranks" in out
    final0 = workspace / s0.stage.output
    assert (final0 / "config.json").is_file()

    # Stage 1: the growth Job's command, then the init container's wait, then training.
    s1 = Stage("stage1-depth", "motif-tiny-s1", tmp_path)
    mounts = s1.mounts(workspace)
    _check(
        images.run(image, s1.grow["command"], mounts, s1.grow["workingDir"], s1.env(s1.grow)),
        "stage 1 growth Job",
    )
    grown = workspace / s1.stage.growth.output
    assert (grown / "config.json").is_file() and (grown / "growth.json").is_file()
    (wait,) = s1.init
    _check(images.run(image, wait["command"], mounts, timeout=60), "wait-for-checkpoint init container")
    # The growth step is idempotent: running the hook again reuses the grown checkpoint.
    before = (grown / "growth.json").stat().st_mtime_ns
    _check(images.run(image, s1.grow["command"], mounts, s1.grow["workingDir"], s1.env(s1.grow)), "growth again")
    assert (grown / "growth.json").stat().st_mtime_ns == before
    cmd = [*s1.trainer["command"], *s1.trainer["args"], "--max-steps", "2"]
    env = {**s1.env(s1.trainer), **s1.operator_env()}
    out = _check(images.run(image, cmd, mounts, s1.trainer["workingDir"], env), "stage 1 training")
    assert (workspace / s1.stage.output / "config.json").is_file()

    # A stage cannot modify the previous stage's output: it is on the read-only part of the volume.
    result = images.run(image, ["sh", "-c", f"touch /workspace/{s0.stage.output}/config.json"], mounts)
    assert result.returncode != 0 and "Read-only file system" in result.stderr
