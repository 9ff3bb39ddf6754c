"""Training checkpoints: pickle-free nested state, atomic directories, keep-last, resume-auto skipping."""

import json
import logging

import pytest
import torch

from motif.errors import CheckpointError
from motif.train.checkpoint import CheckpointManager, check_complete, read_meta
from motif.train.dist import World
from motif.train.state import flatten, load_state, save_state, unflatten

WORLD = World(0, 1, 0, torch.device("cpu"), None)


def test_nested_state_round_trips_without_pickle(tmp_path):
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 2)}, 1: {"x": [torch.ones(2), None]}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95), "params": [0, 1], "foreach": True, "name": "a"}],
    }
    save_state(state, tmp_path / "opt")
    back = load_state(tmp_path / "opt")
    assert back["param_groups"] == state["param_groups"]
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["state"][1]["x"][1] is None and isinstance(back["param_groups"][0]["betas"], tuple)
    assert json.loads((tmp_path / "opt.json").read_text())  # the skeleton is plain JSON
    with pytest.raises(TypeError, match="without pickle"):
        flatten({"bad": object()})
    tensors, skeleton = flatten([torch.zeros(1)])
    assert unflatten(tensors, skeleton)[0].shape == (1,)


def _save(manager: CheckpointManager, step: int, payload: bytes = b"weights") -> None:
    manager.save(step, lambda d: (d / "model.safetensors").write_bytes(payload), {"stage": "s"})


def test_keep_last_and_latest(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep_last=2, world=WORLD)
    assert m.latest() is None
    for step in (10, 20, 30):
        _save(m, step)
    assert [p.name for p in m.candidates()] == ["step_00000030", "step_00000020"]
    assert m.latest().name == "step_00000030"
    meta = read_meta(m.latest())
    assert meta["step"] == 30 and meta["files"] == {"model.safetensors": 7}
    assert not list((tmp_path / "ck").glob(".*.tmp"))


def test_resume_auto_skips_an_incomplete_checkpoint(tmp_path, caplog):
    m = CheckpointManager(tmp_path / "ck", keep_last=5, world=WORLD)
    for step in (10, 20, 30):
        _save(m, step)
    # step 30 damaged after the fact (a copy cut short), a step 40 that never got its meta.json,
    # and a stale temporary directory from a killed save.
    (tmp_path / "ck" / "step_00000030" / "model.safetensors").write_bytes(b"wei")
    (tmp_path / "ck" / "step_00000040").mkdir()
    (tmp_path / "ck" / "step_00000040" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "ck" / ".step_00000050.tmp").mkdir()
    with caplog.at_level(logging.WARNING):
        assert m.latest().name == "step_00000020"
    assert "step_00000040: no meta.json" in caplog.text
    assert "model.safetensors has 3 bytes, meta.json says 7" in caplog.text
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        read_meta(tmp_path / "ck" / "step_00000040")
    _save(m, 60)  # the next save clears the stale temporary directory
    assert not (tmp_path / "ck" / ".step_00000050.tmp").exists()


def test_a_failed_write_leaves_no_checkpoint(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep_last=2, world=WORLD)
    _save(m, 10)

    def boom(d):
        (d / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        m.save(20, boom, {"stage": "s"})
    assert m.latest().name == "step_00000010"
    assert check_complete(tmp_path / "ck" / "step_00000010") is None
    assert not (tmp_path / "ck" / "step_00000020").exists()
