"""Faults other than a killed trainer: a killed `motif grow`, a lost rank of three, a diverging run
(NaN/inf) under both `train.nan_policy` values, and a full disk under checkpoints and outputs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from motif.metrics.jsonl import read
from motif.train.checkpoint import check_complete

from ..train.conftest import free_port, stage_section, write_stage

GROW_TARGETS = ["--layers", "8", "--hidden", "384", "--intermediate", "768", "--heads", "6"]


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _error_line(text: str, command: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(f"motif {command}: error: ")]
    assert len(lines) == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory) -> Path:
    """A 21 MB checkpoint: large enough that growing it takes a visible fraction of a second."""
    from motif.model import Llama, ModelArgs
    from motif.model.checkpoint import save

    args = ModelArgs(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = Llama(args)
    model.init_weights(seed=0)
    path = tmp_path_factory.mktemp("grow-src") / "src"
    save(model, path)
    return path


# ---- motif grow, killed ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_grow_leaves_no_partial_destination_and_a_rerun_is_identical(zygote, source_checkpoint, tmp_path):
    rng = random.Random(7)
    t0 = time.monotonic()
    ref = zygote.spawn(["grow", str(source_checkpoint), str(tmp_path / "ref"), *GROW_TARGETS], tmp_path, tmp_path / "r")
    assert ref.wait() == 0, ref.text()
    took = time.monotonic() - t0
    reference = _digest(tmp_path / "ref")

    dst = tmp_path / "grown"
    for attempt in range(3):
        child = zygote.spawn(
            ["grow", str(source_checkpoint), str(dst), *GROW_TARGETS], tmp_path, tmp_path / f"k{attempt}"
        )
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".grown.partial-*")):
            assert child.poll() is None, child.text()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.5 * took))
        assert child.poll() is None, "grow finished before it could be killed"
        child.kill()
        assert child.wait() == -signal.SIGKILL
        assert not dst.exists(), "a killed grow left a destination"

    again = zygote.spawn(["grow", str(source_checkpoint), str(dst), *GROW_TARGETS], tmp_path, tmp_path / "again")
    assert again.wait() == 0, again.text()
    assert _digest(dst) == reference

    # With --overwrite, a kill leaves the old complete output or the new one, never a mix.
    for attempt in range(2):
        child = zygote.spawn(
            ["grow", str(source_checkpoint), str(dst), *GROW_TARGETS, "--overwrite"], tmp_path, tmp_path / f"o{attempt}"
        )
        while not list(tmp_path.glob(".grown.partial-*")) and child.poll() is None:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.5 * took))
        child.kill()
        child.wait()
        assert not dst.exists() or _digest(dst) == reference


# ---- a lost rank of three ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_lost_rank_of_three_is_named_by_the_survivors(workdir, zygote):
    """tests/train covers two ranks; with three, the survivors find the lost one by a roll-call."""
    section = stage_section(
        "lost3",
        train={"max_steps": 100000},
        checkpoint={"every_steps": 100000},
        parallel={"nodes": 3, "collective_timeout_s": 30},
    )
    stage = write_stage(workdir, section)
    port = str(free_port())
    ranks = [
        zygote.spawn(
            ["train", str(stage), "--metrics-port", "0"],
            workdir,
            workdir / f"rank{rank}.log",
            env={
                "RANK": str(rank),
                "WORLD_SIZE": "3",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for rank in range(3)
    ]
    jsonl = workdir / "ck/lost3/metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (jsonl.exists() and any(r.get("step", 0) >= 3 and "motif_loss" in r for r in read(jsonl))):
            assert all(r.poll() is None for r in ranks), "\n".join(r.text()[-2000:] for r in ranks)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ranks[1].kill()
        t0 = time.monotonic()
        codes = [ranks[0].wait(timeout=60), ranks[2].wait(timeout=60)]
        elapsed = time.monotonic() - t0
    finally:
        for r in ranks:
            with contextlib.suppress(ProcessLookupError):
                r.kill()
            r.wait(timeout=30)
    assert codes == [3, 3], [r.text()[-2000:] for r in ranks]
    for survivor in (0, 2):
        text = ranks[survivor].text()
        assert f"rank {survivor}/3: lost contact with a peer rank" in text and "(lost rank 1;" in text, text[-2000:]
    assert elapsed < 45  # the collective timeout (30 s) plus the roll-call


# ---- non-finite losses -------------------------------------------------------------------------


def _diverging(name: str, policy: str, max_steps: int) -> dict:
    """No fault hook: a learning rate so large that the weights overflow fp32 within two steps."""
    return stage_section(
        name,
        optim={"lr": 1.0e30, "min_lr": 1.0e30, "warmup_steps": 0},
        train={"max_steps": max_steps, "nan_policy": policy},
        checkpoint={"every_steps": 1, "keep_last": 5},
    )


@pytest.mark.slow
def test_divergence_with_nan_policy_stop_keeps_the_last_good_checkpoint(workdir, zygote):
    stage = write_stage(workdir, _diverging("div-stop", "stop", 6))
    child = zygote.spawn(["train", str(stage), "--metrics-port", "0"], workdir, workdir / "stop.log")
    assert child.wait() == 4, child.text()[-3000:]
    text = child.text()
    match = re.search(r"step (\d+): non-finite loss or gradient .* last good checkpoint: (\S+)", text)
    assert match, text[-3000:]
    bad_step, last = int(match.group(1)), workdir / match.group(2)
    kept = sorted((workdir / "ck/div-stop").glob("step_*"))
    assert kept and kept[-1] == last and int(last.name.split("_")[1]) == bad_step - 1
    assert all(check_complete(p) is None for p in kept)
    assert not (workdir / "out/div-stop").exists()
    assert read(workdir / "ck/div-stop/metrics.jsonl")[-1]["motif_nonfinite_steps_total"] == {"skip": 0, "stop": 1}


@pytest.mark.slow
def test_divergence_with_nan_policy_skip_is_counted_on_the_exporter(workdir, zygote):
    section = _diverging("div-skip", "skip", 5)
    section["train"]["max_skipped_steps"] = 100
    stage = write_stage(workdir, section)
    child = zygote.spawn(
        ["train", str(stage), "--metrics-port", "0", "--linger-seconds", "20"], workdir, workdir / "skip.log"
    )
    deadline = time.monotonic() + 120
    while "stage div-skip done" not in child.text():
        assert child.poll() is None, child.text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    port = re.search(r"metrics at http://[^:]+:(\d+)/metrics", child.text()).group(1)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    child.kill()
    child.wait()
    skipped = read(workdir / "ck/div-skip/metrics.jsonl")[-1]["motif_nonfinite_steps_total"]
    assert skipped["skip"] >= 1 and skipped["stop"] == 0
    assert f'motif_nonfinite_steps_total{{action="skip"}} {float(skipped["skip"])}' in body, body
    assert child.text().count("step skipped") == skipped["skip"]


@pytest.mark.slow
def test_skipping_stops_past_max_skipped_steps_naming_the_last_good_checkpoint(workdir, zygote):
    stage = write_stage(workdir, _diverging("div-bound", "skip", 20))  # train.max_skipped_steps: 3 by default
    child = zygote.spawn(["train", str(stage), "--metrics-port", "0"], workdir, workdir / "bound.log")
    assert child.wait() == 4, child.text()[-3000:]
    lines = [line for line in child.text().splitlines() if line.startswith("motif train: step ")]
    assert len(lines) == 1 and "4 steps skipped, more than motif.train.max_skipped_steps 3: stopping" in lines[0]
    last = sorted((workdir / "ck/div-bound").glob("step_*"))[-1]
    assert f"last good checkpoint: {last.relative_to(workdir)}" in lines[0]
    assert not (workdir / "out/div-bound").exists()


# ---- a full disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    """A size-limited tmpfs at `path` (we run as root). Yields None, or the RLIMIT_FSIZE in bytes to
    give the child when this machine cannot mount (then only single files are limited)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    try:
        if mounted.returncode == 0:
            yield None
        else:
            yield int(size.removesuffix("k")) * 1024
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.slow
def test_a_full_disk_under_the_checkpoints_fails_cleanly_and_keeps_the_last_one(workdir, zygote):
    section = stage_section("full", train={"max_steps": 8}, checkpoint={"every_steps": 2, "keep_last": 2})
    stage = write_stage(workdir, section)
    with small_filesystem(workdir / "ck", "4000k") as fsize:
        child = zygote.spawn(["train", str(stage), "--metrics-port", "0"], workdir, workdir / "full.log", fsize=fsize)
        assert child.wait() == 2, child.text()[-3000:]
        line = _error_line(child.text(), "train")
        kept = sorted((workdir / "ck/full").glob("step_*"))
        assert kept and all(check_complete(p) is None for p in kept)
        assert "cannot write the checkpoint" in line and ("No space left on device" in line or "too large" in line)
        assert f"the last complete checkpoint is {kept[-1].relative_to(workdir)}" in line
        assert not list((workdir / "ck/full").glob(".step_*.tmp")), "the partial write was left behind"
        digest = _digest(kept[-1])
        # The disk grows back (here: a bigger filesystem); the run resumes from the kept checkpoint.
        if fsize is None:
            subprocess.run(["mount", "-o", "remount,size=64m", str(workdir / "ck")], check=True)
        resumed = zygote.spawn(["train", str(stage), "--metrics-port", "0"], workdir, workdir / "resumed.log")
        assert resumed.wait() == 0, resumed.text()[-3000:]
        assert f"resumed from {kept[-1].relative_to(workdir)} " in resumed.text()
        assert not kept[-1].exists() or _digest(kept[-1]) == digest


