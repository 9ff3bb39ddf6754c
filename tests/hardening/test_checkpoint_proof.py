"""Checkpoints that prove themselves, and final writes that delete nothing that is not ours.

- `motif.save` records every file's checksum; `motif.load` checks them while it reads (each weight
  file is read once: verification costs no second read) and refuses NaN/inf weights;
  `motif.save` refuses to write a non-finite model at all.
- A grown checkpoint records a content fingerprint of its input: `motif grow --stage` reuses an
  output only while the input's bytes are the same (a same-shape retrain in place is caught).
- `atomic_dir` replaces a checkpoint directory, an empty one, or a link (never what it points to),
  and nothing else; leftovers are removed only by the destination's lease holder, and only ours.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import motif
from motif.errors import CheckpointError
from motif.model import Llama, ModelArgs
from motif.model.checkpoint import CHECKSUMS_NAME, load, save
from motif.storage import integrity
from motif.storage.atomic import MARKER, atomic_dir, remove_leftovers
from motif.storage.lease import acquire

from .test_bad_inputs import _snapshot, check_error, run_cli

ARGS = ModelArgs(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _model(seed: int) -> Llama:
    model = Llama(ARGS)
    model.init_weights(seed=seed)
    return model


def test_save_records_every_file_and_load_round_trips(tmp_path):
    model = _model(0)
    optimizer = {"exp_avg.model.norm.weight": torch.ones(32), "step.model.norm.weight": torch.tensor(3.0)}
    save(model, tmp_path / "ck", optimizer=optimizer, max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name != CHECKSUMS_NAME)
    record = integrity.read_record(tmp_path / "ck")
    assert sorted(record) == files and "optimizer.safetensors" in files and len(files) > 4
    assert integrity.verify(tmp_path / "ck", record) is None  # what was hashed while writing is what is on disk
    loaded = motif.load(tmp_path / "ck")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_load_reads_each_weight_file_once_and_verifies_it(tmp_path, monkeypatch):
    save(_model(0), tmp_path / "ck", max_shard_bytes=20_000)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "ck").glob("model*.safetensors")}
    read: dict[str, int] = {}
    real_preadv, real_pread = os.preadv, os.pread

    def preadv(fd, buffers, offset):
        n = real_preadv(fd, buffers, offset)
        read[os.readlink(f"/proc/self/fd/{fd}")] = read.get(os.readlink(f"/proc/self/fd/{fd}"), 0) + n
        return n

    def pread(fd, n, offset):
        data = real_pread(fd, n, offset)
        read[os.readlink(f"/proc/self/fd/{fd}")] = read.get(os.readlink(f"/proc/self/fd/{fd}"), 0) + len(data)
        return data

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "pread", pread)
    load(tmp_path / "ck")
    by_name = {Path(k).name: v for k, v in read.items()}
    for name, size in sizes.items():  # the header (8 bytes read by read_header, then again) aside
        assert size <= by_name[name] <= size + 8 + 4096, (name, by_name[name], size)


def test_load_refuses_a_flipped_bit_naming_the_file(tmp_path):
    save(_model(0), tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ck/model.safetensors: checksum mismatch"):
        load(tmp_path / "ck")


def test_non_finite_weights_are_never_saved_and_refused_at_load(tmp_path):
    model = _model(0)
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"tensor model.layers.1.self_attn.k_proj.weight holds non-finite"):
        save(model, tmp_path / "ck")
    assert not (tmp_path / "ck").exists() and not list(tmp_path.iterdir())
    from safetensors.torch import save_file

    save(_model(0), tmp_path / "hf")
    state = {k: v.clone() for k, v in _model(0).state_dict().items()}
    state["model.norm.weight"][3] = float("nan")
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))  # as another tool would, no record
    (tmp_path / "hf" / CHECKSUMS_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"hf/model.safetensors: tensor model.norm.weight holds non-finite"):
        load(tmp_path / "hf")


# ---- a grown checkpoint fingerprints its input ---------------------------------------------------


def _grow_stage_file(root: Path) -> Path:
    section = {
        "name": "s1",
        "input": "base",
        "output": "final",
        "growth": {"output": "grown", "layers": 4},
        "data": {
            "tokenizer": "tok",
            "seq_len": 16,
            "sources": [{"name": "a", "language": "en", "weight": 1.0, "path": "a"}],
        },
        "optim": {"lr": 1e-3},
        "train": {"max_steps": 2, "micro_batch_size": 1},
        "checkpoint": {"dir": "ck"},
    }
    path = root / "stage.yaml"
    path.write_text(yaml.safe_dump({"motif": section}))
    return path


def test_a_retrained_input_of_the_same_shape_is_not_taken_for_already_grown(tmp_path):
    save(_model(0), tmp_path / "base")
    stage = _grow_stage_file(tmp_path)
    assert run_cli(["grow", "--stage", str(stage)], tmp_path)[0] == 0
    fingerprint = json.loads((tmp_path / "grown" / "growth.json").read_text())["source"]["fingerprint"]
    code, err = run_cli(["grow", "--stage", str(stage)], tmp_path)
    assert code == 0, err  # same input: reused
    save(_model(1), tmp_path / "base")  # retrained in place: same shape, same names and sizes
    before = _snapshot(tmp_path)
    code, err = run_cli(["grow", "--stage", str(stage)], tmp_path)
    check_error(code, err, "grow", ("grown: already exists", "the weights of", "changed since"))
    assert _snapshot(tmp_path) == before
    code, err = run_cli(["grow", "--stage", str(stage), "--overwrite"], tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "grown" / "growth.json").read_text())["source"]["fingerprint"] != fingerprint


def test_the_grown_output_records_its_own_checksums(tmp_path):
    save(_model(0), tmp_path / "base", max_shard_bytes=20_000)
    (tmp_path / "base" / "tokenizer.json").write_text("{}")
    assert run_cli(["grow", "base", "grown", "--layers", "4", "--hidden", "48", "--heads", "6"], tmp_path)[0] == 0
    record = integrity.read_record(tmp_path / "grown")
    names = {p.name for p in (tmp_path / "grown").iterdir()} - {CHECKSUMS_NAME}
    assert set(record) == names and "tokenizer.json" in names and "growth.json" in names
    assert integrity.verify(tmp_path / "grown", record) is None


# ---- what a final write may replace --------------------------------------------------------------


def test_atomic_dir_replaces_a_checkpoint_an_empty_directory_or_a_link_and_nothing_else(tmp_path):
    save(_model(0), tmp_path / "ck")
    with atomic_dir(tmp_path / "ck", True) as tmp:
        (tmp / "config.json").write_text('{"model_type": "llama"}')
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json"]
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", True) as tmp:
        (tmp / "a").write_text("a")
    save(_model(0), tmp_path / "target")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with atomic_dir(tmp_path / "link", True) as tmp:
        (tmp / "b").write_text("b")
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "target" / "model.safetensors").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"), atomic_dir(tmp_path / "notes", True):
        pass
    with (
        pytest.raises(CheckpointError, match="contains the source"),
        atomic_dir(tmp_path, True, sources=[tmp_path / "ck"]),
    ):
        pass
    assert (tmp_path / "notes" / "x.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*.partial-*")) and not list(tmp_path.glob(".*.old-*"))


def test_leftovers_are_removed_only_by_the_lease_holder_and_only_if_ours(tmp_path):
    dst = tmp_path / "out"
    ours = tmp_path / ".out.partial-dead1"
    ours.mkdir()
    (ours / MARKER).write_text(json.dumps({"host": "elsewhere", "pid": 1, "start": 1, "boot": "b"}))
    (ours / "model.safetensors").write_bytes(b"half")
    foreign = tmp_path / ".out.partial-notmotif"
    foreign.mkdir()
    (foreign / "data").write_text("someone else's")
    with atomic_dir(dst, False) as tmp:  # no lease: nothing is removed
        (tmp / "config.json").write_text('{"model_type": "llama"}')
        (tmp / "model.safetensors").write_bytes(b"")
    assert ours.exists()
    with acquire(dst, "test") as lease, atomic_dir(dst, True, lease=lease) as tmp:
        (tmp / "config.json").write_text('{"model_type": "llama"}')
    assert not ours.exists() and (foreign / "data").read_text() == "someone else's"
    assert remove_leftovers(dst) == []


def test_ranks_verify_a_checkpoint_together_each_reading_its_share(tmp_path):
    from motif.model.checkpoint import open_checkpoint, verify_checkpoint

    save(_model(0), tmp_path / "ck", max_shard_bytes=20_000)
    ckpt = open_checkpoint(tmp_path / "ck")
    shares = [verify_checkpoint(ckpt, rank=r, world=3) for r in range(3)]
    assert sorted(n for share in shares for n in share) == sorted(verify_checkpoint(ckpt))
    assert all(shares) and not set(shares[0]) & set(shares[1])
    victim = sorted((tmp_path / "ck").glob("model-*.safetensors"))[-1]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x02
    victim.write_bytes(bytes(data))
    owner = next(r for r, share in enumerate(shares) if victim.name in share)
    with pytest.raises(CheckpointError, match=rf"{victim.name}: checksum mismatch"):
        verify_checkpoint(ckpt, rank=owner, world=3)
    verify_checkpoint(ckpt, rank=(owner + 1) % 3, world=3)  # the others do not read that file


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 1500)), max_size=12), st.integers(0, 4999))
def test_a_checksum_taken_from_reads_in_any_order_is_the_files_and_shows_a_flip(tmp_path_factory, reads, flip):
    """Whatever ranges a load reads, in whatever order (gaps, overlaps, re-reads, backwards), the
    checksum taken from them (plus the bytes they skipped) is the file's, and one changed byte shows."""
    from motif.storage import integrity
    from motif.storage.integrity import ReadVerifier, checksum_file, entry

    d = tmp_path_factory.mktemp("stream")
    data = bytes(random.Random(len(reads)).randbytes(5000))
    (d / "f.bin").write_bytes(data)
    # Chunks of 1000 bytes (16 MiB in the algorithm) so that reads cross their boundaries.
    with mock.patch.object(integrity, "HASH_CHUNK", 1000):
        recorded = {"f.bin": entry(d / "f.bin", checksum_file(d / "f.bin"))}
        for content, expect_ok in ((data, True), (data[:flip] + bytes([data[flip] ^ 1]) + data[flip + 1 :], False)):
            (d / "f.bin").write_bytes(content)
            verifier = ReadVerifier(d, recorded)
            stream = verifier.stream(d / "f.bin")
            with open(d / "f.bin", "rb") as f:
                for offset, n in reads:
                    f.seek(offset)
                    stream.feed(offset, f.read(n))
            problem, checked = verifier.finish()
            assert checked == ["f.bin"] and (problem is None) == expect_ok, problem


