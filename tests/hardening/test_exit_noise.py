"""A finished run exits 0 on every rank, without noise. With more than two ranks a heartbeat thread
calls into the rendezvous store every second; it was a daemon thread never stopped, and when the
interpreter finalized while it was inside a store call, the forced unwind of that thread through
C++ frames called std::terminate ("terminate called without an active exception", SIGABRT): torchrun
reported a complete run as failed (3 of 18 fsdp resumes 2 -> 3 ranks). `dist.close` now stops and
joins it before the process group is destroyed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..train.conftest import PYTHON, stage_section, subprocess_env, train_command, write_stage

# Each rank joins a world of three, keeps its heartbeat inside store calls nearly all the time
# (interval 0: the moment of exit always finds it there), closes and leaves the interpreter normally.
PROBE = """
import threading, time
from motif.train import dist
world = dist.init("cpu", 30)
dist._heartbeat.interval_s = 0.0
time.sleep(0.5)
dist.close(world)
alive = [t.name for t in threading.enumerate() if t.name == "motif-heartbeat"]
print(f"rank {world.rank}: heartbeat alive after close: {alive}", flush=True)
"""


def _torchrun(script: list[str], cwd: Path, nproc: int = 3) -> subprocess.CompletedProcess:
    argv = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *script]
    return subprocess.run(argv, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=180)


def test_every_rank_of_three_leaves_without_terminate_after_close(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    done = _torchrun(["probe.py"], tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 0 and "terminate called" not in text, text[-3000:]
    # Each rank's line (torchrun forwards the ranks' output into one stream: lines may interleave).
    assert done.stdout.count("heartbeat alive after close: []") == 3, done.stdout
    assert "heartbeat alive after close: ['" not in done.stdout


@pytest.mark.slow
def test_a_finished_fsdp_resume_from_two_to_three_ranks_exits_0_without_noise(workdir):
    section = stage_section(
        "uneven",
        train={"max_steps": 6, "micro_batch_size": 2},
        data={"shards": 6},
        checkpoint={"every_steps": 2, "keep_last": 2},
        parallel={"engine": "fsdp", "procs_per_node": 2, "collective_timeout_s": 60},
    )
    stage = write_stage(workdir, section)
    first = subprocess.run(
        train_command(stage, "--max-steps", "4", nproc=2),
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    section["parallel"]["procs_per_node"] = 3
    stage = write_stage(workdir, section)
    done = subprocess.run(
        train_command(stage, nproc=3), cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0 and "terminate called" not in text, text[-3000:]
    assert "resumed from ck/uneven/step_00000002 at step 2" in text, text[-3000:]
    assert (workdir / "out/uneven/trained.json").is_file()
