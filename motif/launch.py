"""Launching `motif train`: the command line every rank runs, and a torchx component for it.

torchx runs the same job on a laptop and on a cluster:

    torchx run -s local_cwd motif/launch.py:train jobs/tiny/stage0-base.yaml --nproc_per_node 2
    torchx run -s kubernetes -cfg queue=default,namespace=motif motif/launch.py:train \\
        /workspace/jobs/tiny/stage0-base.yaml --nnodes 2 --nproc_per_node 8 --gpu 8 --image REGISTRY/motif:TAG

`-s kubernetes` submits a Volcano Job (torchx's Kubernetes scheduler needs Volcano, not the
Kubeflow training operator): use it on clusters without the operator; with the operator, the
Helm chart's PyTorchJob runs the same `torchrun -m motif train` command. See docs/training.md.
"""

# No `from __future__ import annotations`: torchx reads the component's real type hints.
from typing import Dict, List, Optional  # noqa: UP035 - torchx's argument parser wants typing generics

from torchx import specs

# The module and subcommand of `motif train`, as torchrun and the PyTorchJob pods run it.
TRAIN_MODULE = "motif"
TRAIN_ARGS = ["train"]


def train_argv(stage_file: str, *args: str) -> list[str]:
    """`-m motif train STAGE_FILE ARGS...`: what follows `python` or `torchrun` on every rank."""
    return ["-m", TRAIN_MODULE, *TRAIN_ARGS, stage_file, *args]


def train(
    stage_file: str,
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    image: str = "localhost/motif-cpu:0.1.0",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,  # noqa: N803 - torchx's own spelling
    max_retries: int = 0,
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,  # noqa: UP006, UP045
    mounts: Optional[List[str]] = None,  # noqa: UP006, UP045
) -> specs.AppDef:
    """`motif train STAGE_FILE` on nnodes x nproc_per_node ranks (torchrun elastic rendezvous).

    Args:
        stage_file: stage file, relative to the working directory of the job
        script_args: more `motif train` arguments (e.g. --max-steps 10 --resume auto)
        nnodes: nodes (pods); each runs torchrun with nproc_per_node processes
        nproc_per_node: processes per node (GPUs per pod, or CPU processes)
        image: container image (ignored by the local_cwd scheduler)
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        max_retries: times the scheduler restarts a failed job (it resumes from the last checkpoint)
        rdzv_port: rendezvous port on the first node
        env: extra environment variables
        mounts: volume mounts, torchx syntax (type=volume,src=PVC,dst=/checkpoints)
    """
    from torchx.components import dist

    env = dict(env or {})
    env.setdefault("OMP_NUM_THREADS", "1" if gpu == 0 else "8")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("LOGLEVEL", "INFO")
    return dist.ddp(
        *TRAIN_ARGS,
        stage_file,
        *script_args,
        m=TRAIN_MODULE,
        image=image,
        name="motif/train",
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}",
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
