"""`motif eval` reuses a result only for the same inputs by content, and one evaluation writes a result directory.

Changed held-out text, tokenizer or weights, with their sizes and modification times kept, make a
new evaluation; a second `motif eval` into a directory another one holds fails at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from motif.cli import main

from ..eval.conftest import VOCAB, make_checkpoint, write_tasks


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    from motif.data.corpus import documents
    from motif.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("eval-identity")
    train_bpe(documents("ko", 200, 1) + documents("en", 200, 1), VOCAB, root / "tokenizer")
    return {"tokenizer": root / "tokenizer", "tasks": write_tasks(root)}


@pytest.fixture
def tasks_dir(made) -> Path:
    return made["tasks"]


@pytest.fixture
def setup(tmp_path, made):
    tokenizer_dir = made["tokenizer"]
    ckpt = make_checkpoint(tmp_path / "ckpt")
    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, tok)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"text": "오늘 고양이는 빨간 사과를 봅니다. The cat sees a red apple."}) + "\n")
    return ckpt, tok, heldout


def request_of(ckpt: Path, tok: Path, heldout: Path, out: Path) -> dict:
    from motif.config import HeldoutSource
    from motif.eval.command import Job

    job = Job(ckpt, tok, out, "s", heldout=[HeldoutSource("ko-h", "ko", str(heldout))], heldout_seq_len=64)
    return job.request("fp32")


def same_size_and_time(path: Path, change) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    change(data)
    assert len(data) == st.st_size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_changed_heldout_text_or_tokenizer_make_a_new_request(setup, tmp_path):
    ckpt, tok, heldout = setup
    before = request_of(ckpt, tok, heldout, tmp_path / "o")

    def swap_letters(data: bytearray) -> None:
        i = data.index(b"cat")
        data[i : i + 3] = b"dog"

    same_size_and_time(heldout, swap_letters)
    after_heldout = request_of(ckpt, tok, heldout, tmp_path / "o")
    assert after_heldout != before

    def flip_a_token(data: bytearray) -> None:
        i = data.index(b'"apple') if b'"apple' in data else data.index(b'"a')
        data[i + 1 : i + 2] = b"A" if data[i + 1 : i + 2] != b"A" else b"B"

    same_size_and_time(tok / "tokenizer.json", flip_a_token)
    assert request_of(ckpt, tok, heldout, tmp_path / "o") != after_heldout


def test_changed_weights_make_a_new_checkpoint_identity(setup):
    from motif.eval.results import checkpoint_id

    ckpt, _, _ = setup
    before = checkpoint_id(ckpt)
    weights = next(ckpt.glob("*.safetensors"))
    (ckpt / "checksums.json").unlink(missing_ok=True)  # no record: the weight files' bytes identify it
    no_record = checkpoint_id(ckpt)

    def flip_last_byte(data: bytearray) -> None:
        data[-1] ^= 0x01

    same_size_and_time(weights, flip_last_byte)
    assert checkpoint_id(ckpt) != no_record
    assert before != no_record


def test_a_second_eval_into_a_held_directory_fails_at_once(setup, tasks_dir, capsys, tmp_path):
    ckpt, tok, _ = setup
    out = tmp_path / "out"
    ready = tmp_path / "ready"
    holder = (
        "import sys, time, pathlib\n"
        "from motif.storage.lease import acquire\n"
        "with acquire(sys.argv[1], 'motif eval (another)', inside=True):\n"
        "    pathlib.Path(sys.argv[2]).write_text('held')\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out), str(ready)], env={**os.environ})
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start"
            time.sleep(0.05)
        before = sorted(p.name for p in out.iterdir())
        argv = ["eval", str(ckpt), "--tasks", "tiny_kmmlu", "--include-path", str(tasks_dir), "--tokenizer", str(tok)]
        code = main([*argv, "--out", str(out), "--device", "cpu", "--limit", "2"])
        err = capsys.readouterr().err
        assert code == 2 and "motif eval (another)" in err and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("motif eval: error: ")
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written beside the holder's lease
    finally:
        proc.terminate()
        proc.wait(timeout=30)
