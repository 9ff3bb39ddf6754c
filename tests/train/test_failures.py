"""Failure paths of `motif train`: a lost rank, non-finite losses, and user errors."""

import os
import signal
import subprocess
import time

import pytest

from motif.metrics.jsonl import read

from .conftest import MOTIF_TRAIN, PYTHON, free_port, motif_train, stage_section, subprocess_env, write_stage


def _wait_for_step(jsonl, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jsonl.exists() and any(r.get("step", 0) >= step and "motif_loss" in r for r in read(jsonl)):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no step {step} in {jsonl}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "how", "victim"),
    [
        ("ddp", signal.SIGKILL, 1),
        ("ddp", signal.SIGKILL, 0),
        ("ddp", signal.SIGSTOP, 1),
        ("fsdp", signal.SIGKILL, 1),
        ("deepspeed", signal.SIGKILL, 0),
    ],
    ids=["killed-rank1", "killed-rank0-store-host", "hung-rank1", "fsdp-killed-rank1", "ds-rank0"],
)
def test_a_lost_rank_makes_the_survivor_exit_nonzero_promptly(workdir, engine, how, victim):
    """Two ranks as two PyTorchJob pods (one process each); one is SIGKILLed (its sockets close) or
    SIGSTOPped (a hung node: only the collective timeout can tell) in the middle of training."""
    timeout_s = 15
    section = stage_section(
        "lost",
        train={"max_steps": 100000},
        checkpoint={"every_steps": 100000},
        parallel={"engine": engine, "nodes": 2, "collective_timeout_s": timeout_s},
    )
    stage = write_stage(workdir, section)
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = subprocess_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [PYTHON, *MOTIF_TRAIN, str(stage), "--metrics-port", "0"]
        procs.append(
            subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    try:
        _wait_for_step(workdir / "ck/lost/metrics.jsonl", 3, procs[0])
        os.kill(procs[victim].pid, how)
        t0 = time.monotonic()
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=timeout_s + 45)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL also ends a stopped process
                p.wait()
    assert survivor.returncode == 3, err[-2000:]
    assert f"rank {1 - victim}/2: lost contact with a peer rank at step" in err
    assert f"(lost rank {victim};" in err
    assert elapsed < timeout_s + 20  # a closed socket is noticed at once, a hung peer at the timeout


@pytest.mark.slow
def test_nan_policy_stop_keeps_the_last_good_checkpoint(workdir):
    section = stage_section("nan", train={"max_steps": 8, "nan_policy": "stop"}, checkpoint={"every_steps": 2})
    stage = write_stage(workdir, section)
    r = motif_train(workdir, stage, MOTIF_FAULT_NAN_STEP="5")
    assert r.returncode == 4
    assert "step 6: non-finite loss" in r.stderr and "last good checkpoint: ck/nan/step_00000004" in r.stderr
    assert not (workdir / "out/nan").exists()
    assert sorted(p.name for p in (workdir / "ck/nan").glob("step_*")) == ["step_00000002", "step_00000004"]
    records = read(workdir / "ck/nan/metrics.jsonl")
    assert records[-1]["motif_nonfinite_steps_total"]["stop"] == 1


@pytest.mark.slow
def test_nan_policy_skip_skips_the_step_and_counts_it(workdir):
    section = stage_section("skip", train={"max_steps": 6, "nan_policy": "skip"})
    stage = write_stage(workdir, section)
    r = motif_train(workdir, stage, MOTIF_FAULT_NAN_STEP="2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "non-finite loss or gradient" in r.stderr and "step skipped" in r.stderr
    last = read(workdir / "ck/skip/metrics.jsonl")[-1]
    assert last["motif_nonfinite_steps_total"] == {"skip": 1, "stop": 0}
    assert (workdir / "out/skip/config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml"], "missing.yaml: cannot read stage file"),
        (["STAGE", "--resume", "nowhere"], "--resume: nowhere: not a checkpoint directory"),
        (["STAGE", "--max-steps", "0"], "--max-steps: expected > 0, got 0"),
    ],
)
def test_user_errors_are_one_line(workdir, args, message):
    stage = write_stage(workdir, stage_section("err"))
    args = [str(stage) if a == "STAGE" else a for a in args]
    r = subprocess.run(
        [PYTHON, *MOTIF_TRAIN, *args],
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_tokenizer_larger_than_the_model_vocab_is_refused(workdir):
    section = stage_section("vocab")
    section["model"]["vocab_size"] = 100
    r = motif_train(workdir, write_stage(workdir, section))
    assert r.returncode == 2 and "more than the model's vocab_size 100" in r.stderr
