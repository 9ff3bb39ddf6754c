"""The start of a run reads each file of its start checkpoint once.

On a shared volume at 70B a start checkpoint's records are small but each read is a round trip,
and every rank makes them: the run reads its config, provenance and checksum record once and
builds each part (shapes, weight headers, readers) once. The integrity check then hashes every
recorded file once more, which is what it is for; it is counted apart.

Opens are counted with an audit hook (`open` is raised by `open()`, `Path.read_text`, `os.open`),
so a new reader anywhere on the path is caught, whatever function it goes through.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
from pathlib import Path

import pytest

from motif.model import verify
from motif.storage import integrity
from motif.train import trainer as trainer_module

from .conftest import grown_sections, run_in_process

# The integrity check's readers: a file opened under one of them is hashed, not read for what it says.
CHECKS = {integrity.checksum_file.__code__, verify.read_file.__code__}
RECORDS = ("config.json", "growth.json", "checksums.json", "trained.json", "model.safetensors.index.json")


class OpenCounter:
    """Opens of files under `root`, split into reads and integrity checks, while `active`."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.active = False
        self.reads: collections.Counter[str] = collections.Counter()
        self.checks: collections.Counter[str] = collections.Counter()

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active or event != "open" or not args or not isinstance(args[0], str | bytes | os.PathLike):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if self.root is None or not path.startswith(self.root + os.sep):
            return
        name = os.path.relpath(path, self.root)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code not in CHECKS:
            frame = frame.f_back
        (self.reads if frame is None else self.checks)[name] += 1


_COUNTER = OpenCounter()
sys.addaudithook(_COUNTER)  # audit hooks cannot be removed: one for the session, switched by `active`


@pytest.fixture
def opens():
    yield _COUNTER
    _COUNTER.active, _COUNTER.root = False, None
    _COUNTER.reads.clear()
    _COUNTER.checks.clear()


def test_a_grown_start_checkpoint_is_read_once_before_step_1(workdir, monkeypatch, opens):
    s0, s1, _ = grown_sections()
    s0["train"] = {**s0["train"], "max_steps": 2}
    s1["train"] = {**s1["train"], "max_steps": 1}
    # Stage 0's output in several shards (with an index), which the growth keeps for the grown checkpoint.
    small = functools.partial(trainer_module.write_output, max_shard_bytes=64 << 10)
    with monkeypatch.context() as m:
        m.setattr(trainer_module, "write_output", small)
        assert run_in_process(s0, workdir, monkeypatch) == 0
    start = workdir / s1["growth"]["output"]

    def stop_counting(step):
        @functools.wraps(step)
        def first(self, *args, **kwargs):
            opens.active = False
            return step(self, *args, **kwargs)

        return first

    monkeypatch.setattr(trainer_module.Trainer, "train_step", stop_counting(trainer_module.Trainer.train_step))
    opens.root, opens.active = str(start.resolve()), True
    assert run_in_process(s1, workdir, monkeypatch) == 0

    present = {p.name for p in Path(start).iterdir()}
    assert set(RECORDS) <= present  # every kind of record is there to be counted
    assert {n: opens.reads[n] for n in RECORDS if opens.reads[n] > 1} == {}, dict(opens.reads)
    # The integrity check still hashes every recorded file, once (the record itself is what it reads).
    hashed = [n for n in RECORDS if n != integrity.RECORD_NAME]
    assert {n: opens.checks[n] for n in hashed} == dict.fromkeys(hashed, 1)
