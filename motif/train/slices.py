"""Reading only the part of each tensor that a rank owns, from safetensors files on shared storage.

Why it is built this way: on the sharded engines no rank may hold, or read, the whole model. A
tensor in a safetensors file is row-major bytes at a known offset, and both shardings motif uses
cut a tensor into contiguous pieces of those bytes: FSDP2 gives a rank a range of rows (`Shard(0)`),
ZeRO-3 a range of the flattened elements. So a rank's part is one `pread` of exactly its bytes,
whatever the file's dtype, and the bytes each rank reads are counted (a test checks the halves).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch

from motif.errors import CheckpointError
from motif.model.safetensors_io import TensorEntry, read_header, read_into_buffer, read_tensor
from motif.storage.integrity import FileStream, ReadVerifier
from motif.storage.reading import open_sequential

Read = tuple["TensorReader", str, int, int, torch.Tensor]  # reader, tensor, first, last element, into


def reading_threads(ranks_per_node: int) -> int:
    """Threads a rank reads its checkpoint files with: two where it has two cores to itself (a
    single reading thread leaves the second idle), else one (more would only queue for the cores)."""
    return 2 if (os.cpu_count() or 1) >= 2 * ranks_per_node else 1


def read_all(reads: list[Read], threads: int) -> None:
    """Do `reads`, sorted into file order and cut into `threads` contiguous runs of about equal bytes,
    one thread each: each run's bytes are hashed as the checksum's order allows (`FileStream` keeps
    a run read ahead of the hashed prefix until the prefix reaches it)."""
    reads = sorted(reads, key=lambda r: (r[0].source, r[0].entry(r[1]).offset, r[2]))
    runs = split_by_bytes(reads, threads)
    if len(runs) < 2:
        _read_run(reads)
        return
    with ThreadPoolExecutor(len(runs)) as pool:
        for done in [pool.submit(_read_run, run) for run in runs]:
            done.result()


def whole_reads(reader: TensorReader, tensors: list[tuple[str, torch.Tensor]]) -> list[Read]:
    """The reads that fill each of `tensors` (name, memory) whole from `reader`'s file, in place."""
    reads: list[Read] = []
    for key, into in tensors:
        if key not in reader or reader.shape(key) != tuple(into.shape):
            raise CheckpointError(f"{reader.source}: no tensor {key} of shape {list(into.shape)}")
        reads.append((reader, key, 0, into.numel(), into.view(-1) if into.dim() else into.view(1)))
    return reads