@pytest.mark.slow
def test_a_full_disk_under_the_stage_output_fails_cleanly(workdir, zygote):
    stage = write_stage(workdir, stage_section("fullout", train={"max_steps": 2}, checkpoint={"every_steps": 1}))
    with small_filesystem(workdir / "out", "600k") as fsize:
        child = zygote.spawn(["train", str(stage), "--metrics-port", "0"], workdir, workdir / "o.log", fsize=fsize)
        assert child.wait() == 2, child.text()[-3000:]
        line = _error_line(child.text(), "train")
        # Refused up front when the volume reports its free space (a mounted tmpfs), else at the write.
        assert ("out/fullout: cannot write" in line and "nothing was written there" in line) or (
            "not enough free space for the output out/fullout" in line
        ), line
        assert list((workdir / "out").iterdir()) == []
        if "not enough free space" in line:  # refused before the first step: nothing trained, nothing kept
            assert not list((workdir / "ck/fullout").glob("step_*"))
        else:  # refused at the output: the stage's checkpoints are intact
            assert check_complete(workdir / "ck/fullout/step_00000001") is None


@pytest.mark.slow
def test_a_full_disk_under_a_grow_output_fails_cleanly_and_keeps_the_old_output(zygote, source_checkpoint, tmp_path):
    root = tmp_path / "small"
    with small_filesystem(root, "36000k") as fsize:
        argv = ["grow", str(source_checkpoint), str(root / "grown"), "--layers", "8"]
        first = zygote.spawn(argv, tmp_path, tmp_path / "g1.log", fsize=fsize)
        assert first.wait() == 0, first.text()  # 8 layers (~29 MB) fit
        before = _digest(root / "grown")
        second = zygote.spawn([*argv, "--overwrite"], tmp_path, tmp_path / "g2.log", fsize=fsize)
        assert second.wait() == 2, second.text()
        line = _error_line(second.text(), "grow")
        if fsize is None:  # a real small volume: the free-space preflight refuses before writing
            assert f"{root}: not enough free space for the grown checkpoint {root / 'grown'}" in line, line
        else:  # a per-file size limit, which no preflight sees: the write fails and is removed
            assert f"{root / 'grown'}: cannot write" in line and "previous contents are untouched" in line, line
        assert _digest(root / "grown") == before
        assert sorted(p.name for p in root.iterdir()) == ["grown"]
        fresh = zygote.spawn(
            [*argv[:2], str(root / "other"), "--layers", "8"], tmp_path, tmp_path / "g3.log", fsize=fsize
        )
        assert fresh.wait() == 2
        expected = "not enough free space" if fsize is None else "nothing was written there"
        assert expected in _error_line(fresh.text(), "grow")
        assert sorted(p.name for p in root.iterdir()) == ["grown"]
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_width_growth_whose_file_cannot_be_written_fails_cleanly(zygote, source_checkpoint, tmp_path):
    """Width growth writes past the page cache on a thread of its own: a write refused by the system
    (here EFBIG, past a file-size limit) is still one error line, exit 2, and nothing left behind."""
    argv = ["grow", str(source_checkpoint), str(tmp_path / "wide"), "--hidden", "384", "--heads", "6"]
    child = zygote.spawn(argv, tmp_path, tmp_path / "w.log", fsize=4 << 20)  # the first shard is larger
    assert child.wait() == 2, child.text()[-3000:]
    line = _error_line(child.text(), "grow")
    assert f"{tmp_path / 'wide'}: cannot write" in line and "nothing was written there" in line, line
    assert re.search(r"/\.wide\.partial-[^/]+/motif-model[^/]*\.safetensors: File too large\)", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log"]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.slow
def test_a_lost_worker_of_a_torchrun_pod_fails_the_pod_naming_it(workdir):
    """One pod, two GPUs: torchrun's worker of rank 1 is SIGKILLed; the pod exits non-zero at once,
    naming rank 1 (torchrun's failure report, or rank 0's own line if it noticed first)."""
    from ..train.conftest import subprocess_env, train_command

    section = stage_section(
        "pod2",
        train={"max_steps": 100000},
        checkpoint={"every_steps": 100000},
        parallel={"procs_per_node": 2, "collective_timeout_s": 30},
    )
    stage = write_stage(workdir, section)
    proc = subprocess.Popen(
        train_command(stage, nproc=2),
        cwd=workdir,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    jsonl = workdir / "ck/pod2/metrics.jsonl"
    try:
        deadline = time.monotonic() + 180
        while not (jsonl.exists() and any(r.get("step", 0) >= 2 and "motif_loss" in r for r in read(jsonl))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        (victim,) = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert elapsed < 45, elapsed
    named_by_torchrun = re.search(r"rank: 1 \(local_rank: 1\)\s+exitcode\s*: -9", err)
    named_by_rank0 = "rank 0/2: lost contact with a peer rank" in err and "(lost rank 1;" in err
    assert named_by_torchrun or named_by_rank0, err[-3000:]
