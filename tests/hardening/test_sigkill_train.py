"""`motif train` SIGKILLed at seeded random moments (ddp with 1 and 2 processes, fsdp and deepspeed with
2), restarted each time with `--resume auto`: it always continues, ends bit-identical to an
uninterrupted run, and consumes exactly the same samples (data position, per-language token counts
and per-step losses equal).

Moments: during start-up, between steps, inside a checkpoint write (killed as soon as the
temporary `.step_*.tmp` directory appears, before its rename) and inside the final output write.
Two processes are two ranks as two PyTorchJob pods; the whole job is lost at once (both stopped,
then killed), as when a node is preempted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from motif.metrics.jsonl import read
from motif.train.checkpoint import STEP_DIR, check_complete

from ..train.conftest import free_port, stage_section, write_stage

PLAN_SEED = 20261126
# (engine, ranks) -> kills: 11 for ddp, the sharded engines' own checkpoint formats get 4 each
# (each plan has two kills inside a checkpoint write and one inside the output write).
KILLS = {("ddp", 1): 6, ("ddp", 2): 5, ("fsdp", 2): 4, ("deepspeed", 2): 4}
# Asynchronous checkpoints (written on a thread while training goes on): a kill inside their write
# lands while the next steps run.
ASYNC_KILLS = {("ddp", 1): 4, ("fsdp", 2): 4, ("deepspeed", 2): 4}
CASES = [(*case, "disabled") for case in KILLS] + [(*case, "async") for case in ASYNC_KILLS]
MAX_STEPS = {1: 60, 2: 40}
EVERY = {1: 1, 2: 2}


def _section(name: str, engine: str, world: int, keep_last: int, async_mode: str = "disabled") -> dict:
    return stage_section(
        name,
        train={"max_steps": MAX_STEPS[world], "micro_batch_size": 2, "grad_accum_steps": 2},
        checkpoint={"every_steps": EVERY[world], "keep_last": keep_last, "async_mode": async_mode},
        parallel={"engine": engine, "nodes": world, "collective_timeout_s": 30},
    )


class Job:
    """The ranks of one attempt, forked by the zygote with the environment a PyTorchJob pod has."""

    def __init__(self, zygote, workdir: Path, stage: Path, world: int, tag: str):
        port = str(free_port())
        self.ranks = []
        for rank in range(world):
            env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}
            if world > 1:
                env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            log = workdir / "logs" / f"{tag}-rank{rank}.log"
            argv = ["train", str(stage), "--metrics-port", "0", "--resume", "auto"]
            self.ranks.append(zygote.spawn(argv, cwd=workdir, log=log, env=env))

    def alive(self) -> bool:
        return all(r.poll() is None for r in self.ranks)

    def kill(self) -> list[int]:
        for r in self.ranks:  # stop first: no rank can notice the others dying and exit on its own
            r.kill(signal.SIGSTOP)
        for r in self.ranks:
            r.kill(signal.SIGKILL)
        return [r.wait() for r in self.ranks]

    def wait(self) -> list[int]:
        return [r.wait(timeout=180) for r in self.ranks]

    def log(self) -> str:
        return "\n".join(r.text() for r in self.ranks)

    def tail(self) -> str:
        return "\n".join(r.text()[-2000:] for r in self.ranks)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("model.safetensors", "optimizer.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return out


def _until(condition, job: Job, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.alive(), f"the run ended before {what}:\n{job.tail()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{job.tail()}"
        time.sleep(0.001)


def _tmp_dirs(ck: Path) -> set[tuple[str, int]]:
    if not ck.is_dir():
        return set()
    return {(e.name, e.inode()) for e in os.scandir(ck) if e.name.startswith(".step_") and e.name.endswith(".tmp")}


def _logged_steps(jsonl: Path, offset: int) -> int:
    if not jsonl.exists():
        return 0
    with jsonl.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    steps = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "motif_loss" in record:
            steps.append(record["step"])
    return max(steps, default=0)


def _complete_steps(ck: Path) -> list[Path]:
    dirs = sorted(p for p in ck.iterdir() if STEP_DIR.match(p.name)) if ck.is_dir() else []
    for p in dirs:  # a visible step_* directory is always complete: the rename is its last act
        assert check_complete(p) is None, f"{p}: visible but incomplete: {check_complete(p)}"
    return dirs


def _kill_plan(engine: str, world: int, async_mode: str) -> list[str]:
    if async_mode == "async":
        rng, kills = random.Random(f"{PLAN_SEED}-{engine}-{world}-async"), ASYNC_KILLS[engine, world]
    else:
        rng = random.Random(f"{PLAN_SEED}-{world}" if engine == "ddp" else f"{PLAN_SEED}-{engine}-{world}")
        kills = KILLS[engine, world]
    kinds = ["write", "write"] + [rng.choice(["startup", "step", "step", "write"]) for _ in range(kills - 3)]
    rng.shuffle(kinds)
    return [*kinds, "final"]  # the last one inside the write of the stage's output


def _per_step(records: list[dict]) -> dict[int, tuple]:
    """step -> (loss, tokens) of each step record; a step logged twice (redone after a resume)
    must have logged the same values both times."""
    out: dict[int, tuple] = {}
    for r in records:
        if "motif_loss" not in r:
            continue
        value = (r["motif_loss"], r["motif_tokens_total"])
        assert out.setdefault(r["step"], value) == value, f"step {r['step']} logged {out[r['step']]} and {value}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "world", "async_mode"), CASES, ids=lambda v: str(v))
def test_sigkill_at_random_moments_then_resume_is_exact(workdir, zygote, engine, world, async_mode):
    rng = random.Random(f"{PLAN_SEED}-{world}-moments")
    ref_section = _section(f"ref{world}", engine, world, keep_last=1000)
    ref = Job(zygote, workdir, write_stage(workdir, ref_section), world, "ref")
    assert ref.wait() == [0] * world, ref.tail()

    section = _section(f"kill{world}", engine, world, keep_last=3, async_mode=async_mode)
    stage = write_stage(workdir, section)
    ck, out = workdir / "ck" / section["name"], workdir / "out" / section["name"]
    jsonl = ck / "metrics.jsonl"
    write_hits = final_hits = 0
    logs = []
    for attempt, kind in enumerate(_kill_plan(engine, world, async_mode)):
        before = _complete_steps(ck)
        resume_from = before[-1] if before else None
        stale = _tmp_dirs(ck)
        offset = jsonl.stat().st_size if jsonl.exists() else 0
        job = Job(zygote, workdir, stage, world, f"kill-{attempt}-{kind}")
        if kind == "startup":
            time.sleep(rng.uniform(0.1, 3.0))
        elif kind == "step":
            start = int(resume_from.name.split("_")[1]) if resume_from else 0
            target = start + rng.randint(1, 4)
            _until(lambda t=target, o=offset: _logged_steps(jsonl, o) >= t, job, f"step {target}")
            time.sleep(rng.uniform(0.0, 0.08))
        elif kind == "write":
            _until(lambda s=stale: _tmp_dirs(ck) - s, job, "checkpoint write")
        else:
            _until(lambda: list(out.parent.glob(f".{out.name}.partial-*")), job, "final output write")
        assert job.alive(), f"attempt {attempt} ({kind}) ended before it was killed:\n{job.tail()}"
        assert job.kill() == [-signal.SIGKILL] * world
        logs.append(job.log())
        assert not out.exists(), "the stage output appeared although the run was killed"
        _complete_steps(ck)  # every visible checkpoint is complete
        if kind == "write" and _tmp_dirs(ck) - stale:
            write_hits += 1
            (torn,) = _tmp_dirs(ck) - stale
            assert not (ck / torn[0].removeprefix(".").removesuffix(".tmp")).exists(), "torn write became visible"
        if kind == "final" and list(out.parent.glob(f".{out.name}.partial-*")):
            final_hits += 1
        if resume_from is not None and attempt > 0 and "resumed from" not in job.log():
            assert kind == "startup", f"attempt {attempt} did not resume:\n{job.tail()}"
        if resume_from is not None and "resumed from" in job.log():
            assert f"resumed from {resume_from.relative_to(workdir)} " in job.log(), job.tail()

    assert write_hits >= 1, "no kill landed inside a checkpoint write"
    asynchronous = "written while training goes on" in "".join(logs)
    assert asynchronous == (async_mode == "async"), "checkpoints were not written as checkpoint.async_mode says"
    assert final_hits == 1, "the kill meant for the output write missed it"

    latest = _complete_steps(ck)[-1]
    done = Job(zygote, workdir, stage, world, "final")
    assert done.wait() == [0] * world, done.tail()
    assert f"resumed from {latest.relative_to(workdir)} " in done.log()

    # The weights and Adam moments: bit-identical.
    reference, final = _tensors(workdir / "out" / ref_section["name"]), _tensors(out)
    assert final.keys() == reference.keys()
    assert [k for k in reference if not torch.equal(reference[k], final[k])] == []

    # The data: each kept checkpoint's data position (every rank) and token counts equal the
    # uninterrupted run's at that step; every step logged the same loss and cumulative tokens.
    ref_ck = workdir / "ck" / ref_section["name"]
    for path in _complete_steps(ck):
        twin = ref_ck / path.name
        for rank in range(world):
            mine = json.loads((path / f"rank_{rank:05d}.json").read_text())["data"]
            theirs = json.loads((twin / f"rank_{rank:05d}.json").read_text())["data"]
            assert mine == theirs, f"{path.name} rank {rank}: data position {mine} != {theirs}"
        assert (
            json.loads((path / "meta.json").read_text())["parts"]["train"]["tokens"]
            == json.loads((twin / "meta.json").read_text())["parts"]["train"]["tokens"]
        )
    mine, theirs = _per_step(read(jsonl)), _per_step(read(ref_ck / "metrics.jsonl"))
    assert sorted(mine) == sorted(theirs) == list(range(1, MAX_STEPS[world] + 1))
    assert mine == theirs
    last = read(jsonl)[-1]
    assert sum(last["motif_tokens_total"].values()) == MAX_STEPS[world] * 2 * 2 * 32 * world
