"""What `motif train` trusts when it resumes or reruns: checkpoints that prove themselves, settings
bound to a checkpoint, a rollback that keeps the abandoned branch, a finished stage never replaced
by less, and one job per stage."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ..train.conftest import stage_section, write_stage


def _section(name: str, **train) -> dict:
    return stage_section(name, train={"max_steps": 6, **train}, checkpoint={"every_steps": 2, "keep_last": 5})


def _run(zygote, workdir: Path, stage: Path, *args: str, tag: str = "run") -> tuple[int, str]:
    log = workdir / "logs" / f"{tag}-{time.monotonic_ns()}.log"
    child = zygote.spawn(["train", str(stage), "--metrics-port", "0", *args], cwd=workdir, log=log)
    return child.wait(timeout=240), child.text()


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_resume_auto_skips_a_checkpoint_whose_bytes_changed_and_ends_the_same(workdir, zygote):
    stage = write_stage(workdir, _section("sum"))
    code, text = _run(zygote, workdir, stage, "--max-steps", "6")
    assert code == 0, text[-2000:]
    reference = _weights(workdir / "out/sum")
    # Damage step 4's weights without changing their size (a bit flip on the volume), and drop the output.
    model = workdir / "ck/sum/step_00000004/model.safetensors"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0xFF
    model.write_bytes(bytes(data))
    for f in (workdir / "out/sum").iterdir():
        f.unlink()
    (workdir / "out/sum").rmdir()
    code, text = _run(zygote, workdir, stage)
    assert code == 0, text[-2000:]
    assert "skipping checkpoint ck/sum/step_00000004" in text and "model.safetensors" in text, text[-2000:]
    assert "resumed from ck/sum/step_00000002 " in text
    final = _weights(workdir / "out/sum")
    assert all(torch.equal(reference[k], final[k]) for k in reference)


@pytest.mark.slow
def test_a_setting_that_changes_the_data_order_is_refused_and_a_safe_one_warned(workdir, zygote):
    section = _section("set")
    stage = write_stage(workdir, section)
    code, text = _run(zygote, workdir, stage, "--max-steps", "4")
    assert code == 0, text[-2000:]
    (workdir / "out/set/trained.json").unlink()  # a stage still to be trained further
    before = _digest(workdir / "ck")
    changed = {**section, "data": {**section["data"], "seq_len": 16}}
    stage.write_text(yaml.safe_dump({"motif": changed}, sort_keys=False))
    code, text = _run(zygote, workdir, stage, "--resume", "ck/set/step_00000002")
    errors = [line for line in text.splitlines() if line.startswith("motif train: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in text, text[-2000:]
    assert "motif.data.seq_len: 16, but ck/set/step_00000002 was written with 32" in errors[0]
    assert _digest(workdir / "ck") == before
    safe = {**section, "optim": {**section["optim"], "lr": 1.0e-3}}
    stage.write_text(yaml.safe_dump({"motif": safe}, sort_keys=False))
    code, text = _run(zygote, workdir, stage, "--resume", "ck/set/step_00000002")
    assert code == 0, text[-2000:]
    assert "motif.optim.lr: 0.001 (checkpoint ck/set/step_00000002: 0.003): applied from here on" in text


@pytest.mark.slow
def test_rolling_back_keeps_the_later_checkpoints_aside_and_auto_never_returns_to_them(workdir, zygote):
    stage = write_stage(workdir, _section("back", max_steps=8))
    code, text = _run(zygote, workdir, stage)
    assert code == 0, text[-2000:]
    later = {p.name: _digest(p) for p in (workdir / "ck/back").glob("step_0000000[46]")}
    code, text = _run(zygote, workdir, stage, "--resume", "ck/back/step_00000002")
    assert code == 0, text[-2000:]
    aside = sorted((workdir / "ck/back").glob("step_*.abandoned-*"))
    assert sorted(p.name.split(".")[0] for p in aside) == ["step_00000004", "step_00000006"]
    assert {p.name.split(".")[0]: _digest(p) for p in aside} == later  # kept, byte for byte
    # The rerun wrote its own step 4 and 6; auto resumes from those, never from the abandoned ones.
    assert json.loads((workdir / "ck/back/step_00000006/meta.json").read_text())["step"] == 6


@pytest.mark.slow
def test_a_finished_stage_is_not_retrained_nor_replaced_by_fewer_steps(workdir, zygote):
    stage = write_stage(workdir, _section("done"))
    code, text = _run(zygote, workdir, stage)
    assert code == 0, text[-2000:]
    before = _digest(workdir / "out/done")
    code, text = _run(zygote, workdir, stage)  # a restarted pod after the stage finished
    assert code == 0 and "already holds its 6 steps; nothing to do" in text, text[-2000:]
    code, text = _run(zygote, workdir, stage, "--max-steps", "3", "--resume", "none")
    errors = [line for line in text.splitlines() if line.startswith("motif train: error: ")]
    assert code == 2 and len(errors) == 1, text[-2000:]
    assert "holds stage done trained 6 steps; a run of 3 steps would replace it with less" in errors[0]
    assert _digest(workdir / "out/done") == before


@pytest.mark.slow
def test_a_second_job_of_the_same_stage_fails_at_once_naming_the_first(workdir, zygote):
    section = stage_section("busy", train={"max_steps": 100000}, checkpoint={"every_steps": 100000})
    stage = write_stage(workdir, section)
    first = zygote.spawn(["train", str(stage), "--metrics-port", "0"], cwd=workdir, log=workdir / "first.log")
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "ck/busy/metrics.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.text()[-2000:]
            time.sleep(0.1)
        t0 = time.monotonic()
        code, text = _run(zygote, workdir, stage, tag="second")
        elapsed = time.monotonic() - t0
    finally:
        first.kill()
        first.wait()
    errors = [line for line in text.splitlines() if line.startswith("motif train: error: ")]
    assert code == 2 and len(errors) == 1, text[-2000:]
    assert "motif.checkpoint.dir" in errors[0] and f"pid {first.pid}" in errors[0], errors[0]
    assert elapsed < 30
