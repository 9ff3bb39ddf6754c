"""Training checkpoints: atomic directories, keep-last, resume-auto skipping, parts' state owned by the
manager and read back by another world size."""

import json
import logging

import pytest
import torch

from motif.errors import CheckpointError
from motif.train.checkpoint import CheckpointManager, check_complete, read_meta, union
from motif.train.dist import World

WORLD = World(0, 1, 0, torch.device("cpu"), None)


def _save(manager: CheckpointManager, step: int, payload: bytes = b"weights") -> None:
    manager.publish(step, lambda d: (d / "model.safetensors").write_bytes(payload), {"stage": "s", "parts": {}})


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
        m.publish(20, boom, {"stage": "s"})
    assert m.latest().name == "step_00000010"
    assert check_complete(tmp_path / "ck" / "step_00000010") is None
    assert not (tmp_path / "ck" / "step_00000020").exists()


class Counter:
    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class Shards:
    """Per-rank state keyed by what it describes (as the data shards are)."""

    def __init__(self, owned):
        self.positions = dict.fromkeys(owned, 0)

    def state_dict(self):
        return {"positions": {str(k): v for k, v in self.positions.items()}}

    def load_state_dict(self, state):
        self.positions = {k: state["positions"][str(k)] for k in self.positions}


def test_the_manager_saves_and_loads_its_parts_and_decides_when(tmp_path):
    train, shards = Counter(7), Shards([0, 1])
    m = CheckpointManager(tmp_path / "ck", 2, WORLD, every_steps=5, parts={"train": train}, rank_parts={"data": shards})
    assert [s for s in range(1, 16) if m.due(s, last_step=15)] == [5, 10]  # the last step writes the output
    shards.positions = {0: 11, 1: 12}
    path = m.save(10, {"stage": "s"})
    meta = read_meta(path)
    assert meta["parts"] == {"train": {"value": 7}} and meta["stage"] == "s" and meta["world_size"] == 1
    train.value, shards.positions = 0, {0: 0, 1: 0}
    m.load(path)
    assert train.value == 7 and shards.positions == {0: 11, 1: 12}


def test_per_rank_state_written_by_two_ranks_is_read_by_one(tmp_path):
    ranks = [World(r, 2, r, torch.device("cpu"), None) for r in (0, 1)]
    ck = tmp_path / "ck" / "step_00000004"
    ck.mkdir(parents=True)
    for world, owned, pos in zip(ranks, ([0], [1]), (40, 41), strict=True):
        shards = Shards(owned)
        shards.positions = {owned[0]: pos}
        (ck / f"rank_{world.rank:05d}.json").write_text(json.dumps({"data": shards.state_dict()}))
    files = {p.name: p.stat().st_size for p in ck.iterdir()}
    meta = {"format": "motif-train-checkpoint/2", "step": 4, "world_size": 2, "engine": None, "parts": {}, "stage": "s"}
    (ck / "meta.json").write_text(json.dumps({**meta, "files": files}))
    one = Shards([0, 1])
    CheckpointManager(tmp_path / "ck", 2, WORLD, rank_parts={"data": one}).load(ck)
    assert one.positions == {0: 40, 1: 41}  # both shards, each where its rank left it


def test_union_merges_nested_keys_of_every_rank():
    assert union([{"n": 2, "s": {"0": 1}, "t": {"2/0": 5}}, {"n": 2, "s": {"1": 3}, "t": {"2/1": 6}}]) == {
        "n": 2,
        "s": {"0": 1, "1": 3},
        "t": {"2/0": 5, "2/1": 6},
    }


def test_a_checkpoint_of_another_engine_is_refused_by_name(tmp_path):
    class Tensors:
        def __init__(self, name):
            self.name = name

        def snapshot(self, copy):
            return lambda directory: (directory / "t.bin").write_bytes(b"x") and {}

        def load(self, directory, verifier):
            raise AssertionError("not reached")

    path = CheckpointManager(tmp_path / "ck", 2, WORLD, tensors=Tensors("fsdp")).save(3, {"stage": "s"})
    with pytest.raises(CheckpointError, match="written by engine fsdp, this run uses deepspeed"):
        CheckpointManager(tmp_path / "ck", 2, WORLD, tensors=Tensors("deepspeed")).load(path)


def test_checksums_taken_while_writing_are_recorded_and_verify(tmp_path):
    from motif.storage import integrity
    from motif.train.slices import write_tensors

    class Tensors:
        name = "ddp"

        def snapshot(self, copy):
            tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
            return lambda directory: {"model.safetensors": write_tensors(directory / "model.safetensors", tensors)}

        def load(self, directory, verifier):
            pass

    m = CheckpointManager(tmp_path / "ck", 2, WORLD, tensors=Tensors())
    path = m.save(4, {"stage": "s"})
    recorded = read_meta(path)["checksums"]
    assert set(recorded) == {"model.safetensors", "rank_00000.json"}
    for name, want in recorded.items():  # the checksum taken while writing is the file's
        assert want == integrity.entry(path / name, integrity.checksum_file(path / name))
    assert m.find("auto") == path


