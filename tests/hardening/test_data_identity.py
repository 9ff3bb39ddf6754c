"""A resume reads the data its checkpoint was trained on, identified by content: every checkpoint
records each local data file's size and checksum, and a resume after a source was appended to (or
edited to the same size) is refused in one line naming the source and the file, instead of going on
with another document order (documents trained twice, others never)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from ..train.conftest import stage_section, write_stage
from .test_bad_inputs import check_error
from .test_unverified_checkpoints import assert_gone, files


def _run(zygote, workdir: Path, stage: Path, *args: str) -> tuple[int, str, int]:
    log = workdir / "logs" / f"run-{time.monotonic_ns()}.log"
    child = zygote.spawn(["train", str(stage), "--metrics-port", "0", *args], cwd=workdir, log=log)
    return child.wait(timeout=240), child.text(), child.pid


@pytest.mark.slow
@pytest.mark.parametrize("change", ["appended", "same-size-edit"])
def test_a_source_changed_between_a_run_and_its_resume_is_refused(workdir, zygote, change):
    shutil.copy(workdir / "data/en.jsonl", workdir / "en.jsonl")  # the session's corpus stays untouched
    section = stage_section("ident", train={"max_steps": 6}, checkpoint={"every_steps": 2, "keep_last": 3})
    section["data"]["sources"][1]["path"] = "en.jsonl"
    stage = write_stage(workdir, section)
    code, text, pid = _run(zygote, workdir, stage, "--max-steps", "4")
    assert code == 0, text[-3000:]
    data = (workdir / "en.jsonl").read_bytes()
    if change == "appended":
        (workdir / "en.jsonl").write_bytes(data + b'{"text": "one more document, appended after the run"}\n')
        what = "was appended to ("
    else:
        at = data.index(b'"text": "') + len(b'"text": "')
        (workdir / "en.jsonl").write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :])
        what = "has other content (same size"
    before = files(workdir)
    code, text, again = _run(zygote, workdir, stage)
    check_error(code, text, "train", ("motif.data.sources ('en'): en.jsonl " + what, "ck/ident/step_00000002"))
    assert files(workdir) == before
    assert_gone([pid, again])
