"""SIGKILL in the middle of a run, then `--resume auto`: the final weights are bit-identical to an
uninterrupted run's, with 1 process and with 2 (torchrun)."""

import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from .conftest import motif_train, stage_section, subprocess_env, train_command, write_stage


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun's workers run in sessions of their own),
    each stopped first so none can notice the others dying: a node lost at once."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    for p in procs:
        p.send_signal(signal.SIGKILL)


def _tensors(directory):
    out = {}
    for name in ("model.safetensors", "optimizer.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_is_bit_identical(workdir, nproc):
    section = stage_section(
        f"kill{nproc}",
        train={"max_steps": 60, "micro_batch_size": 4, "grad_accum_steps": 2},
        checkpoint={"every_steps": 5, "keep_last": 2},
        parallel={"procs_per_node": nproc},
    )
    stage = write_stage(workdir, section)
    out, ck = workdir / "out" / section["name"], workdir / "ck" / section["name"]

    done = motif_train(workdir, stage, nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _tensors(out)
    shutil.rmtree(out)
    shutil.rmtree(ck)

    # The same run, SIGKILLed (the whole process group: torchrun and its workers) after its
    # second checkpoint, somewhere between two checkpoints.
    proc = subprocess.Popen(
        train_command(stage, nproc=nproc),
        cwd=workdir,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not (ck / "step_00000010").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    _kill_tree(proc.pid)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "the run finished before it could be killed"
    killed_at = max(int(p.name.split("_")[1]) for p in ck.glob("step_*"))
    assert 10 <= killed_at < 60

    resumed = motif_train(workdir, stage, "--resume", "auto", nproc=nproc)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    final = _tensors(out)
    assert final.keys() == reference.keys()
    mismatched = [k for k in reference if not torch.equal(reference[k], final[k])]
    assert not mismatched, mismatched[:5]
