"""Writes past the page cache (`motif.storage.direct`): the bytes, the fallback, the failures."""

from __future__ import annotations

import errno
import fcntl
import os
import random

import pytest

from motif.storage import direct
from motif.storage.direct import ALIGN, BUFFER_BYTES, DirectWriter


def _pieces(seed: int) -> list[bytes | int]:
    """Byte strings of awkward sizes (around a block and a buffer), and runs of zeros (ints)."""
    rng = random.Random(seed)
    sizes = [1, ALIGN - 1, ALIGN + 1, 3, BUFFER_BYTES + 7, 5000, BUFFER_BYTES - 2, 77]
    return [rng.randbytes(n) if i % 3 else n for i, n in enumerate(sizes)]


def _write(path, pieces) -> tuple[DirectWriter, bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer, expected = DirectWriter(fd), bytearray()
        for piece in pieces:
            if isinstance(piece, int):
                writer.zeros(piece)
                expected += bytes(piece)
            else:
                writer.write(memoryview(piece))
                expected += piece
        assert writer.close() == len(expected)
    finally:
        os.close(fd)
    return writer, bytes(expected)


def test_the_file_holds_exactly_the_bytes_given_and_is_cut_to_their_length(tmp_path):
    writer, expected = _write(tmp_path / "f", _pieces(0))
    assert (tmp_path / "f").read_bytes() == expected  # not padded to a whole block
    assert not writer._thread.is_alive()


def _takes_direct(directory) -> bool:
    fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        on = direct._set_direct(fd, True)
        assert on == bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        return on
    finally:
        os.close(fd)


def test_direct_writes_are_used_where_the_filesystem_takes_them(tmp_path):
    writer, _ = _write(tmp_path / "f", [b"x" * (3 * ALIGN + 5)])
    assert writer.direct == _takes_direct(tmp_path)


def test_a_filesystem_that_refuses_direct_writes_at_the_first_write_gets_them_through_the_cache(tmp_path, monkeypatch):
    refused = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    takes_direct = _takes_direct(tmp_path)
    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    writer, expected = _write(tmp_path / "f", _pieces(1))
    assert (tmp_path / "f").read_bytes() == expected
    assert not writer.direct
    assert refused == ([0] if takes_direct else [])  # refused once, then written through the cache


def test_a_failed_write_is_raised_to_the_caller_and_stops_the_thread(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    calls = []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if offset >= BUFFER_BYTES:  # the disk fills after the first buffer
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        writer = DirectWriter(fd)
        with pytest.raises(OSError) as raised:
            for _ in range(direct.RING * 4):  # more than the ring holds: a write must see the error
                writer.write(memoryview(bytes(BUFFER_BYTES)))
            writer.close()
        assert raised.value.errno == errno.ENOSPC
        writer.abort()
        assert not writer._thread.is_alive()
        assert max(calls) == BUFFER_BYTES  # nothing more was sent to the disk after the failure
    finally:
        os.close(fd)


def test_an_abandoned_writer_stops_its_thread(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        writer = DirectWriter(fd)
        writer.write(memoryview(bytes(BUFFER_BYTES + 1)))
        writer.abort()
        assert not writer._thread.is_alive()
    finally:
        os.close(fd)
