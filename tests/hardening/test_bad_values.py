"""Values that used to pass: a source whose every document is empty (it trained on end-of-text
tokens alone), and `motif.data.shards` below the world size, which only rank 0 checked: the other
ranks waited in a barrier until the collective timeout killed them (exit 3; 143, the retryable
"preempted" status, under motif-torchrun). Both are now one line and exit 2, on every rank, at once."""

from __future__ import annotations

import time
from pathlib import Path

from ..train.conftest import stage_section, write_stage
from .test_bad_inputs import _snapshot, check_error, run_cli
from .test_unverified_checkpoints import WORLD, assert_gone, files, run_job


def test_a_source_whose_every_document_is_empty_is_refused(workdir):
    (workdir / "blank.jsonl").write_text('{"text": ""}\n' * 40 + '{"text": null}\n' * 10)
    section = stage_section("blank")
    section["data"]["sources"][1]["path"] = "blank.jsonl"
    stage = write_stage(workdir, section)
    before = _snapshot(workdir)
    code, stderr = run_cli(["train", str(stage.name), "--metrics-port", "0"], workdir)
    check_error(code, stderr, "train", ("blank.jsonl", "source 'en'", "every document is empty", "50 records"))
    assert _snapshot(workdir) == before and not (workdir / "out").exists()


def test_fewer_shards_than_ranks_is_refused_by_every_rank_before_any_barrier(workdir, zygote):
    # The stage file says one rank (so it loads), the job runs two: a resize the runtime must refuse.
    section = stage_section("few", data={"shards": 1}, parallel={"nodes": 1, "collective_timeout_s": 60})
    stage = write_stage(workdir, section)
    before = files(workdir)
    t0 = time.monotonic()
    codes, text, pids = run_job(zygote, workdir, stage, tag="few")
    elapsed = time.monotonic() - t0
    assert codes == [2] * WORLD, text[-3000:]
    for log in sorted((workdir / "logs").glob("few-*-rank*.log")):
        check_error(2, log.read_text(), "train", ("motif.data.shards", "1 shards, fewer than the 2 ranks"))
    assert elapsed < 30, f"{elapsed:.0f}s: a rank waited for the collective timeout"
    assert files(workdir) == before
    assert not list(Path(workdir / "ck/few").glob("step_*"))
    assert_gone(pids)


def test_fewer_shards_than_the_stage_files_ranks_is_refused_at_load(workdir):
    stage = write_stage(workdir, stage_section("few", data={"shards": 2}, parallel={"nodes": 4}))
    before = _snapshot(workdir)
    code, stderr = run_cli(["train", str(stage.name), "--metrics-port", "0"], workdir)
    check_error(code, stderr, "train", ("few.yaml", "motif.data.shards: 2 is fewer than the 4 ranks"))
    assert _snapshot(workdir) == before
