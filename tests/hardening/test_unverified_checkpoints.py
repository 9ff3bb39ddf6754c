"""Checkpoints of which none verifies: `--resume auto` stops (exit 2, one line naming them) instead
of restarting from the stage's start; `--resume none` starts over with them kept aside, so pruning
never deletes a checkpoint of the new run that verifies while keeping the old ones that do not.
On every engine (each writes its own tensor files), two ranks each."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from motif.storage import integrity

from ..train.conftest import free_port, stage_section, write_stage
from .test_bad_inputs import _snapshot, check_error

WORLD = 2


def run_job(zygote, workdir: Path, stage: Path, *args: str, tag: str) -> tuple[list[int], str, list[int]]:
    """The ranks of one job, as a PyTorchJob pod starts them: their statuses, rank 0's log, their pids."""
    port = str(free_port())
    ranks = []
    for rank in range(WORLD):
        env = {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        env["MASTER_PORT"] = port
        log = workdir / "logs" / f"{tag}-{time.monotonic_ns()}-rank{rank}.log"
        ranks.append(zygote.spawn(["train", str(stage), "--metrics-port", "0", *args], cwd=workdir, log=log, env=env))
    codes = [r.wait(timeout=240) for r in ranks]
    return codes, ranks[0].text(), [r.pid for r in ranks]


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} left behind"


def files(workdir: Path) -> dict[str, tuple[int, str]]:
    """Every file of the run but the logs: modification time and checksum."""
    return {k: v for k, v in _snapshot(workdir).items() if not k.startswith("logs/")}


def verifies(path: Path) -> bool:
    meta = json.loads((path / "meta.json").read_text())
    return integrity.verify(path, meta["checksums"]) is None


def tensor_files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file() and f.suffix not in (".json",))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp", "deepspeed"])
def test_checkpoints_that_all_fail_verification_stop_the_run_and_are_never_pruned_first(workdir, zygote, engine):
    section = stage_section(
        "unv",
        train={"max_steps": 8, "micro_batch_size": 2},
        checkpoint={"every_steps": 2, "keep_last": 3},
        parallel={"engine": engine, "nodes": WORLD, "collective_timeout_s": 30},
    )
    stage = write_stage(workdir, section)
    codes, text, pids = run_job(zygote, workdir, stage, "--max-steps", "7", tag="first")
    assert codes == [0] * WORLD, text[-3000:]
    ck = workdir / "ck/unv"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_00000002", "step_00000004", "step_00000006"]
    # Three ways to fail: a flipped bit (same size), a truncated file, a lost shard.
    flipped = tensor_files(ck / "step_00000006")[-1]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = tensor_files(ck / "step_00000004")[-1]
    truncated.write_bytes(truncated.read_bytes()[:-1])
    tensor_files(ck / "step_00000002")[0].unlink()
    before = files(workdir)

    # auto: the run stops before training, every file as it was.
    codes, text, more = run_job(zygote, workdir, stage, tag="auto")
    assert codes == [2] * WORLD, text[-3000:]
    line = check_error(2, text, "train", ("ck/unv holds 3 checkpoint(s) and none verifies", "--resume none"))
    for name in ("step_00000006", "step_00000004", "step_00000002"):
        assert name in line
    assert files(workdir) == before
    assert_gone(pids + more)

    # none: a start over on this checkpoint directory (another output, so nothing it holds is replaced),
    # saving after every step: the old, failing checkpoints have higher steps than the new ones.
    again = {**section, "output": "out/unv-again", "checkpoint": {**section["checkpoint"], "every_steps": 1}}
    stage.write_text(json.dumps({"motif": again}))
    codes, text, more = run_job(zygote, workdir, stage, "--resume", "none", "--max-steps", "3", tag="none")
    assert codes == [0] * WORLD, text[-3000:]
    steps = sorted(p.name for p in ck.iterdir() if p.name.startswith("step_") and "." not in p.name)
    assert steps == ["step_00000001", "step_00000002"], steps
    assert all(verifies(ck / s) for s in steps)
    aside = {p.name.split(".")[0]: p for p in ck.glob("step_*.abandoned-*")}
    assert sorted(aside) == ["step_00000002", "step_00000004", "step_00000006"]
    for name, path in aside.items():  # kept byte for byte
        for f in path.rglob("*"):
            if f.is_file():
                key = str(Path("ck/unv") / name / f.relative_to(path))
                assert before[key][1] == _snapshot(f.parent)[f.name][1], key
    assert_gone(more)
    assert os.path.isdir(workdir / "out/unv-again")