def test_the_checksum_is_the_hash_of_its_chunks_digests_and_records_of_the_whole_file_hash_still_verify(tmp_path):
    """`xxh3_128-chunks16MiB` is xxh3-128 over the xxh3-128 digests of the file's 16 MiB chunks, the
    last one shorter; a record of the whole-file hash (`xxh3_128:`, older checkpoints) is checked
    by hashing the file that way, from a load's reads and by `verify`, and a flip shows in both."""
    import xxhash

    from motif.storage.integrity import ReadVerifier, checksum_file, entry, verify

    chunk = 16 << 20
    data = random.Random(3).randbytes(2 * chunk + 12345)
    (tmp_path / "f.bin").write_bytes(data)
    tree = xxhash.xxh3_128()
    for lo in range(0, len(data), chunk):
        tree.update(xxhash.xxh3_128(data[lo : lo + chunk]).digest())
    assert checksum_file(tmp_path / "f.bin") == f"xxh3_128-chunks16MiB:{tree.hexdigest()}"

    whole = {"f.bin": {"size": len(data), "checksum": f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"}}
    for content, expect_ok in ((data, True), (data[:-5] + b"x" + data[-4:], False)):
        (tmp_path / "f.bin").write_bytes(content)
        assert (verify(tmp_path, whole) is None) == expect_ok
        verifier = ReadVerifier(tmp_path, whole)
        verifier.stream(tmp_path / "f.bin").feed(0, content)
        problem, _ = verifier.finish()
        assert (problem is None) == expect_ok, problem
        assert expect_ok or "checksum mismatch" in problem
    recorded = {"f.bin": entry(tmp_path / "f.bin", "sha256:00")}
    assert "unknown algorithm" in verify(tmp_path, recorded)


def test_two_threads_reading_halves_of_a_file_at_once_give_its_checksum(tmp_path):
    """A rank may read one file with two threads, each its own run (the fsdp engine does, with two
    cores to itself): the half read ahead of the hashed prefix is kept and hashed in order."""
    import threading

    from motif.storage.integrity import ReadVerifier, checksum_file, entry

    data = random.Random(7).randbytes(8 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    recorded = {"f.bin": entry(tmp_path / "f.bin", checksum_file(tmp_path / "f.bin"))}
    for flip in (None, 6 << 20):
        content = data if flip is None else data[:flip] + bytes([data[flip] ^ 1]) + data[flip + 1 :]
        (tmp_path / "f.bin").write_bytes(content)
        verifier = ReadVerifier(tmp_path, recorded)
        stream = verifier.stream(tmp_path / "f.bin")

        def run(stream, content: bytes, lo: int, hi: int) -> None:
            for offset in range(lo, hi, 1 << 20):
                stream.feed(offset, memoryview(content)[offset : offset + (1 << 20)])

        runs = [(stream, content, hi - (4 << 20), hi) for hi in (8 << 20, 4 << 20)]  # the second half first
        threads = [threading.Thread(target=run, args=args) for args in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        problem, _ = verifier.finish()
        assert (problem is None) == (flip is None), problem
        assert stream.read_for_hash == 0, "a run read ahead was read again to hash it"


def test_a_thread_reading_the_second_half_of_a_file_hashes_its_chunks_without_waiting_for_the_first(tmp_path):
    """Chunks are hashed independently: a run that starts mid-file hashes every chunk it reads whole
    as it reads it; only a chunk cut by the runs' boundary waits for the other run's piece."""
    from motif.storage import integrity
    from motif.storage.integrity import ReadVerifier, checksum_file, entry

    data = random.Random(8).randbytes(8 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    with mock.patch.object(integrity, "HASH_CHUNK", 1 << 20):
        recorded = {"f.bin": entry(tmp_path / "f.bin", checksum_file(tmp_path / "f.bin"))}
        verifier = ReadVerifier(tmp_path, recorded)
        stream = verifier.stream(tmp_path / "f.bin")
        middle = (4 << 20) + 1000  # not on a chunk's boundary
        for offset in range(middle, 8 << 20, 300_000):
            stream.feed(offset, data[offset : min(offset + 300_000, 8 << 20)])
        assert stream.hashed == (8 << 20) - (5 << 20)  # chunks 5..7, while the first half is unread
        for offset in range(0, middle, 300_000):
            stream.feed(offset, data[offset : min(offset + 300_000, middle)])
        assert stream.hashed == 8 << 20 and stream.read_for_hash == 0
        assert verifier.finish()[0] is None