def split_by_bytes(reads: list[Read], runs: int) -> list[list[Read]]:
    """`reads` (in file order) cut into at most `runs` contiguous runs of about equal bytes."""
    cut, done = sum(out.nbytes for *_, out in reads) / runs, 0
    parts: list[list[Read]] = [[] for _ in range(runs)]
    for read in reads:
        parts[min(runs - 1, int(done // cut)) if cut else 0].append(read)
        done += read[4].nbytes
    return [p for p in parts if p]


@torch.no_grad()  # per thread: the memory read into may be a leaf that requires grad
def _read_run(run: list[Read]) -> None:
    for reader, key, lo, hi, out in run:
        reader.read_into(key, lo, hi, out)


class TensorReader:
    """Parts of the tensors of a checkpoint directory or of one safetensors file."""

    def __init__(self, entries: dict[str, TensorEntry], source: str, verifier: ReadVerifier | None = None):
        self.entries = entries
        self.source = source
        self.verifier = verifier  # checksums taken from the bytes as they are read (checkpoint loads)
        self.bytes_read = 0
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()  # threads may read parts of one reader at once
        self._data_start: dict[Path, int] = {}  # per file: where its header ends and its tensors begin
        for e in entries.values():
            self._data_start[e.path] = min(e.offset, self._data_start.get(e.path, e.offset))

    @classmethod
    def checkpoint(cls, path: str | Path) -> TensorReader:
        """The weights of a checkpoint directory (checked against its config.json first)."""
        from motif.model.checkpoint import open_checkpoint

        return cls(open_checkpoint(path).entries, str(path))

    @classmethod
    def file(cls, path: str | Path, verifier: ReadVerifier | None = None) -> TensorReader:
        return cls(read_header(Path(path))[0], str(path), verifier)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entry(name).shape

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.source}: no tensor {name}") from None

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, as a 1-D tensor in the file's dtype."""
        part = self._part(name, start, stop)
        self._count(part.nbytes)
        return read_tensor(part, self._fd(part.path), self._stream(part.path))

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Elements [start, stop) of the flattened tensor into `out` (a CPU tensor of stop - start
        elements): straight from the file into its memory when the dtype matches (no buffer between)."""
        part = self._part(name, start, stop)
        if out.device.type != "cpu" or out.dtype != part.dtype or not out.is_contiguous():
            out.copy_(self.read_flat(name, start, stop).view_as(out))
            return
        if out.numel() != stop - start:
            numel = math.prod(self.entry(name).shape)
            raise CheckpointError(f"{self.source}: {name}: elements {start}..{stop} outside 0..{numel}")
        # `ndarray.data`: the array's own buffer as a memoryview (bytes, writable): `out`'s memory.
        view = out.detach().reshape(-1).view(torch.uint8).numpy().data
        read_into_buffer(part, view, self._fd(part.path), self._stream(part.path))
        self._count(part.nbytes)

    def _count(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes

    def _part(self, name: str, start: int, stop: int) -> TensorEntry:
        """The entry of elements [start, stop) of the flattened tensor, as a tensor of its own."""
        e = self.entry(name)
        numel = math.prod(e.shape)
        if not 0 <= start <= stop <= numel:
            raise CheckpointError(f"{self.source}: {name}: elements {start}..{stop} outside 0..{numel}")
        size = e.dtype.itemsize
        return replace(e, shape=(stop - start,), offset=e.offset + start * size, nbytes=(stop - start) * size)

    def read(self, name: str) -> torch.Tensor:
        shape = self.shape(name)
        return self.read_flat(name, 0, math.prod(shape)).reshape(shape)

    def _stream(self, path: Path) -> FileStream | None:
        stream = self.verifier.stream(path) if self.verifier is not None else None
        if stream is not None:
            stream.read_before(self._data_start[path])  # the header: no read brings it (no-op after once)
        return stream

    def _fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = open_sequential(path)
            return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NotInFiles(CheckpointError):
    """Part of what a rank must read is not in the saved files it looked in."""


def from_fewest_files(candidates: list[list[Path]], load: Callable[[list[Path]], None]) -> None:
    """`load(files)` from the first of `candidates` (file lists, fewest first, every saved file
    last) whose files hold the rank's whole part. Saved by the same world size, a rank's part is
    in one or two files; opening every rank's header on every rank costs W headers per rank."""
    for i, files in enumerate(candidates):
        try:
            load(files)
            return
        except NotInFiles:
            if i == len(candidates) - 1:
                raise


S = TypeVar("S")


def overlaps(saved: Iterable[tuple[S, int, int]], start: int, stop: int) -> list[tuple[S, int, int, int, int]]:
    """Where saved ranges [a, b) hold parts of the wanted range [start, stop) (elements or rows, both
    sides alike): `(source, lo - a, hi - a, lo - start, hi - start)` for each one that overlaps it, in
    the order given. How a job resumed on another world size assembles its part from the saved ones."""
    found = []
    for source, a, b in saved:
        lo, hi = max(a, start), min(b, stop)
        if lo < hi:
            found.append((source, lo - a, hi - a, lo - start, hi - start))
    return found


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """A safetensors file of `tensors` (mode 0644, written tensor by tensor, no copy of the whole set);
    returns its checksum, computed from the bytes as they were written (no second read)."""
    from motif.model.safetensors_io import SafetensorsWriter

    writer = SafetensorsWriter(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], metadata)
    try:
        for key, value in tensors.items():
            writer.write(key, value)
        return writer.close()
    except OSError as e:  # a full disk, say: name the file (a write's error has no file name)
        writer.abort()
        raise OSError(e.errno, e.strerror, str(path)) from None
