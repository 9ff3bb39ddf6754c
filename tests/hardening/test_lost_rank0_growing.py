"""Losing rank 0 while it grows the stage's checkpoint (the other ranks wait for it): they exit 3 naming
rank 0, within the heartbeat's window, instead of waiting hours for a word that never comes."""

from __future__ import annotations

import signal
import time

import pytest

from ..train.conftest import free_port, stage_section, write_stage


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_losing_rank0_while_it_grows_ends_the_others_with_exit_3(workdir, zygote, tmp_path, how):
    from motif.model import Llama, ModelArgs
    from motif.model.checkpoint import save

    # Large enough that growing it takes long enough to be caught in the act.
    args = ModelArgs(384, 512, 1024, 4, 8, 2, max_position_embeddings=256, torch_dtype="float32")
    model = Llama(args)
    model.init_weights(seed=0)
    save(model, workdir / "src")
    section = stage_section(
        "grow0",
        model=None,
        input="src",
        growth={"output": "grown", "layers": 8, "hidden": 1024, "intermediate": 2048, "heads": 16, "ramp_steps": 2},
        parallel={"nodes": 2, "collective_timeout_s": 20},
    )
    stage = write_stage(workdir, section)
    port = str(free_port())
    ranks = [
        zygote.spawn(
            ["train", str(stage), "--metrics-port", "0"],
            workdir,
            workdir / f"rank{r}.log",
            env={"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
        )
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 120
        while not list(workdir.glob(".grown.partial-*")):
            assert ranks[0].poll() is None, ranks[0].text()[-2000:]
            assert time.monotonic() < deadline, "the growth never started"
            time.sleep(0.001)
        ranks[0].kill(how)
        t0 = time.monotonic()
        code = ranks[1].wait(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        ranks[0].kill(signal.SIGKILL)
        ranks[0].wait(timeout=30)
    text = ranks[1].text()
    assert code == 3, text[-2000:]
    assert "rank 1/2: lost rank 0 while it grew grown" in text and "Traceback" not in text, text[-2000:]
    assert elapsed < 60
    assert not (workdir / "grown").exists()  # the partial growth never became the grown checkpoint
