"""A full disk during an fsdp checkpoint: every rank exits 2 with one line naming the checkpoint,
the reason and the last complete checkpoint, and the partial `.step_N.tmp` is removed from the
full volume. torch.distributed.checkpoint wraps each rank's OSError in one CheckpointException
(a BaseException): it used to escape as a traceback of every rank's traceback."""

from __future__ import annotations

import pytest

from motif.train.checkpoint import check_complete

from ..train.conftest import stage_section, write_stage
from .test_bad_inputs import check_error
from .test_faults import small_filesystem
from .test_unverified_checkpoints import WORLD, assert_gone, run_job


@pytest.mark.slow
def test_a_full_disk_during_an_fsdp_checkpoint_is_one_line_and_leaves_no_partial_write(workdir, zygote):
    section = stage_section(
        "fullfs",
        train={"max_steps": 8, "micro_batch_size": 2},
        checkpoint={"every_steps": 2, "keep_last": 2},
        parallel={"engine": "fsdp", "nodes": WORLD, "collective_timeout_s": 30},
    )
    stage = write_stage(workdir, section)
    # One checkpoint (~1.5 MB) fits, the second does not. Without a mount, a per-file limit instead.
    with small_filesystem(workdir / "ck", "2500k") as fsize:
        if fsize is not None:
            pytest.fail("this test needs to mount a tmpfs (it runs as root)")
        codes, text, pids = run_job(zygote, workdir, stage, tag="full")
        assert codes == [2] * WORLD, text[-3000:]
        for log in sorted((workdir / "logs").glob("full-*-rank*.log")):
            line = check_error(2, log.read_text(), "train", ("cannot write the checkpoint", "No space left on device"))
        kept = sorted((workdir / "ck/fullfs").glob("step_*"))
        assert kept and all(check_complete(p) is None for p in kept)
        assert f"the last complete checkpoint is {kept[-1].relative_to(workdir)}" in line
        assert not list((workdir / "ck/fullfs").glob(".step_*")), "the partial write was left behind"
        assert_gone(pids)