def test_an_fsync_failure_leaves_no_checkpoint_and_names_the_last_one(tmp_path, monkeypatch):
    import motif.train.checkpoint as ckpt

    m = CheckpointManager(tmp_path / "ck", keep_last=5, world=WORLD)
    _save(m, 10)

    def full(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ckpt, "fsync_path", full)
    with pytest.raises(ckpt.WriteError, match="No space left on device.*last complete checkpoint is .*step_00000010"):
        _save(m, 20)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step_00000010"]


def test_a_load_checks_every_file_from_the_bytes_it_reads_and_names_a_changed_one(tmp_path):
    """One pass: the engine's reads feed the checksums (find reads no byte); a flipped byte in a tensor
    file is a CorruptCheckpoint naming it, raised after the load, on every rank."""
    from motif.train.checkpoint import CorruptCheckpoint
    from motif.train.slices import TensorReader, write_tensors

    tensors = {f"w{i}": torch.randn(64, 33) for i in range(4)}
    read_back: dict[str, torch.Tensor] = {}
    streams, hashed_while_reading = [], []

    class Tensors:
        name = "ddp"

        def snapshot(self, copy):
            return lambda directory: {"model.safetensors": write_tensors(directory / "model.safetensors", tensors)}

        def load(self, directory, verifier):
            with TensorReader.file(directory / "model.safetensors", verifier) as reader:
                for key, value in tensors.items():
                    read_back[key] = torch.empty_like(value)
                    reader.read_into(key, 0, value.numel(), read_back[key].view(-1))
            streams.append(verifier.streams["model.safetensors"])
            hashed_while_reading.append(streams[-1].hashed)

    m = CheckpointManager(tmp_path / "ck", 2, WORLD, tensors=Tensors())
    path = m.save(4, {"stage": "s"})
    m.load(path)
    assert all(torch.equal(read_back[k], tensors[k]) for k in tensors)
    size = (path / "model.safetensors").stat().st_size
    (stream,) = streams
    assert stream.hashed == size  # every byte is in the checksum...
    assert stream.read_for_hash < 1024  # ...and only the header was read for it alone: one pass
    assert hashed_while_reading == [size]  # as the reads went, not all at the end after them

    victim = path / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[-7] ^= 0x10
    victim.write_bytes(bytes(data))
    assert m.find("auto") == path  # sizes only: the content is checked by the load
    with pytest.raises(CorruptCheckpoint, match=r"model.safetensors: checksum mismatch") as caught:
        m.load(path)
    assert caught.value.path == path
    with pytest.raises(CheckpointError, match="none verifies"):
        m.find("auto", [(path, caught.value.problem)])


class Weights:
    """An engine's tensors in miniature: `snapshot(copy)` as the engines take it."""

    name = "ddp"

    def __init__(self):
        self.w = torch.zeros(4)
        self.release = None  # a threading.Event the writer waits for, to hold a write in flight

    def snapshot(self, copy):
        from motif.train.engines import held
        from motif.train.slices import write_tensors

        tensors = {"w": held(self.w, copy)}

        def write(directory):
            if self.release is not None:
                assert self.release.wait(10)
            return {"model.safetensors": write_tensors(directory / "model.safetensors", tensors)}

        return write

    def load(self, directory, verifier):
        from safetensors.torch import load_file

        self.w = load_file(str(directory / "model.safetensors"))["w"]


def test_an_asynchronous_checkpoint_holds_the_state_of_its_step_while_training_goes_on(tmp_path):
    import threading

    train, weights = Counter(1), Weights()
    m = CheckpointManager(tmp_path / "ck", 3, WORLD, parts={"train": train}, tensors=weights)
    weights.w += 1
    weights.release = threading.Event()
    m.save_async(1, {"stage": "s"}, WORLD)
    weights.w += 10  # the next steps change the state while the checkpoint is written
    train.value = 2
    assert m.latest() is None, "visible before its files were written"
    weights.release.set()
    path = m.wait()
    assert path is not None and path.name == "step_00000001" and m.wait() is None
    assert read_meta(path)["parts"] == {"train": {"value": 1}}
    m.load(path)
    assert torch.equal(weights.w, torch.ones(4)) and train.value == 1


def test_a_save_waits_for_the_asynchronous_one_and_a_failed_one_raises_at_the_wait(tmp_path, monkeypatch):
    from motif.errors import WriteError

    weights = Weights()
    m = CheckpointManager(tmp_path / "ck", 3, WORLD, tensors=weights)
    m.save_async(1, {"stage": "s"}, WORLD)
    assert m.save(2, {"stage": "s"}).name == "step_00000002"  # finished step 1 first
    assert [p.name for p in m.candidates()] == ["step_00000002", "step_00000001"]

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("motif.train.slices.write_tensors", full)
    m.save_async(3, {"stage": "s"}, WORLD)
    with pytest.raises(WriteError, match=r"step_00000003: cannot write the checkpoint .*last complete checkpoint is"):
        m.wait()
    assert m.latest().name == "step_00000002" and not list((tmp_path / "ck").glob(".step_*.tmp"))
