"""The torchx component: `torchx run -s local_cwd motif/launch.py:train` runs the same 2-process
`torchrun -m motif train` job as the cluster, for real; the dry run shows the command it builds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from motif.launch import train, train_argv

from .conftest import ROOT, stage_section, subprocess_env, write_stage

TORCHX = str(Path(sys.executable).parent / "torchx")


def test_component_builds_the_torchrun_command():
    app = train("jobs/tiny/stage0-base.yaml", "--max-steps", "5", nnodes=2, nproc_per_node=8, gpu=8, image="img:1")
    (role,) = app.roles
    cmd = role.args[-1]
    assert role.image == "img:1" and role.num_replicas == 2 and role.resource.gpu == 8
    assert "--nnodes 2" in cmd and "--nproc_per_node 8" in cmd
    assert cmd.endswith("-m motif train jobs/tiny/stage0-base.yaml --max-steps 5")
    assert train_argv("s.yaml", "--resume", "auto") == ["-m", "motif", "train", "s.yaml", "--resume", "auto"]


def _env():
    env = subprocess_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # torchrun, as in the image
    return env


@pytest.mark.slow
def test_dryrun_for_kubernetes_renders_a_volcano_job(workdir):
    r = subprocess.run(
        [TORCHX, "run", "--dryrun", "--workspace", "", "-s", "kubernetes", "-cfg", "queue=default,namespace=motif",
         f"{ROOT}/motif/launch.py:train", "--stage_file", "jobs/tiny/stage0-base.yaml", "--nnodes", "2",
         "--nproc_per_node", "8", "--gpu", "8", "--image", "registry.example/motif:0.1.0"],
        cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "batch.volcano.sh/v1alpha1" in r.stdout and "schedulerName: volcano" in r.stdout
    assert "-m motif train jobs/tiny/stage0-base.yaml" in r.stdout


@pytest.mark.slow
def test_local_cwd_runs_the_two_process_job(workdir):
    stage = write_stage(workdir, stage_section("tx", train={"max_steps": 4}, parallel={"procs_per_node": 2}))
    r = subprocess.run(
        [TORCHX, "run", "--workspace", "", "-s", "local_cwd", f"{ROOT}/motif/launch.py:train",
         "--stage_file", stage.name, "--nproc_per_node", "2", "--", "--metrics-port", "0"],
        cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (workdir / "out/tx/config.json").exists()
    meta_world = [line for line in (workdir / "ck/tx/metrics.jsonl").read_text().splitlines() if "world_size" in line]
    assert '"motif_world_size":2' in meta_world[0]
